"""Reporting MESA runs: their files (episodes.csv, progress.csv, JSON) and each environment's
summary: per method and seed the final cumulative violations, violating episodes and final return
or success rate, with Student's t intervals; the critic's scores from metrics.json; the comparisons
the paper's claims are about (claims.py); and two figures in the style of the paper's Figure 3
(plots.py). Nothing here trains anything; the critic's scores themselves are critic_scores.py's.
"""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

import stats
from claims import comparisons, comparisons_table, interval_text
from common import atomic_write
from plots import LABELS, TITLES, save_figure

COLUMNS = ("episode", "env_steps", "return", "length", "violation", "success", "recovery_fraction",
           "cumulative_violations")


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


# ----------------------------------------------------------------------------- summary

def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (std with ddof=1 over sqrt(n); 0 for a single value)."""
    values = np.asarray(values, np.float64)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(se)


def final_value(values: np.ndarray) -> float:
    """The mean over the last 10% of episodes (at least one): "final" return or success rate."""
    return float(np.nanmean(values[-max(1, len(values) // 10):]))


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
    of safe transitions whose Q_risk exceeds eps_risk and their median Q_risk (critic_scores.critic_level).
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
        save_figure(os.path.join(env_dir, "cumulative_violations.png"), by_method,
                [("cumulative_violations", "Cumulative violations")], title)
        n = min(len(r["episode"]) for runs in by_method.values() for r in runs)
        panels = [("success", "Success rate (running mean)")] * has_success + [("return", "Return (running mean)")]
        save_figure(os.path.join(env_dir, "learning_curve.png"), by_method, panels, title, window=max(1, n // 20))
    return table
