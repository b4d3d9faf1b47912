"""The paper's Figures 2 and 6, run by paper.py (docs/results.md), built from studies.py's pieces
(a preset's job, dataset preparation, worker pools).

  figure2  Maze, Multi-Task vs. MESA and the authors' MESA: after Phase 1, adapt on D_test and
           score Q_risk on the held-out set after each of ADAPT_STEPS steps (AUROC and loss against
           adaptation steps); Q_risk heatmaps over the maze after HEATMAP_STEPS steps (paper Figure 2).
           Each (row, seed) is kept in figure2/curves/ as it finishes, so a stopped run resumes.
  figure6  HalfCheetah-Disabled, MESA vs. Multi-Task: the first 1, 1/2, ..., 1/16 of D_test, and
           the partial-power-loss test task (paper Figure 6, section 6.2), each condition decided
           by the written rule (docs/statistics.md).
Each figure is a function (out, preset, workers, data_root) -> the markdown table it reports.
"""
from __future__ import annotations

import dataclasses
import json
import os

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import claims  # noqa: E402
import critic_scores  # noqa: E402
import envs  # noqa: E402
import experiment  # noqa: E402
import jobspec  # noqa: E402
import mesa  # noqa: E402
import plots  # noqa: E402
import point_envs  # noqa: E402
import presets  # noqa: E402
import report  # noqa: E402
import stats  # noqa: E402
from common import atomic_write  # noqa: E402
from recovery_rl import Safety  # noqa: E402
import studies  # noqa: E402

ADAPT_STEPS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500)
HEATMAP_STEPS = (0, 10, 500)
FIGURE2_SEEDS = 5
FIGURE2_ROWS = (("multitask", "multitask", "paper"), ("mesa", "mesa", "paper"), ("mesa_authors", "mesa", "authors"))
FIGURE6_FRACTIONS = (1.0, 0.5, 0.25, 0.125, 0.0625)
FIGURE6_SEEDS = 3
FIGURE6_ROWS = ("multitask", "mesa")
HEATMAP_ACTIONS = point_envs.MAZE_ACTION_BOUND * torch.tensor([[x, y] for x in (-1, 0, 1) for y in (-1, 0, 1)],
                                                            dtype=torch.float32)


# ----------------------------------------------------------------------------- Figure 2

def heatmap(safety: Safety, scale, n: int = 61) -> np.ndarray:
    """Q_risk over an n x n grid of the maze, averaged over the nine actions {-0.1, 0, 0.1}^2.  # (n, n)"""
    xs = np.linspace(-point_envs.MAZE_HALF, point_envs.MAZE_HALF, n, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)           # row i: y = xs[i]
    obs = torch.from_numpy(scale({"observations": grid, "next_observations": grid})["observations"])
    with torch.no_grad():
        q = torch.stack([safety.q_risk(obs, a.expand(len(obs), 2)) for a in HEATMAP_ACTIONS])
    return q.mean(0).reshape(n, n).numpy()


def adaptation_curve(row_job: tuple[str, jobspec.Job]) -> dict:
    """Phase 1, then Phase 2 on D_test with Q_risk scored after each of ADAPT_STEPS steps."""
    row, j = row_job
    train, test, env, scale = experiment.load_inputs(j)
    heldout = scale(experiment.heldout_set(j.env, j.preset, j.data_root, j.test_variant))
    agent, safety = experiment.fresh_networks(j, env)
    train_buffers, test_buffer = experiment.offline_buffers(j, train, test)
    mesa.phase1(j.method, safety, train_buffers, test_buffer, agent.policy, j.hp, j.seed)
    curve, maps = [], {}

    def record(step: int) -> None:
        if step in ADAPT_STEPS:
            curve.append({"step": step, **critic_scores.critic_quality(safety, heldout, agent.policy)})
        if step in HEATMAP_STEPS and j.seed == 0:    # maps of seed 0 only: they are plotted, and large
            maps[step] = heatmap(safety, scale)

    record(0)
    hp = dataclasses.replace(j.hp, adapt=dataclasses.replace(j.hp.adapt, steps=max(ADAPT_STEPS)))
    mesa.phase2(j.method, safety, test_buffer, agent.policy, hp, lambda step, _: record(step + 1))
    return {"method": row, "seed": j.seed, "curve": curve, "heatmaps": maps}


def cached_adaptation_curve(row_job: tuple[str, jobspec.Job]) -> dict:
    """adaptation_curve, kept in <out>/curves/<row>_seed<k>.json and read back where its run key
    matches: a Figure 2 stopped part way resumes after the curves it had finished."""
    row, j = row_job
    path, key = os.path.join(j.out, "curves", f"{row}_seed{j.seed}.json"), j.key(phase3=False)
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except ValueError:                     # a damaged cache: say so, then compute the curve again
            print(f"{path} is damaged: computing that curve again", flush=True)
            saved = {"key": None}
        if saved["key"] == key:
            maps = {int(step): np.array(q, dtype=np.float32) for step, q in saved["result"]["heatmaps"].items()}
            return {**saved["result"], "heatmaps": maps}
    result = adaptation_curve(row_job)
    maps = {step: q.tolist() for step, q in result["heatmaps"].items()}
    report.write_json(path, {"key": key, "result": {**result, "heatmaps": maps}})
    return result


def figure2(out: str, preset: str, workers: int, data_root: str = "data") -> str:
    """The paper's Figure 2 on the Maze: Multi-Task's, MESA's and the authors' MESA's (WLinear
    critic, run.py --mesa-variant authors) Q_risk adapting to the test maze (FIGURE2_ROWS)."""
    folder = os.path.join(out, "figure2")
    studies.prepare("maze", preset, data_root)
    jobs = [(row, studies.job("maze", method, s, folder, preset, data_root, **presets.variant_changes(variant, "maze", method)))
            for row, method, variant in FIGURE2_ROWS for s in range(FIGURE2_SEEDS)]
    results = studies.parallel(cached_adaptation_curve, jobs, workers)
    report.write_json(os.path.join(folder, "adaptation.json"),
                      [{k: v for k, v in r.items() if k != "heatmaps"} for r in results])
    np.savez_compressed(os.path.join(folder, "heatmaps.npz"), **{
        f"{r['method']}_{step}_steps": np.array(q) for r in results for step, q in r["heatmaps"].items()})
    by_method = {row: [r for r in results if r["method"] == row] for row, _, _ in FIGURE2_ROWS}
    plot_heatmaps(os.path.join(folder, "heatmaps.png"), by_method)
    return plot_adaptation(os.path.join(folder, "adaptation.png"), by_method)


def plot_heatmaps(path: str, by_method: dict) -> None:
    """Seed 0's Q_risk maps, one row per method, one column per number of adaptation steps."""
    fig, axes = plt.subplots(len(by_method), len(HEATMAP_STEPS), figsize=(3.2 * len(HEATMAP_STEPS), 3.4 * len(by_method)),
                             squeeze=False)
    h = point_envs.MAZE_HALF
    for row, (method, runs) in enumerate(by_method.items()):
        for col, step in enumerate(HEATMAP_STEPS):
            ax = axes[row, col]
            image = ax.imshow(runs[0]["heatmaps"][step], origin="lower", extent=(-h, h, -h, h),
                              vmin=0, vmax=1, cmap="viridis")
            for x0, x1, y0, y1 in point_envs.maze_walls(*envs.test_task("maze")["w"]):
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=1))
            ax.plot(*point_envs.MAZE_GOAL, "w*", label="goal")
            ax.set_title(f"{plots.LABELS[method]}\n{step} adaptation steps", fontsize=9)
            ax.set(xlabel="x", ylabel="y" if col == 0 else "")
            ax.tick_params(labelleft=col == 0)          # the maps share y: one scale per row
            if row == col == 0:
                ax.legend(loc="lower left", fontsize=7, framealpha=0.5)
    fig.colorbar(image, ax=axes, shrink=0.8, label="Q_risk, mean over 9 actions")
    fig.suptitle("Q_risk over the test maze after adaptation on D_test (seed 0; white: walls)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_adaptation(path: str, by_method: dict) -> str:
    """Held-out AUROC and loss against adaptation steps, mean +- s.e.; returns a markdown table."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    rows = {}
    for method, runs in by_method.items():
        for ax, key in zip(axes, ("auroc", "loss")):
            values = np.array([[point[key] for point in r["curve"]] for r in runs])
            mean, se = values.mean(0), values.std(0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0 * values[0]
            steps = np.array(ADAPT_STEPS)
            ax.plot(steps, mean, color=plots.COLOURS[method], label=plots.LABELS[method])
            ax.fill_between(steps, mean - se, mean + se, color=plots.COLOURS[method], alpha=0.2)
            rows[(method, key)] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, se)]
    for ax, label in zip(axes, ("held-out AUROC", "held-out loss")):
        ax.set_xscale("symlog", linthresh=1), ax.set_xlabel("adaptation steps on D_test"), ax.set_ylabel(label)
        ax.legend()
    seeds = min(len(runs) for runs in by_method.values())
    fig.suptitle(f"Maze: the critic on a held-out set of the test maze during adaptation "
                 f"(mean ± s.e. over {seeds} seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    header = "| method | measure | " + " | ".join(f"{s} steps" for s in ADAPT_STEPS) + " |"
    lines = [header, "|" + "---|" * (len(ADAPT_STEPS) + 2)]
    lines += [f"| {plots.LABELS[m]} | {k} | " + " | ".join(v) + " |" for (m, k), v in rows.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- Figure 6

def figure6_jobs(out: str, preset: str, data_root: str) -> dict[str, list[jobspec.Job]]:
    """{condition: its jobs}: MESA and Multi-Task on each share of D_test (the full D_test is the
    comparison's own runs, shared with it) and on the partial-power-loss task."""
    conditions = {f"D_test x {f:g}": dict(test_fraction=f) for f in FIGURE6_FRACTIONS}
    conditions["partial power loss"] = dict(test_variant="partial")
    jobs = {}
    for name, change in conditions.items():
        folder = out if change == {"test_fraction": 1.0} else os.path.join(out, "figure6", name.replace(" ", "_"))
        jobs[name] = [studies.job("halfcheetah", method, seed, folder, preset, data_root, **change)
                      for method in FIGURE6_ROWS for seed in range(FIGURE6_SEEDS)]
    return jobs


def figure6(out: str, preset: str, workers: int, data_root: str = "data") -> str:
    """HalfCheetah MESA vs. Multi-Task on shares of D_test and on the partial-power-loss task."""
    studies.prepare("halfcheetah", preset, data_root), studies.prepare("halfcheetah", preset, data_root, "partial")
    jobs = figure6_jobs(out, preset, data_root)
    studies.run_missing([j for condition in jobs.values() for j in condition], workers)
    return figure6_summary(out, preset, jobs)


def figure6_summary(out: str, preset: str, jobs: dict[str, list[jobspec.Job]]) -> str:
    """<out>/figure6/summary.{md,json} and violations.png from the finished runs of today's
    configuration: per condition and method report.method_summary, and MESA against Multi-Task by
    the written rule (the paper's Figure 6: MESA has fewer violations in every condition)."""
    summary, found = {}, {}
    for name, condition in jobs.items():
        rows = {}
        for method in FIGURE6_ROWS:
            runs, metrics = report.load_folders([j.folder for j in condition if j.method == method and jobspec.finished(j)])
            if runs:
                rows[method] = report.method_summary(runs, metrics, has_success=False)
        summary[name] = rows
        if len(rows) == len(FIGURE6_ROWS):
            a, b = rows["mesa"]["per_seed"], rows["multitask"]["per_seed"]
            found[name] = stats.compare(a["cumulative_violations"], b["cumulative_violations"],
                                        a["final_return"], b["final_return"], "fewer", 1.0)
    folder = os.path.join(out, "figure6")
    report.write_json(os.path.join(folder, "summary.json"), {"env": "halfcheetah", "preset": preset,
                                                             "conditions": summary, "comparisons": found}, strict=True)
    table = figure6_table(summary, found)
    atomic_write(os.path.join(folder, "summary.md"), table + "\n")
    points = {(name, m): (s["cumulative_violations"], s["cumulative_violations_se"])
              for name, rows in summary.items() for m, s in rows.items()}
    if points:
        plot_figure6(os.path.join(folder, "violations.png"), points)
    return table


def figure6_table(summary: dict, found: dict) -> str:
    """One line per condition and method, then MESA / Multi-Task per condition with the verdict.

    The critic's level is given on the held-out set, the same transitions in every D_test-share
    condition, and on the condition's own D_test, a different head of D_test in each: the second
    mixes the critic's level with what that head holds."""
    lines = ["| condition | method | seeds | cumulative violations [95% CI] | per seed | return (last 10%) [95% CI] "
             "| AUROC held-out after Phase 2 | safe above eps_risk after Phase 2: held-out / the condition's D_test |",
             "|" + "---|" * 8]
    for name, rows in summary.items():
        for method, s in rows.items():
            heldout, own = s["critic_level"]["heldout_after_phase2"], s["critic_level"]["d_test_after_phase2"]
            lines.append(f"| {name} | {plots.LABELS[method]} | {s['seeds']} | "
                         f"{report.interval_cell(s, 'cumulative_violations', '{:.1f}')} | "
                         + ", ".join(f"{v:g}" for v in s["per_seed"]["cumulative_violations"]) + " | "
                         f"{report.interval_cell(s, 'final_return', '{:.0f}')} | "
                         f"{report.cell(s['critic_auroc'], 'heldout_after_phase2')} | "
                         f"{report.cell(heldout, 'safe_above_eps', '{:.0%}')} / "
                         f"{report.cell(own, 'safe_above_eps', '{:.0%}')} |")
    lines += ["", "| condition | MESA / Multi-Task, cumulative violations [95% CI] | P(a MESA seed has fewer) "
              "| verdict on \"MESA has fewer\" | seeds needed |", "|---|---|---|---|---|"]
    for name, c in found.items():
        lines.append(f"| {name} | {claims.ratio_cell(c)} | {c['probability_fewer']:.2f} | {c['verdict']} | {c.get('seeds_needed') or '-'} |")
    return "\n".join(lines)


def plot_figure6(path: str, points: dict) -> None:
    """Cumulative violations against the share of D_test (and on the partial task), mean +- s.e."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    names = list(dict.fromkeys(name for name, _ in points))
    for offset, method in ((-0.08, "multitask"), (0.08, "mesa")):
        names_here = [n for n in names if (n, method) in points]
        if not names_here:
            continue
        means, ses = zip(*(points[(name, method)] for name in names_here))
        ax.errorbar(np.array([names.index(n) for n in names_here]) + offset, means, ses, fmt="o", capsize=3,
                    color=plots.COLOURS[method], label=plots.LABELS[method])
    ax.set_xticks(range(len(names)), [n.replace("D_test x ", "D_test x\n").replace("partial ", "partial\n") for n in names], fontsize=8)
    top = max(m + s for m, s in points.values())
    ax.set_ylim(0, 1.12 * top if top > 0 else 1)   # from zero, with room above the top error bar
    ax.set_ylabel("cumulative violations"), ax.set_xlabel("test data (Phase 2) or test task")
    ax.set_title("HalfCheetah-Disabled: cumulative violations (mean ± s.e. over seeds)", fontsize=10)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
