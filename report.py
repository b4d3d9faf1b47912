"""Measuring and reporting MESA runs: the safety critic's AUROC, episode logs, summaries, figures.

Kept apart from experiment.py so that it reads as the experiment (phases, caching) and this
module as the bookkeeping around it. Nothing here trains anything.

- `auroc`: the area under the ROC curve of scores against binary labels, rank-based
  (Mann-Whitney U), ties counted as one half; written with numpy, no scikit-learn.
- `danger_labels`: a held-out transition is positive when a violation happens at it or within the
  next `horizon` steps of the same rollout (experiment.py uses horizon = round(1 / (1 - gamma_risk)), the
  effective horizon of the discounted violation probability Q_risk estimates).
- `summarise`: per environment, each method's final cumulative violations and final return /
  success rate (mean over the last 10% of episodes) per seed, with the mean's 95% interval and
  standard error; the comparisons the paper's claims are about (`paper_claim`), tested by
  stats.py's intervals and written rule; and two figures in the style of the paper's Figure 3:
  cumulative violations vs. episode and the learning curve, mean +- s.e. shaded, one colour per method.
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

import stats  # noqa: E402
from common import atomic_write  # noqa: E402

COLUMNS = ("episode", "env_steps", "return", "length", "violation", "success", "recovery_fraction",
           "cumulative_violations")
COLOURS = {"unconstrained": "tab:gray", "rrl": "tab:blue", "multitask": "tab:green", "mesa": "tab:red",
           "rrl_oracle": "tab:purple", "lr": "tab:olive", "sqrl": "tab:cyan",
           "rspo": "tab:pink", "rp": "tab:brown", "rcpo": "black", "carl": "tab:orange", "carl_offline": "gold",
           "mesa_authors": "darkred", "multitask_authors": "darkgreen"}
MARKERS = {"unconstrained": "s", "rrl": "^", "multitask": "D", "mesa": "o", "rrl_oracle": "v", "lr": "<",
           "sqrl": ">", "rspo": "P", "rp": "X", "rcpo": "*", "carl": "h", "carl_offline": "H",
           "mesa_authors": "p", "multitask_authors": "d"}
LABELS = {"unconstrained": "Unconstrained", "rrl": "RRL", "multitask": "Multi-Task", "mesa": "MESA",
          "rrl_oracle": "RRL-oracle", "lr": "LR", "sqrl": "SQRL", "rspo": "RSPO",
          "rp": "RP", "rcpo": "RCPO", "mesa_authors": "MESA (authors' variant)",
          "multitask_authors": "Multi-Task (authors' variant)", "carl": "CARL", "carl_offline": "CARL-Offline"}
TITLES = {"navigation1": "Navigation 1", "navigation2": "Navigation 2", "maze": "Maze",
          "cartpole": "Cartpole-Length", "halfcheetah": "HalfCheetah-Disabled", "ant": "Ant-Disabled"}


# ----------------------------------------------------------------------------- files

def write_json(path: str, obj, strict: bool = False) -> None:
    """obj as JSON; strict (the summaries, for any reader): infinite and nan numbers become null,
    so an unbounded interval end reads null (docs/statistics.md). Run files keep nan, which the
    code reading them back expects."""
    obj = _finite(obj) if strict else obj
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, default=float, allow_nan=not strict) + "\n")


def _finite(obj):
    """obj with every non-finite float replaced by None, through dicts, lists and tuples."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


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


BOUNDS = {"cumulative_violations": (0, np.inf), "violation_rate": (0, 1), "final_success": (0, 1),
          "final_return": (-np.inf, np.inf)}   # the values each summarised quantity can take
VIOLATION_MARKS = (60, 100, 250)   # cumulative violations after these episodes: quick's 60 against longer runs
CRITIC_PLACES = {"heldout_after_phase1": "after_phase1", "heldout_after_phase2": "after_phase2",
                 "onpolicy_start": "onpolicy_start", "onpolicy_final": "onpolicy_final"}
# Where the critic's level against eps_risk is summarised (runs from before it was recorded have none).
LEVEL_PLACES = {"d_test_after_phase1": "d_test_after_phase1", "d_test_after_phase2": "d_test_after_phase2",
                "d_test_final": "d_test_final", "heldout_after_phase1": "after_phase1",
                "heldout_after_phase2": "after_phase2", "onpolicy_final": "onpolicy_final"}


def method_summary(runs: list[dict], metrics: list[dict], has_success: bool) -> dict:
    """One method's numbers over its seeds (summary.json): each a mean over seeds, with "_se"; the
    main four also per seed ("per_seed") and with a 95% interval of the mean ("ci95").

    violation_rate: share of episodes with a violation; success_rate_last100: success rate over the
    last 100 episodes (or all, if fewer); final_*: mean over the last 10% of episodes;
    critic_auroc: Q_risk's AUROC held-out after Phases 1 and 2, and on the transitions Phase 3
    visited, by the critic it started from and by the final one. critic_level: per place, the share
    of safe transitions whose Q_risk exceeds eps_risk and their median Q_risk (report.critic_level).
    """
    out = {"seeds": len(runs), "episodes": int(min(len(r["episode"]) for r in runs))}
    out["per_seed"] = {"cumulative_violations": [float(r["cumulative_violations"][-1]) for r in runs],
                       "violation_rate": [float(np.mean(r["violation"])) for r in runs],
                       "final_return": [final_value(r["return"]) for r in runs],
                       "final_success": [final_value(r["success"]) for r in runs] if has_success else []}
    out["ci95"] = {}    # Student's t interval of the mean over seeds (stats.mean_interval; None for one seed)
    for key, values in out["per_seed"].items():
        _stat(out, key, values)
        out["ci95"][key] = stats.mean_interval(values, bounds=BOUNDS[key]) if values else None
    out["cumulative_violations_at"] = {}    # after episode 60, 100, 250 (where the runs are that long)
    for mark in (m for m in VIOLATION_MARKS if m <= out["episodes"]):
        _stat(out["cumulative_violations_at"], str(mark), [r["cumulative_violations"][mark - 1] for r in runs])
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


# ----------------------------------------------------------------------------- the paper's claims, with their uncertainty

# The paper's claims about cumulative violations (section 5): MESA has up to 2x fewer than every
# other method on the robots, and is about as good as Multi-Task and better than RRL and
# Unconstrained SAC on Navigation and Cartpole; Recovery RL's paper: RRL (given its own data, as
# RRL-oracle is) has fewer than Unconstrained SAC.
FEWER_BY_HALF = ("halfcheetah", "ant")
AS_GOOD_AS_MULTITASK = ("navigation1", "navigation2", "cartpole")


def paper_claim(env: str, a: str, b: str) -> tuple[str, float] | None:
    """(claim, the paper's factor) about rows a and b (stats.verdict), or None where it makes none.
    Rows named mesa_* (e.g. the authors' variant) carry MESA's claims."""
    if a.startswith("mesa") and env in FEWER_BY_HALF and b in ("unconstrained", "rrl", "multitask"):
        return "fewer", 0.5
    if a.startswith("mesa") and env in AS_GOOD_AS_MULTITASK and b in ("unconstrained", "rrl", "multitask"):
        return ("as_few", 1.0) if b == "multitask" else ("fewer", 1.0)
    if a in ("rrl", "rrl_oracle") and b == "unconstrained":
        return "fewer", 1.0
    return None


def comparison_pairs(rows) -> list[tuple[str, str]]:
    """Every MESA row against every other row, and RRL (and RRL-oracle) against Unconstrained SAC."""
    rows = list(rows)
    pairs = [(a, b) for a in rows if a.startswith("mesa") for b in rows if not b.startswith("mesa")]
    return pairs + [(rrl, "unconstrained") for rrl in ("rrl", "rrl_oracle") if rrl in rows and "unconstrained" in rows]


def comparisons(env: str, summary: dict) -> dict:
    """summary.json's "comparisons": per pair "a vs b", stats.compare on the per-seed final
    cumulative violations and final returns, with the paper's claim where it makes one."""
    out = {}
    for a, b in comparison_pairs(summary):
        sa, sb = summary[a]["per_seed"], summary[b]["per_seed"]
        claim = paper_claim(env, a, b)
        out[f"{a} vs {b}"] = stats.compare(sa["cumulative_violations"], sb["cumulative_violations"],
                                           sa["final_return"], sb["final_return"], *(claim or (None,)))
    return out


def interval_text(low, high, fmt: str = "{:.2f}") -> str:
    """[low, high] as text ("inf" for an unbounded end); "-" for no interval."""
    if low is None:
        return "-"
    return "[" + ", ".join("inf" if v == float("inf") else fmt.format(v) for v in (low, high)) + "]"


def comparisons_table(found: dict) -> str:
    """The comparisons as a markdown table: ratio of cumulative violations with its interval,
    P(fewer), difference of returns, the paper's claim, the verdict and the seeds needed."""
    claim_text = lambda c: "-" if "claim" not in c else (  # noqa: E731
        f"fewer (x{c['paper_effect']:g})" if c["claim"] == "fewer" and c["paper_effect"] < 1 else
        "fewer" if c["claim"] == "fewer" else f"as few (at most x{stats.AS_FEW_MARGIN:.2f})")
    lines = ["| comparison | seeds | cumulative violations a / b [95% CI] | P(a seed of a has fewer) | "
             "return a - b [95% CI] | paper's claim | verdict | seeds needed |", "|" + "---|" * 8]
    for pair, c in found.items():
        a, b = pair.split(" vs ")
        ratio = ratio_cell(c)
        diff = "-" if c.get("return_difference") is None else \
            f"{c['return_difference']:.1f} {interval_text(*c['return_difference_ci95'], fmt='{:.1f}')}"
        lines.append(f"| {LABELS.get(a, a)} vs {LABELS.get(b, b)} | {c['seeds'][0]} / {c['seeds'][1]} | {ratio} | "
                     f"{c['probability_fewer']:.2f} | {diff} | {claim_text(c)} | {c.get('verdict') or '-'} | "
                     f"{c.get('seeds_needed') or '-'} |")
    return "\n".join(lines)


def ratio_cell(comparison: dict) -> str:
    """A comparison's ratio of cumulative violations and its interval, e.g. "0.89 [0.49, 1.54]"."""
    if comparison["ratio"] is None:
        return "-"
    return f"{comparison['ratio']:.2f} {interval_text(*(comparison['ci95'] or [None, None]))}"


def interval_cell(summary: dict, key: str, fmt: str) -> str:
    """summary[key] and its 95% interval as text, e.g. "29.7 [19.0, 40.4]" ("-" without a value)."""
    if summary.get(key) is None:
        return "-"
    interval = summary["ci95"].get(key)
    return fmt.format(summary[key]) + ("" if interval is None else " " + interval_text(*interval, fmt=fmt))


def marks_table(summary: dict) -> str:
    """Cumulative violations after episodes 60, 100, 250 and the last, mean ± s.e. per method: how
    a long run reads against quick's 60 episodes ("" where no run is longer than the first mark)."""
    if not any(s["episodes"] > VIOLATION_MARKS[0] for s in summary.values()):
        return ""
    marks = [m for m in VIOLATION_MARKS if any(str(m) in s["cumulative_violations_at"] for s in summary.values())]
    lines = ["| method | " + " | ".join(f"after episode {m}" for m in marks) + " | after the last |",
             "|---|" + "---|" * (len(marks) + 1)]
    for method, s in summary.items():
        at = s["cumulative_violations_at"]
        cells = [cell(at, str(m), "{:.1f} ± {:.1f}") for m in marks]
        last = cell(s, "cumulative_violations", "{:.1f} ± {:.1f}") + f" ({s['episodes']})"
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + f" | {last} |")
    return "\n".join(lines)


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
    header = ["method", "seeds", "episodes", "cumulative violations [95% CI]", "per seed", "violating episodes",
              *(["success rate (last 10% of episodes)"] if has_success else []), "return (last 10%)",
              "AUROC held-out (Phase 1 / 2)", "AUROC on-policy (start / end of Phase 3)",
              "safe D_test above eps_risk (Phase 1 / 2 / end)"]
    lines = [f"# {env}: mean over seeds with Student's t 95% interval, or ± standard error", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, s in summary.items():
        a = s["critic_auroc"]
        cells = [LABELS.get(method, method), str(s["seeds"]), str(s["episodes"]),
                 interval_cell(s, "cumulative_violations", "{:.1f}"),
                 ", ".join(f"{v:g}" for v in s["per_seed"]["cumulative_violations"]),
                 cell(s, "violation_rate", "{:.2f} ± {:.2f}"),
                 *([interval_cell(s, "final_success", "{:.2f}")] if has_success else []),
                 interval_cell(s, "final_return", "{:.1f}"),
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
    marks = marks_table(summary)
    if marks:
        notes += ("\n## Cumulative violations along the run\n\nMean ± standard error over seeds after "
                  "each episode (quick's comparison stops at 60; the last column gives the episodes run).\n\n"
                  + marks + "\n")
    found = comparisons(env, summary)
    if found:
        notes += ("\n## Comparisons\n\nThe ratio of mean final cumulative violations with Fieller's 95% "
                  "interval, the share of seed pairs where a has fewer, the difference of final returns "
                  "(Welch's 95% interval), and where the paper makes a claim about the pair its verdict by "
                  "the written rule and the seeds per method a 5% test needs for 80% power "
                  "(docs/statistics.md).\n\n" + comparisons_table(found) + "\n")
    atomic_write(os.path.join(env_dir, "summary.md"), table + notes)
    write_json(os.path.join(env_dir, "summary.json"), {"env": env, "preset": preset, "methods": summary,
                                                         "comparisons": found}, strict=True)
    if by_method:
        title = f"{TITLES.get(env, env)} (mean ± s.e. over seeds)"
        _figure(os.path.join(env_dir, "cumulative_violations.png"), by_method,
                [("cumulative_violations", "Cumulative violations")], title)
        n = min(len(r["episode"]) for runs in by_method.values() for r in runs)
        panels = [("success", "Success rate (running mean)")] * has_success + [("return", "Return (running mean)")]
        _figure(os.path.join(env_dir, "learning_curve.png"), by_method, panels, title, window=max(1, n // 20))
    return table
