"""The studies beyond the comparison, run by paper.py (docs/results.md), and the pieces every
paper.py experiment is built from (a preset's job, dataset preparation, worker pools).

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

import os
import shutil

import claims
import datasets
import envs
import experiment
import jobspec
import mesa
import plots
import presets
import report
import run
import worker_pool
from common import atomic_write

OUTER_LRS = (1e-5, 1e-4, 1e-3)
OUTER_LR_SEEDS = 3
EPS_RISKS = (0.3, 0.5, 0.7)      # Navigation 1; the paper's value first
EPS_SEEDS = 3
LONG_EPISODES = {"navigation1": presets.PAPER_EPISODES["navigation1"], "halfcheetah": 100}
LONG_SEEDS = 3
RAW_SEEDS = 3


# ----------------------------------------------------------------------------- building blocks

def job(env: str, method: str, seed: int, out: str, preset: str, data_root: str, **changes) -> jobspec.Job:
    """An jobspec.Job with the preset's configuration; changes go to Job fields or "group.field"s."""
    hp, episodes = presets.preset_config(env, preset)
    hp = presets.apply(hp, {k: v for k, v in changes.items() if "." in k})
    fields = {"test_variant": "default", "episodes": episodes, **{k: v for k, v in changes.items() if "." not in k}}
    return jobspec.Job(env=env, method=method, seed=seed, preset=preset, hp=hp, out=out,
                   data_root=data_root, progress="lines", **fields)


# paper.py --summaries-only sets this: no dataset is made and no run is started; each part
# summarises the runs it finds finished under --out (e.g. after report.py's statistics changed).
SUMMARISE_ONLY = False


def prepare(env: str, preset: str, data_root: str, variant: str = "default", oracle: str | None = None) -> None:
    """Generate missing datasets before the workers start, so no two processes write one file
    (with `oracle`, also the RRL-oracle's data of that generator variant)."""
    if SUMMARISE_ONLY:
        return
    datasets.get_datasets(env, preset, data_root, variant, progress=True, seed=jobspec.DATA_SEED)
    experiment.heldout_set(env, preset, data_root, variant)
    if oracle is not None:
        datasets.get_oracle(env, preset, data_root, progress=True, seed=jobspec.DATA_SEED, variant=oracle)


def run_missing(jobs: list[jobspec.Job], workers: int) -> None:
    """Run the jobs that have not finished (none under SUMMARISE_ONLY); finished runs are kept."""
    if not SUMMARISE_ONLY:
        run.run_jobs([j for j in jobs if not jobspec.finished(j)], workers, 1)


def reuse_offline_phases(out: str, jobs: list[jobspec.Job]) -> None:
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
    return list(worker_pool.pool_map(function, jobs, workers, 1))


# ----------------------------------------------------------------------------- outer learning rate

def phase1_quality(j: jobspec.Job) -> dict:
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
            lines.append(f"| {eps:g} | {plots.LABELS[m]} | {v[0]:.1f} ± {v[1]:.1f} | {ok[0]:.2f} ± {ok[1]:.2f} | "
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
                     data_root: str) -> jobspec.Job | None:
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
            folders = [j.folder for (e, r, _), j in jobs.items() if e == env and r == row and jobspec.finished(j)]
            runs, metrics = report.load_folders(folders)
            if runs:
                summary[env][row] = report.method_summary(runs, metrics, envs.HAS_SUCCESS[env])
    folder = os.path.join(out, "mesa_variants")
    found = {env: claims.comparisons(env, rows) for env, rows in summary.items() if rows}
    report.write_json(os.path.join(folder, "summary.json"), {"preset": preset, "envs": summary, "comparisons": found},
                      strict=True)
    table = mesa_variants_table(summary)
    atomic_write(os.path.join(folder, "summary.md"), table + "\n" + "".join(
        f"\n## {plots.TITLES[env]}: comparisons\n\n{claims.comparisons_table(c)}\n" for env, c in found.items() if c))
    return table


def mesa_variants_table(summary: dict) -> str:
    lines = ["| env | method | seeds | AUROC held-out (Phase 1 / 2) | AUROC on-policy (start / end) "
             "| safe D_test above eps_risk (Phase 1 / 2) | cumulative violations | final return |",
             "|---|---|---|---|---|---|---|---|"]
    for env, rows in summary.items():
        for row, s in rows.items():
            a = s["critic_auroc"]
            lines.append(f"| {env} | {plots.LABELS.get(row, row)} | {s['seeds']} | "
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
# Rows that run after every seed of the others: the authors' MESA costs 3.4 (HalfCheetah) and 5.5
# (Ant) core-hours a seed (docs/results.md, the plan), and the paper's four methods come first.
PAPER_SCALE_LAST = {"ant": ("mesa_authors",), "halfcheetah": ("mesa_authors",)}
# (row, method, MESA variant): the methods of the paper's Figure 5 that run here, and MESA as its
# authors' code ran it (WLinear critic; docs/mesa_variants.md)
PAPER_SCALE_ROWS = (("unconstrained", "unconstrained", "paper"), ("rrl", "rrl", "paper"),
                    ("multitask", "multitask", "paper"), ("mesa", "mesa", "paper"), ("mesa_authors", "mesa", "authors"))


def paper_scale_job(env: str, method: str, variant: str, seed: int, out: str, preset: str,
                    data_root: str) -> jobspec.Job:
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
        folders = {row: [jobs[row, s].folder for s in range(n) if jobspec.finished(jobs[row, s])]
                   for row, _, _ in PAPER_SCALE_ROWS}      # today's configuration only
        tables.append(report.summarise(os.path.join(out, "paper_scale", env), env, None, None,
                                       envs.HAS_SUCCESS[env], preset, folders=folders))
    return "\n\n".join(tables)
