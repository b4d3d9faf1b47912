"""Measuring and reporting MESA runs: the safety critic's AUROC, episode logs, summaries, figures.

Kept apart from experiment.py so that it reads as the experiment (phases, caching) and this
module as the bookkeeping around it. Nothing here trains anything.

- `auroc`: the area under the ROC curve of scores against binary labels, rank-based
  (Mann-Whitney U), ties counted as one half; written with numpy, no scikit-learn.
- `danger_labels`: a held-out transition is positive when a violation happens at it or within the
  next `horizon` steps of the same rollout (experiment.py uses horizon = round(1 / (1 - gamma_risk)), the
  effective horizon of the discounted violation probability Q_risk estimates).
- `summarise`: per environment, mean +- standard error over seeds of the final cumulative
  violations and the final return / success rate (mean over the last 10% of episodes), and two
  figures in the style of the paper's Figure 3: cumulative violations vs. episode and the learning
  curve, mean +- s.e. shaded, one colour per method.
"""
from __future__ import annotations

import csv
import io
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sac import atomic_write  # noqa: E402

COLUMNS = ("episode", "env_steps", "return", "length", "violation", "success", "recovery_fraction",
           "cumulative_violations")
COLOURS = {"unconstrained": "tab:gray", "rrl": "tab:blue", "multitask": "tab:green", "mesa": "tab:red",
           "rrl_oracle": "tab:purple", "lr": "tab:olive", "sqrl": "tab:cyan",
           "rspo": "tab:pink", "rp": "tab:brown", "rcpo": "black"}
MARKERS = {"unconstrained": "s", "rrl": "^", "multitask": "D", "mesa": "o", "rrl_oracle": "v", "lr": "<",
           "sqrl": ">", "rspo": "P", "rp": "X", "rcpo": "*"}
LABELS = {"unconstrained": "Unconstrained", "rrl": "RRL", "multitask": "Multi-Task", "mesa": "MESA",
          "rrl_oracle": "RRL-oracle", "lr": "LR", "sqrl": "SQRL", "rspo": "RSPO",
          "rp": "RP", "rcpo": "RCPO", "mesa_authors": "MESA (authors' variant)",
          "multitask_authors": "Multi-Task (authors' variant)"}
TITLES = {"navigation1": "Navigation 1", "navigation2": "Navigation 2", "maze": "Maze",
          "cartpole": "Cartpole-Length", "halfcheetah": "HalfCheetah-Disabled", "ant": "Ant-Disabled"}


# ----------------------------------------------------------------------------- files

def write_json(path: str, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, default=float) + "\n")


def episodes_csv(rows: list[dict]) -> str:
    """The episodes.csv text: one row per Phase-3 episode, cumulative violations appended."""
    out, total = io.StringIO(), 0
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        total += int(row["violation"])
        writer.writerow([row[c] if c != "cumulative_violations" else total for c in COLUMNS])
    return out.getvalue()


PROGRESS_COLUMNS = ("env_step", "episode", "losses/qf_loss", "losses/actor_loss", "losses/alpha",
                    "losses/alpha_loss", "losses/risk_loss", "losses/pi_rec_loss", "filter_rate",
                    "steps_per_second")


class TrainingLog:
    """progress.csv of one run: a row of losses, filter rate and speed every few thousand Phase-3
    steps (recovery_rl.learn_online's log), appended and flushed as it comes, plus TensorBoard
    scalars where asked for and installed. A resumed run keeps the rows up to its checkpoint."""

    def __init__(self, path: str, resume_step: int = 0, tensorboard_dir: str | None = None):
        kept = []
        if resume_step and os.path.exists(path):
            rows = list(csv.DictReader(open(path)))
            kept = [r for r in rows if int(r["env_step"]) <= resume_step]
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, PROGRESS_COLUMNS, extrasaction="ignore")
        self.writer.writeheader()
        self.writer.writerows(kept)
        self.tensorboard = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter   # needs the optional tensorboard package
            self.tensorboard = SummaryWriter(tensorboard_dir)

    def __call__(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in row.items():
                if key not in ("env_step", "episode"):
                    self.tensorboard.add_scalar(key, value, row["env_step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_episodes(path: str) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {c: np.array([float(r[c]) for r in rows]) for c in COLUMNS}


# ----------------------------------------------------------------------------- metrics

def auroc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2; nan if a class is empty.

    AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), R_pos the sum of the positives'
    1-based ranks, tied scores sharing their average rank.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)   # average rank of each tie group
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def label_horizon(gamma_risk: float) -> float:
    """round(1 / (1 - gamma_risk)): how many steps ahead a violation makes a transition dangerous
    (Q_risk's effective horizon); unbounded at gamma_risk = 1."""
    return round(1.0 / (1.0 - gamma_risk)) if gamma_risk < 1 else np.inf


def danger_labels(costs, terminals, timeouts, horizon: float) -> np.ndarray:
    """True where a violation happens at the transition or within `horizon` later steps of its rollout.

    Rows are in collection order; a rollout ends at a row with terminal or timeout set.
    """
    labels = np.zeros(len(costs), bool)
    steps_to_violation = np.inf
    for i in range(len(costs) - 1, -1, -1):
        if terminals[i] or timeouts[i]:
            steps_to_violation = np.inf        # the rows after this one belong to another rollout
        if costs[i] > 0:
            steps_to_violation = 0
        labels[i] = steps_to_violation <= horizon
        steps_to_violation += 1
    return labels


def critic_level(q: np.ndarray, unsafe: np.ndarray, eps_risk: float) -> dict:
    """Where Q_risk sits against eps_risk (a critic can rank well yet fire everywhere): its median at
    the safe transitions (danger label 0) and the shares of safe and unsafe transitions above eps_risk."""
    q, unsafe = np.asarray(q), np.asarray(unsafe, bool)
    share = lambda x: float((x > eps_risk).mean()) if len(x) else float("nan")  # noqa: E731
    return {"median_safe": float(np.median(q[~unsafe])) if (~unsafe).any() else float("nan"),
            "safe_above_eps": share(q[~unsafe]), "unsafe_above_eps": share(q[unsafe])}


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (std with ddof=1 over sqrt(n); 0 for a single value)."""
    values = np.asarray(values, np.float64)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(se)


# ----------------------------------------------------------------------------- summary

def final_value(values: np.ndarray) -> float:
    """The mean over the last 10% of episodes (at least one): "final" return or success rate."""
    return float(np.nanmean(values[-max(1, len(values) // 10):]))


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean over `window` episodes (shorter at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - window)
    return (sums[idx] - sums[start]) / (idx - start)


def _curves(runs: list[dict], key: str, window: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = min(len(r[key]) for r in runs)
    stacked = np.stack([smooth(r[key][:n], window) for r in runs])
    se = stacked.std(0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else np.zeros(n)
    return np.arange(1, n + 1), stacked.mean(0), se


def window_label(ylabel: str, window: int) -> str:
    """The y label with the running mean's window: "Return (running mean over 15 episodes)"."""
    if window <= 1:
        return ylabel
    if "(running mean)" in ylabel:
        return ylabel.replace("(running mean)", f"(running mean over {window} episodes)")
    return f"{ylabel} (running mean over {window} episodes)"


def draw_figure(by_method: dict, panels: list[tuple[str, str]], title: str, window: int = 1):
    """One panel per (episodes.csv column, y label), side by side; mean ± s.e. over each method's seeds.

    Every method's line has its own marker, placed at episodes staggered between methods, so that
    lines on top of each other (several methods with 0 violations) stay apart; the legend sits right
    of the panels, off the data; the y label gives a running mean's window.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 2.2, 3.6), squeeze=False,
                             layout="constrained")
    for ax, (key, ylabel) in zip(axes[0], panels):
        for i, (method, runs) in enumerate(by_method.items()):
            x, mean, se = _curves(runs, key, window)
            every = max(1, len(x) // 8)
            ax.plot(x, mean, color=COLOURS.get(method), marker=MARKERS.get(method, "o"), markersize=5,
                    markevery=(i * every // len(by_method), every),
                    label=f"{LABELS.get(method, method)} ({len(runs)} seed{'s' * (len(runs) > 1)})")
            ax.fill_between(x, mean - se, mean + se, color=COLOURS.get(method), alpha=0.25, linewidth=0)
        ax.set(xlabel="Episode", ylabel=window_label(ylabel, window))
    fig.suptitle(title, fontsize=11)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right center", frameon=False)
    return fig


def _figure(path: str, by_method: dict, panels: list[tuple[str, str]], title: str, window: int = 1) -> None:
    """draw_figure as a PNG at path."""
    fig = draw_figure(by_method, panels, title, window)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _critic_values(metrics: list[dict], where: str, what: str = "auroc") -> list[float]:
    """One value per run from metrics.json["critic"][where][what] (nan and runs without it dropped)."""
    values = [m.get("critic", {}).get(where, {}).get(what, float("nan")) for m in metrics]
    return [v for v in values if v == v]


def _stat(out: dict, key: str, values) -> None:
    """out[key] = the mean over seeds, out[key + "_se"] = its standard error (None without values)."""
    mean, se = mean_se(values) if len(values) else (None, None)
    out[key], out[f"{key}_se"] = mean, se


VIOLATION_MARKS = (60, 100, 250)   # cumulative violations after these episodes: quick's 60 against longer runs
CRITIC_PLACES = {"heldout_after_phase1": "after_phase1", "heldout_after_phase2": "after_phase2",
                 "onpolicy_start": "onpolicy_start", "onpolicy_final": "onpolicy_final"}
# Where the critic's level against eps_risk is summarised (runs from before it was recorded have none).
LEVEL_PLACES = {"d_test_after_phase1": "d_test_after_phase1", "d_test_after_phase2": "d_test_after_phase2",
                "d_test_final": "d_test_final", "heldout_after_phase1": "after_phase1",
                "heldout_after_phase2": "after_phase2", "onpolicy_final": "onpolicy_final"}


def method_summary(runs: list[dict], metrics: list[dict], has_success: bool) -> dict:
    """One method's numbers over its seeds (summary.json): each a mean over seeds, with "_se".

    violation_rate: share of episodes with a violation; success_rate_last100: success rate over the
    last 100 episodes (or all, if fewer); final_*: mean over the last 10% of episodes;
    critic_auroc: Q_risk's AUROC held-out after Phases 1 and 2, and on the transitions Phase 3
    visited, by the critic it started from and by the final one. critic_level: per place, the share
    of safe transitions whose Q_risk exceeds eps_risk and their median Q_risk (report.critic_level).
    """
    out = {"seeds": len(runs), "episodes": int(min(len(r["episode"]) for r in runs))}
    _stat(out, "cumulative_violations", [r["cumulative_violations"][-1] for r in runs])
    out["cumulative_violations_at"] = {}    # after episode 60, 100, 250 (where the runs are that long)
    for mark in (m for m in VIOLATION_MARKS if m <= out["episodes"]):
        _stat(out["cumulative_violations_at"], str(mark), [r["cumulative_violations"][mark - 1] for r in runs])
    _stat(out, "violation_rate", [np.mean(r["violation"]) for r in runs])
    _stat(out, "final_return", [final_value(r["return"]) for r in runs])
    _stat(out, "final_success", [final_value(r["success"]) for r in runs] if has_success else [])
    _stat(out, "success_rate_last100", [np.nanmean(r["success"][-100:]) for r in runs] if has_success else [])
    _stat(out, "recovery_fraction", [np.mean(r["recovery_fraction"]) for r in runs])
    out["critic_auroc"] = {}
    for name, where in CRITIC_PLACES.items():
        _stat(out["critic_auroc"], name, _critic_values(metrics, where))
    out["critic_level"] = {}
    for name, where in LEVEL_PLACES.items():
        level = out["critic_level"][name] = {}
        for what in ("safe_above_eps", "median_safe"):
            _stat(level, what, _critic_values(metrics, where, what))
    return out


# ----------------------------------------------------------------------------- the paper's claim, with its uncertainty

def ratio_interval(a, b, level: float = 0.95, resamples: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) / mean(b) with a percentile-bootstrap interval, each method's seeds resampled apart.

    With 3-5 seeds a bootstrap interval is too narrow (it never leaves the range of the few values
    seen), so read it as a lower bound on the uncertainty. A resample whose mean(b) is 0 gives inf."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    num = a[rng.integers(0, len(a), (resamples, len(a)))].mean(1)
    den = b[rng.integers(0, len(b), (resamples, len(b)))].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(den > 0, num / np.where(den > 0, den, 1), np.inf)
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    point = a.mean() / b.mean() if b.mean() > 0 else float("inf")
    return float(point), float(low), float(high)


def claim_verdict(low: float, high: float) -> str:
    """The written rule for "MESA has fewer cumulative violations than X" (paper: up to 2x fewer),
    on the interval of mean(MESA) / mean(X): reproduced where it lies below 1, refuted where it lies
    above 1, undecided where it holds 1."""
    return "reproduced" if high < 1 else "refuted" if low > 1 else "undecided"


def violation_ratios(by_method: dict, of: str = "mesa") -> dict:
    """For each other method X: mean(of) / mean(X) of the final cumulative violations, its 95% interval
    and the verdict of claim_verdict."""
    if of not in by_method:
        return {}
    mine = [r["cumulative_violations"][-1] for r in by_method[of]]
    out = {}
    for other, runs in by_method.items():
        if other != of:
            point, low, high = ratio_interval(mine, [r["cumulative_violations"][-1] for r in runs])
            out[other] = {"ratio": point, "ci95": [low, high], "verdict": claim_verdict(low, high)}
    return out


def cell(summary: dict, key: str, fmt: str = "{:.3f} ± {:.3f}") -> str:
    """summary[key] ± summary[key + "_se"] as text; "-" where there is no value."""
    return "-" if summary.get(key) is None else fmt.format(summary[key], summary[f"{key}_se"])


def load_folders(folders) -> tuple[list[dict], list[dict]]:
    """(episodes, metrics.json) of the finished runs (those with an episodes.csv) among run folders."""
    done = [f for f in folders if os.path.exists(os.path.join(f, "episodes.csv"))]
    return ([read_episodes(os.path.join(f, "episodes.csv")) for f in done],
            [json.load(open(os.path.join(f, "metrics.json"))) for f in done])


def load_runs(env_dir: str, methods, seeds) -> tuple[dict, dict]:
    """(episodes per method, metrics.json per method) of the finished runs under env_dir."""
    by_method, metrics = {}, {}
    for method in methods:
        runs, run_metrics = load_folders([os.path.join(env_dir, method, f"seed{s}") for s in seeds])
        if runs:
            by_method[method], metrics[method] = runs, run_metrics
    return by_method, metrics


def load_rows(folders: dict[str, list[str]]) -> tuple[dict, dict]:
    """(episodes per row, metrics.json per row) of the finished runs among each row's run folders."""
    loaded = {row: load_folders(paths) for row, paths in folders.items()}
    return ({row: runs for row, (runs, _) in loaded.items() if runs},
            {row: metrics for row, (runs, metrics) in loaded.items() if runs})


def summarise(env_dir: str, env: str, methods, seeds, has_success: bool, preset: str = "",
              folders: dict[str, list[str]] | None = None) -> str:
    """Write summary.md, summary.json and the two figures for one environment; return the table.

    The runs are env_dir/<method>/seed<k>, or, given `folders`, {row name: run folders} (rows from
    several configurations, e.g. a MESA variant beside the paper's)."""
    by_method, metrics = load_rows(folders) if folders is not None else load_runs(env_dir, methods, seeds)
    summary = {m: method_summary(by_method[m], metrics[m], has_success) for m in by_method}
    header = ["method", "seeds", "episodes", "cumulative violations", "violating episodes",
              *(["success rate (last 10% of episodes)"] if has_success else []), "return (last 10%)",
              "AUROC held-out (Phase 1 / 2)", "AUROC on-policy (start / end of Phase 3)",
              "safe D_test above eps_risk (Phase 1 / 2 / end)"]
    lines = [f"# {env}: mean ± standard error over seeds", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, s in summary.items():
        a = s["critic_auroc"]
        cells = [LABELS.get(method, method), str(s["seeds"]), str(s["episodes"]),
                 cell(s, "cumulative_violations", "{:.1f} ± {:.1f}"), cell(s, "violation_rate", "{:.2f} ± {:.2f}"),
                 *([cell(s, "final_success", "{:.2f} ± {:.2f}")] if has_success else []),
                 cell(s, "final_return", "{:.1f} ± {:.1f}"),
                 f"{cell(a, 'heldout_after_phase1')} / {cell(a, 'heldout_after_phase2')}",
                 f"{cell(a, 'onpolicy_start')} / {cell(a, 'onpolicy_final')}",
                 " / ".join(cell(s["critic_level"][p], "safe_above_eps", "{:.0%}") for p in
                            ("d_test_after_phase1", "d_test_after_phase2", "d_test_final"))]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    notes = ("\n\nFinal values: mean over the last 10% of episodes. Violating episodes: share of "
             "episodes with a violation. AUROC: Q_risk against a violation within "
             "round(1/(1 - gamma_risk)) steps; held-out = a collection of D_test's generator after "
             "Phases 1 and 2; on-policy = the transitions Phase 3 visited, scored by the critic "
             "Phase 3 started from and by the final one. Safe D_test above eps_risk: the share of "
             "D_test's safe transitions (no violation within that horizon) whose Q_risk exceeds "
             "eps_risk, after Phases 1 and 2 and at the end of Phase 3 (mean over seeds; - for runs "
             "made before it was recorded): where it is high, the filter fires on safe states.\n\n"
             "![cumulative violations](cumulative_violations.png) ![learning curve](learning_curve.png)\n")
    ratios = violation_ratios(by_method)
    if ratios:
        notes += ("\nMESA's cumulative violations over each other method's (ratio of means over seeds, 95% "
                  "percentile-bootstrap interval, too narrow at 3-5 seeds; verdict: below 1 reproduced, "
                  "above 1 refuted, else undecided): " + "; ".join(
                      f"{LABELS.get(m, m)} {r['ratio']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] {r['verdict']}"
                      for m, r in ratios.items()) + "\n")
    atomic_write(os.path.join(env_dir, "summary.md"), table + notes)
    write_json(os.path.join(env_dir, "summary.json"), {"env": env, "preset": preset, "methods": summary,
                                                         "mesa_violation_ratios": ratios})
    if by_method:
        title = f"{TITLES.get(env, env)} (mean ± s.e. over seeds)"
        _figure(os.path.join(env_dir, "cumulative_violations.png"), by_method,
                [("cumulative_violations", "Cumulative violations")], title)
        n = min(len(r["episode"]) for runs in by_method.values() for r in runs)
        panels = [("success", "Success rate (running mean)")] * has_success + [("return", "Return (running mean)")]
        _figure(os.path.join(env_dir, "learning_curve.png"), by_method, panels, title, window=max(1, n // 20))
    return table
