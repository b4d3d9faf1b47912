"""The studies beyond the comparison, run by paper.py (docs/results.md), and the pieces every
paper.py experiment is built from (a preset's job, dataset preparation, worker pools).

  figure2        Maze, Multi-Task vs. MESA and the authors' MESA: after Phase 1, adapt on D_test and score Q_risk on the
                 held-out set after each of ADAPT_STEPS steps (AUROC and loss against adaptation
                 steps); Q_risk heatmaps over the maze after HEATMAP_STEPS steps (paper Figure 2).
  figure6        HalfCheetah-Disabled, MESA vs. Multi-Task: the first 1, 1/2, ..., 1/16 of D_test,
                 and the partial-power-loss test task (paper Figure 6, section 6.2).
  mesa_variants  MESA as the paper describes it vs. as its authors' code ran it (--mesa-variant
                 authors), beside Multi-Task, on HalfCheetah, Ant, Navigation 1, Cartpole and the Maze; the
                 paper variants are the comparison's runs (docs/mesa_variants.md).
  outer_lr       MESA's Phase-1 critic on HalfCheetah and Ant at outer learning rates OUTER_LRS.
  eps_risk       Navigation 1, the three methods with a critic at each eps_risk of EPS_RISKS.
  long           Navigation 1 and HalfCheetah, Phase 3 continued from the comparison's cached Phases 1-2.
  raw_inputs     Navigation 1 without the input standardisation (run.py --no-scale-inputs).
  paper_scale    HalfCheetah-Disabled and Ant-Disabled over the paper's 500 and 1000 Phase-3
                 episodes (Figure 5): Unconstrained, RRL, Multi-Task, MESA and the authors' MESA.
Each study is a function (out, preset, workers, data_root) -> the markdown table it reports.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import datasets  # noqa: E402
import envs  # noqa: E402
import experiment  # noqa: E402
import mesa  # noqa: E402
import point_envs  # noqa: E402
import presets  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402
import stats  # noqa: E402
from recovery_rl import Safety  # noqa: E402
from sac import atomic_write  # noqa: E402

ADAPT_STEPS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500)
HEATMAP_STEPS = (0, 10, 500)
FIGURE2_SEEDS = 5
FIGURE2_ROWS = (("multitask", "multitask", "paper"), ("mesa", "mesa", "paper"), ("mesa_authors", "mesa", "authors"))
FIGURE6_FRACTIONS = (1.0, 0.5, 0.25, 0.125, 0.0625)
FIGURE6_SEEDS = 3
FIGURE6_ROWS = ("multitask", "mesa")
OUTER_LRS = (1e-5, 1e-4, 1e-3)
OUTER_LR_SEEDS = 3
EPS_RISKS = (0.3, 0.5, 0.7)      # Navigation 1; the paper's value first
EPS_SEEDS = 3
LONG_EPISODES = {"navigation1": presets.PAPER_EPISODES["navigation1"], "halfcheetah": 100}
LONG_SEEDS = 3
RAW_SEEDS = 3
HEATMAP_ACTIONS = point_envs.MAZE_ACTION_BOUND * torch.tensor([[x, y] for x in (-1, 0, 1) for y in (-1, 0, 1)],
                                                            dtype=torch.float32)


# ----------------------------------------------------------------------------- building blocks

def job(env: str, method: str, seed: int, out: str, preset: str, data_root: str, **changes) -> experiment.Job:
    """An experiment.Job with the preset's configuration; changes go to Job fields or "group.field"s."""
    hp, episodes = presets.preset_config(env, preset)
    hp = presets.apply(hp, {k: v for k, v in changes.items() if "." in k})
    fields = {"test_variant": "default", "episodes": episodes, **{k: v for k, v in changes.items() if "." not in k}}
    return experiment.Job(env=env, method=method, seed=seed, preset=preset, hp=hp, out=out,
                   data_root=data_root, progress="lines", **fields)


# paper.py --summaries-only sets this: no dataset is made and no run is started; each part
# summarises the runs it finds finished under --out (e.g. after report.py's statistics changed).
SUMMARISE_ONLY = False


def prepare(env: str, preset: str, data_root: str, variant: str = "default", oracle: str | None = None) -> None:
    """Generate missing datasets before the workers start, so no two processes write one file
    (with `oracle`, also the RRL-oracle's data of that generator variant)."""
    if SUMMARISE_ONLY:
        return
    datasets.get_datasets(env, preset, data_root, variant, progress=True, seed=experiment.DATA_SEED)
    experiment.heldout_set(env, preset, data_root, variant)
    if oracle is not None:
        datasets.get_oracle(env, preset, data_root, progress=True, seed=experiment.DATA_SEED, variant=oracle)


def run_missing(jobs: list[experiment.Job], workers: int) -> None:
    """Run the jobs that have not finished (none under SUMMARISE_ONLY); finished runs are kept."""
    if not SUMMARISE_ONLY:
        run.run_jobs([j for j in jobs if not experiment.finished(j)], workers, 1)


def reuse_offline_phases(out: str, jobs: list[experiment.Job]) -> None:
    """Copy the comparison's cached Phases 1-2 (phase2.pt) into the jobs' folders.

    experiment.run_one reuses a copy only where its key matches, i.e. where nothing Phases 1-2 depend on
    changed (the number of episodes and eps_risk do not enter them).
    """
    for j in jobs:
        cached = os.path.join(out, j.env, j.method, f"seed{j.seed}", "phase2.pt")
        if j.method != "unconstrained" and os.path.exists(cached) and not os.path.exists(os.path.join(j.folder, "phase2.pt")):
            os.makedirs(j.folder, exist_ok=True)
            shutil.copyfile(cached, os.path.join(j.folder, "phase2.pt"))


def parallel(function, jobs: list, workers: int) -> list:
    """function(job) for every job in `workers` spawned single-thread processes, in order."""
    if workers <= 1:
        return [function(j) for j in jobs]
    return list(run.pool_map(function, jobs, workers, 1))


# ----------------------------------------------------------------------------- Figure 2

def heatmap(safety: Safety, scale, n: int = 61) -> np.ndarray:
    """Q_risk over an n x n grid of the maze, averaged over the nine actions {-0.1, 0, 0.1}^2.  # (n, n)"""
    xs = np.linspace(-point_envs.MAZE_HALF, point_envs.MAZE_HALF, n, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)           # row i: y = xs[i]
    obs = torch.from_numpy(scale({"observations": grid, "next_observations": grid})["observations"])
    with torch.no_grad():
        q = torch.stack([safety.q_risk(obs, a.expand(len(obs), 2)) for a in HEATMAP_ACTIONS])
    return q.mean(0).reshape(n, n).numpy()


def adaptation_curve(row_job: tuple[str, experiment.Job]) -> dict:
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
            curve.append({"step": step, **experiment.critic_quality(safety, heldout, agent.policy)})
        if step in HEATMAP_STEPS and j.seed == 0:    # maps of seed 0 only: they are plotted, and large
            maps[step] = heatmap(safety, scale)

    record(0)
    hp = dataclasses.replace(j.hp, adapt=dataclasses.replace(j.hp.adapt, steps=max(ADAPT_STEPS)))
    mesa.phase2(j.method, safety, test_buffer, agent.policy, hp, lambda step, _: record(step + 1))
    return {"method": row, "seed": j.seed, "curve": curve, "heatmaps": maps}


def figure2(out: str, preset: str, workers: int, data_root: str = "data") -> str:
    """The paper's Figure 2 on the Maze: Multi-Task's, MESA's and the authors' MESA's (WLinear
    critic, run.py --mesa-variant authors) Q_risk adapting to the test maze (FIGURE2_ROWS)."""
    folder = os.path.join(out, "figure2")
    prepare("maze", preset, data_root)
    jobs = [(row, job("maze", method, s, folder, preset, data_root, **presets.variant_changes(variant, "maze", method)))
            for row, method, variant in FIGURE2_ROWS for s in range(FIGURE2_SEEDS)]
    results = parallel(adaptation_curve, jobs, workers)
    report.write_json(os.path.join(folder, "adaptation.json"),
                      [{k: v for k, v in r.items() if k != "heatmaps"} for r in results])
    np.savez_compressed(os.path.join(folder, "heatmaps.npz"), **{
        f"{r['method']}_{step}_steps": np.array(q) for r in results for step, q in r["heatmaps"].items()})
    by_method = {row: [r for r in results if r["method"] == row] for row, _, _ in FIGURE2_ROWS}
    plot_heatmaps(os.path.join(folder, "heatmaps.png"), by_method)
    return plot_adaptation(os.path.join(folder, "adaptation.png"), by_method)


def plot_heatmaps(path: str, by_method: dict) -> None:
    """Seed 0's Q_risk maps, one row per method, one column per number of adaptation steps."""
    fig, axes = plt.subplots(len(by_method), len(HEATMAP_STEPS), figsize=(3.2 * len(HEATMAP_STEPS), 3.1 * len(by_method)),
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
            ax.set_title(f"{report.LABELS[method]}, {step} adaptation steps", fontsize=9)
            ax.set(xlabel="x", ylabel="y")
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
            ax.plot(steps, mean, color=report.COLOURS[method], label=report.LABELS[method])
            ax.fill_between(steps, mean - se, mean + se, color=report.COLOURS[method], alpha=0.2)
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
    lines += [f"| {report.LABELS[m]} | {k} | " + " | ".join(v) + " |" for (m, k), v in rows.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- Figure 6

def figure6_jobs(out: str, preset: str, data_root: str) -> dict[str, list[experiment.Job]]:
    """{condition: its jobs}: MESA and Multi-Task on each share of D_test (the full D_test is the
    comparison's own runs, shared with it) and on the partial-power-loss task."""
    conditions = {f"D_test x {f:g}": dict(test_fraction=f) for f in FIGURE6_FRACTIONS}
    conditions["partial power loss"] = dict(test_variant="partial")
    jobs = {}
    for name, change in conditions.items():
        folder = out if change == {"test_fraction": 1.0} else os.path.join(out, "figure6", name.replace(" ", "_"))
        jobs[name] = [job("halfcheetah", method, seed, folder, preset, data_root, **change)
                      for method in FIGURE6_ROWS for seed in range(FIGURE6_SEEDS)]
    return jobs


def figure6(out: str, preset: str, workers: int, data_root: str = "data") -> str:
    """HalfCheetah MESA vs. Multi-Task on shares of D_test and on the partial-power-loss task."""
    prepare("halfcheetah", preset, data_root), prepare("halfcheetah", preset, data_root, "partial")
    jobs = figure6_jobs(out, preset, data_root)
    run_missing([j for condition in jobs.values() for j in condition], workers)
    return figure6_summary(out, preset, jobs)


def figure6_summary(out: str, preset: str, jobs: dict[str, list[experiment.Job]]) -> str:
    """<out>/figure6/summary.{md,json} and violations.png from the finished runs of today's
    configuration: per condition and method report.method_summary, and MESA against Multi-Task by
    the written rule (the paper's Figure 6: MESA has fewer violations in every condition)."""
    summary, found = {}, {}
    for name, condition in jobs.items():
        rows = {}
        for method in FIGURE6_ROWS:
            runs, metrics = report.load_folders([j.folder for j in condition if j.method == method and experiment.finished(j)])
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
    """One line per condition and method, then MESA / Multi-Task per condition with the verdict."""
    lines = ["| condition | method | seeds | cumulative violations [95% CI] | per seed | return (last 10%) [95% CI] "
             "| AUROC held-out after Phase 2 | safe D_test above eps_risk after Phase 2 |", "|" + "---|" * 8]
    for name, rows in summary.items():
        for method, s in rows.items():
            level = s["critic_level"]["d_test_after_phase2"]
            lines.append(f"| {name} | {report.LABELS[method]} | {s['seeds']} | "
                         f"{report.interval_cell(s, 'cumulative_violations', '{:.1f}')} | "
                         + ", ".join(f"{v:g}" for v in s["per_seed"]["cumulative_violations"]) + " | "
                         f"{report.interval_cell(s, 'final_return', '{:.0f}')} | "
                         f"{report.cell(s['critic_auroc'], 'heldout_after_phase2')} | "
                         f"{report.cell(level, 'safe_above_eps', '{:.0%}')} |")
    lines += ["", "| condition | MESA / Multi-Task, cumulative violations [95% CI] | P(a MESA seed has fewer) "
              "| verdict on \"MESA has fewer\" | seeds needed |", "|---|---|---|---|---|"]
    for name, c in found.items():
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f} {report.interval_text(*(c['ci95'] or [None, None]))}"
        lines.append(f"| {name} | {ratio} | {c['probability_fewer']:.2f} | {c['verdict']} | {c.get('seeds_needed') or '-'} |")
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
                    color=report.COLOURS[method], label=report.LABELS[method])
    ax.set_xticks(range(len(names)), [n.replace("D_test x ", "D_test x\n").replace("partial ", "partial\n") for n in names], fontsize=8)
    top = max(m + s for m, s in points.values())
    ax.set_ylim(0, 1.12 * top if top > 0 else 1)   # from zero, with room above the top error bar
    ax.set_ylabel("cumulative violations"), ax.set_xlabel("test data (Phase 2) or test task")
    ax.set_title("HalfCheetah-Disabled: cumulative violations (mean ± s.e. over seeds)", fontsize=10)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- outer learning rate

def phase1_quality(j: experiment.Job) -> dict:
    """Held-out Q_risk quality after Phases 1 and 2 of one job (no Phase 3)."""
    train, test, env, scale = experiment.load_inputs(j)
    heldout = scale(experiment.heldout_set(j.env, j.preset, j.data_root, j.test_variant))
    agent, safety = experiment.fresh_networks(j, env)
    return experiment.offline_phases(j, safety, agent.policy, train, test, heldout)["critic"]


def outer_lr(out: str, preset: str, workers: int, data_root: str = "data") -> str:
    for env in presets.MUJOCO:
        prepare(env, preset, data_root)
    jobs = [job(env, "mesa", s, os.path.join(out, "outer_lr"), preset, data_root, **{"meta.outer_lr": lr})
            for env in presets.MUJOCO for lr in OUTER_LRS for s in range(OUTER_LR_SEEDS)]
    results = parallel(phase1_quality, jobs, workers)
    report.write_json(os.path.join(out, "outer_lr", "critic.json"),
                      [{"env": j.env, "outer_lr": j.hp.meta.outer_lr, "seed": j.seed, **r} for j, r in zip(jobs, results)])
    lines = ["| env | MESA outer lr alpha2 | AUROC after Phase 1 | after Phase 2 | loss after Phase 1 |", "|---|---|---|---|---|"]
    for env in presets.MUJOCO:
        for lr in OUTER_LRS:
            rs = [r for j, r in zip(jobs, results) if j.env == env and j.hp.meta.outer_lr == lr]
            cells = [report.mean_se([r[p][k] for r in rs]) for p, k in
                     (("after_phase1", "auroc"), ("after_phase2", "auroc"), ("after_phase1", "loss"))]
            lines.append(f"| {env} | {lr:g} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- eps_risk

def eps_risk(out: str, preset: str, workers: int, data_root: str = "data") -> str:
    prepare("navigation1", preset, data_root)
    methods = ("rrl", "multitask", "mesa")
    folders = {eps: out if eps == presets.preset_config("navigation1", preset)[0].recovery.eps_risk
               else os.path.join(out, "eps_risk", f"eps{eps:g}") for eps in EPS_RISKS}
    jobs = [job("navigation1", m, s, folders[eps], preset, data_root, **{"recovery.eps_risk": eps})
            for eps in EPS_RISKS for m in methods for s in range(EPS_SEEDS)]
    reuse_offline_phases(out, jobs)
    run_missing(jobs, workers)
    lines = ["| eps_risk | method | cumulative violations | final success rate | recovery fraction |",
             "|---|---|---|---|---|"]
    for eps in EPS_RISKS:
        for m in methods:
            eps_runs = [report.read_episodes(os.path.join(folders[eps], "navigation1", m, f"seed{s}", "episodes.csv"))
                        for s in range(EPS_SEEDS)]
            v, ok, rec = (report.mean_se(x) for x in ([e["cumulative_violations"][-1] for e in eps_runs],
                                                       [report.final_value(e["success"]) for e in eps_runs],
                                                       [e["recovery_fraction"].mean() for e in eps_runs]))
            lines.append(f"| {eps:g} | {report.LABELS[m]} | {v[0]:.1f} ± {v[1]:.1f} | {ok[0]:.2f} ± {ok[1]:.2f} | "
                         f"{rec[0]:.2f} ± {rec[1]:.2f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- long Phase 3

def long_phase3(out: str, preset: str, workers: int, data_root: str = "data") -> str:
    """The comparison's runs continued to the paper preset's number of Phase-3 episodes."""
    folder, tables = os.path.join(out, "long"), []
    for env, episodes in LONG_EPISODES.items():
        jobs = [job(env, m, s, folder, preset, data_root, episodes=episodes)
                for m in mesa.METHODS for s in range(LONG_SEEDS)]
        reuse_offline_phases(out, jobs)
        run_missing(jobs, workers)
        tables.append(report.summarise(os.path.join(folder, env), env, mesa.METHODS, range(LONG_SEEDS),
                                       envs.HAS_SUCCESS[env]))
    return "\n\n".join(tables)


def raw_inputs(out: str, preset: str, workers: int, data_root: str = "data") -> str:
    folder = os.path.join(out, "raw_inputs")
    jobs = [job("navigation1", m, s, folder, preset, data_root, scale_inputs=False)
            for m in mesa.METHODS for s in range(RAW_SEEDS)]
    run_missing(jobs, workers)
    return report.summarise(os.path.join(folder, "navigation1"), "navigation1", mesa.METHODS,
                            range(RAW_SEEDS), True)


# ----------------------------------------------------------------------------- MESA variants

MESA_VARIANT_ENVS = ("halfcheetah", "ant", "navigation1", "cartpole", "maze")
MESA_VARIANT_SEEDS = 3
# (row name, method, variant): the paper variants are the comparison's own runs
MESA_VARIANT_ROWS = (("mesa", "mesa", "paper"), ("mesa_authors", "mesa", "authors"),
                     ("multitask", "multitask", "paper"), ("multitask_authors", "multitask", "authors"))


def mesa_variant_job(env: str, method: str, variant: str, seed: int, out: str, preset: str,
                     data_root: str) -> experiment.Job | None:
    """One run of the study: the comparison's run for the paper variant, one under
    <out>/mesa_variants/authors for the authors' (None where that variant changes nothing)."""
    changes = presets.variant_changes(variant, env, method)
    if variant == "paper":
        return job(env, method, seed, out, preset, data_root)
    if not changes:
        return None
    return job(env, method, seed, os.path.join(out, "mesa_variants", "authors"), preset, data_root, **changes)


def mesa_variants(out: str, preset: str, workers: int, data_root: str = "data",
                  env_names=MESA_VARIANT_ENVS, seeds: int = MESA_VARIANT_SEEDS) -> str:
    """MESA as the paper describes it vs. as its authors' code ran it (run.py --mesa-variant
    authors), beside Multi-Task, same seeds and budget: critic AUROC after Phases 1 and 2 (held-out)
    and on the states Phase 3 visited, Phase-3 violations and return (docs/mesa_variants.md).
    Runs the environments in env_names; the summary covers every environment of the study with
    finished runs, so a call on some of them keeps the others' rows.
    Writes <out>/mesa_variants/summary.{md,json}."""
    jobs = {}
    for env in MESA_VARIANT_ENVS:
        for s in range(seeds):
            for row, method, variant in MESA_VARIANT_ROWS:
                j = mesa_variant_job(env, method, variant, s, out, preset, data_root)
                if j is not None:
                    jobs[(env, row, s)] = j
    for env in env_names:
        prepare(env, preset, data_root)
    run_missing([j for (env, _, _), j in jobs.items() if env in env_names], workers)
    return mesa_variants_summary(out, preset, jobs)


def mesa_variants_summary(out: str, preset: str, jobs: dict) -> str:
    """<out>/mesa_variants/summary.{md,json} from the finished runs among jobs {(env, row, seed): job};
    a folder holding a run of another configuration (an older run key) is left out."""
    summary = {env: {} for env in MESA_VARIANT_ENVS}
    for env in MESA_VARIANT_ENVS:
        for row, method, _ in MESA_VARIANT_ROWS:
            folders = [j.folder for (e, r, _), j in jobs.items() if e == env and r == row and experiment.finished(j)]
            runs, metrics = report.load_folders(folders)
            if runs:
                summary[env][row] = report.method_summary(runs, metrics, envs.HAS_SUCCESS[env])
    folder = os.path.join(out, "mesa_variants")
    found = {env: report.comparisons(env, rows) for env, rows in summary.items() if rows}
    report.write_json(os.path.join(folder, "summary.json"), {"preset": preset, "envs": summary, "comparisons": found},
                      strict=True)
    table = mesa_variants_table(summary)
    atomic_write(os.path.join(folder, "summary.md"), table + "\n" + "".join(
        f"\n## {report.TITLES[env]}: comparisons\n\n{report.comparisons_table(c)}\n" for env, c in found.items() if c))
    return table


def mesa_variants_table(summary: dict) -> str:
    lines = ["| env | method | seeds | AUROC held-out (Phase 1 / 2) | AUROC on-policy (start / end) "
             "| safe D_test above eps_risk (Phase 1 / 2) | cumulative violations | final return |",
             "|---|---|---|---|---|---|---|---|"]
    for env, rows in summary.items():
        for row, s in rows.items():
            a = s["critic_auroc"]
            lines.append(f"| {env} | {report.LABELS.get(row, row)} | {s['seeds']} | "
                         f"{report.cell(a, 'heldout_after_phase1', '{:.2f} ± {:.2f}')} / "
                         f"{report.cell(a, 'heldout_after_phase2', '{:.2f} ± {:.2f}')} | "
                         f"{report.cell(a, 'onpolicy_start', '{:.2f} ± {:.2f}')} / "
                         f"{report.cell(a, 'onpolicy_final', '{:.2f} ± {:.2f}')} | "
                         f"{level_cell(s, 'd_test_after_phase1')} / {level_cell(s, 'd_test_after_phase2')} | "
                         f"{report.cell(s, 'cumulative_violations', '{:.1f} ± {:.1f}')} | "
                         f"{report.cell(s, 'final_return', '{:.1f} ± {:.1f}')} |")
    return "\n".join(lines) + ("\n\nSafe D_test above eps_risk: the share of D_test's safe transitions whose "
                               "Q_risk exceeds eps_risk (- for runs made before it was recorded).")


def level_cell(s: dict, place: str) -> str:
    """The share of safe transitions above eps_risk at a place of a method summary, as a percentage."""
    return report.cell(s.get("critic_level", {}).get(place, {}), "safe_above_eps", "{:.0%}")


# ----------------------------------------------------------------------------- the headline at the paper's scale

PAPER_SCALE_SEEDS = {"halfcheetah": 5, "ant": 3}
# Rows that run after every seed of the others: Ant's authors' MESA costs about 6 core-hours a seed
# (docs/results.md, the plan), and the paper's four methods come first.
PAPER_SCALE_LAST = {"ant": ("mesa_authors",)}
# (row, method, MESA variant): the methods of the paper's Figure 5 that run here, and MESA as its
# authors' code ran it (WLinear critic; docs/mesa_variants.md)
PAPER_SCALE_ROWS = (("unconstrained", "unconstrained", "paper"), ("rrl", "rrl", "paper"),
                    ("multitask", "multitask", "paper"), ("mesa", "mesa", "paper"), ("mesa_authors", "mesa", "authors"))


def paper_scale_job(env: str, method: str, variant: str, seed: int, out: str, preset: str,
                    data_root: str) -> experiment.Job:
    """One run of the headline: the preset's configuration with the paper's Phase-3 episodes
    (presets.PAPER_EPISODES; smoke keeps its 2); the authors' variant under paper_scale/authors."""
    folder = os.path.join(out, "paper_scale", *(["authors"] if variant == "authors" else []))
    changes = presets.variant_changes(variant, env, method) if variant == "authors" else {}
    episodes = presets.preset_config(env, preset)[1] if preset == "smoke" else presets.PAPER_EPISODES[env]
    return job(env, method, seed, folder, preset, data_root, episodes=episodes, **changes)


def paper_scale(out: str, preset: str, workers: int, data_root: str = "data",
                env_names=tuple(PAPER_SCALE_SEEDS), seeds: int | None = None) -> str:
    """Every row of PAPER_SCALE_ROWS on each environment over the paper's episodes, seed by seed (every
    method's seed 0 before any seed 1, so an interrupted experiment has equal seeds per method;
    PAPER_SCALE_LAST's rows after all seeds of the others);
    finished runs are skipped and Phase 3 resumes from its checkpoints. Writes
    <out>/paper_scale/<env>/summary.{md,json} and the figures over the whole run."""
    tables = []
    for env in env_names:
        n = seeds or PAPER_SCALE_SEEDS[env]
        jobs = {(row, s): paper_scale_job(env, method, variant, s, out, preset, data_root)
                for s in range(n) for row, method, variant in PAPER_SCALE_ROWS}
        order = sorted(jobs, key=lambda row_seed: row_seed[0] in PAPER_SCALE_LAST.get(env, ()))   # stable
        prepare(env, preset, data_root)
        run_missing([jobs[k] for k in order], workers)
        folders = {row: [jobs[row, s].folder for s in range(n) if experiment.finished(jobs[row, s])]
                   for row, _, _ in PAPER_SCALE_ROWS}      # today's configuration only
        tables.append(report.summarise(os.path.join(out, "paper_scale", env), env, None, None,
                                       envs.HAS_SUCCESS[env], preset, folders=folders))
    return "\n\n".join(tables)
