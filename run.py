"""Run MESA and its comparisons end to end from the command line: datasets, Phases 1-3, summary, figures.

    python run.py                      # the short comparison: 4 methods on navigation1, seed 0, 100 episodes
    python run.py --seeds 3            # the full one: 5 methods, 3 seeds, quick's 300 episodes
    python run.py --env maze,cartpole --seeds 3 --preset quick --workers 2

The command line gives the jobs: every (env, method, seed), with the preset's hyperparameters
(presets.py), the MESA variant's changes and the options given. Each job is run_job: experiment.run_one
(MESA's Algorithm 1 for one run) or, for CARL, carl_run.run_carl, in parallel processes or as Ray
tasks. Outputs, in one folder per configuration (config_name: the preset and the settings that differ):
<out>/<config>/<env>/<method>/seed<k>/ (experiment.py) and
<out>/<config>/<env>/{summary.md, summary.json, cumulative_violations.png, learning_curve.png}.
A rerun with the same configuration skips finished runs and resumes interrupted ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import os
import signal

if __name__ == "__mp_main__":   # a spawned worker importing this script: Ctrl-C is the parent's (pool_map)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # already while torch imports, before worker_pool._init_worker runs

import torch  # noqa: E402

import dataset_files  # noqa: E402
import datasets  # noqa: E402
import envs  # noqa: E402
import report  # noqa: E402
import timing  # noqa: E402
from baselines import BASELINES  # noqa: E402
from carl import CARL_METHODS  # noqa: E402
from common import OneLineParser  # noqa: E402
from carl_run import run_carl  # noqa: E402
from experiment import ORACLE_DATA_METHODS, heldout_set, run_one  # noqa: E402
from jobspec import DATA_SEED, DamagedFile, Job, check_files, finished  # noqa: E402
from mesa import METHODS  # noqa: E402
from presets import GROUPS, MESA_VARIANTS, SKIPPED, field_docs, job_config  # noqa: E402
from worker_pool import pool_map, ray_map, sigterm_as_interrupt, stop_status  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        description="Run MESA and the methods it is compared with, end to end (README: Running). "
                    "Every hyperparameter option left unset takes the preset's value.")
    parser.add_argument("--env", nargs="+", default=None,
                        help=f"environments, comma or space separated, or 'all': {', '.join(envs.ENV_NAMES)} "
                             "(default: navigation1)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help=f"subset of {', '.join(METHODS)} (default: all of these), of Recovery RL's "
                             f"comparisons {', '.join(BASELINES)}, and the model-based {', '.join(CARL_METHODS)} "
                             "(CARL, CARL-Offline: docs/carl.md)")
    parser.add_argument("--seeds", nargs="+", default=None,
                        help="one number N: the N seeds 0..N-1; several (or comma separated): exactly "
                             "those seeds (default: 2, i.e. seeds 0 and 1)")
    parser.add_argument("--seed", type=int, default=None, help="one seed K (overrides --seeds)")
    parser.add_argument("--preset", choices=datasets.PRESETS, default=None,
                        help="sizes: paper (the paper's), quick (2-core CPU, the default), smoke (seconds, tests). "
                             "With none of --env, --methods, --seeds, --seed, --episodes, --preset: the short "
                             f"comparison, {' '.join(SHORT_COMPARISON)} (about 10 minutes on 2 cores)")
    parser.add_argument("--out", default="runs", help="output folder (default: %(default)s, git-ignored; only "
                                                      "paper.py writes results/)")
    parser.add_argument("--data-root", default="data", help="dataset cache folder (default: %(default)s)")
    parser.add_argument("--test-variant", default="default", help='test task; "partial" for halfcheetah')
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="(method, seed) jobs run in parallel processes (default: the number of "
                             "cores, %(default)s: small networks run faster on one thread per process "
                             "than on several in one)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per job (default: 1, whatever the number of workers)")
    parser.add_argument("--episodes", type=int, default=None, help="Phase-3 episodes (default: the preset's)")
    parser.add_argument("--test-fraction", type=float, default=1.0,
                        help="use the first fraction of D_test, in (0, 1] (paper Figure 6; default 1)")
    parser.add_argument("--scale-inputs", action=argparse.BooleanOptionalAction, default=True,
                        help="standardise observations with D_test's mean and std, for every method "
                             "(default: on; --no-scale-inputs feeds raw observations)")
    parser.add_argument("--mesa-variant", choices=MESA_VARIANTS, default="paper",
                        help="paper: MESA as the paper describes it (default); authors: as its authors' code "
                             "ran it: learned inner rates, outer gradient clip 40, pi_rec lr 1e-4 in Phase 1, "
                             "MAML targets from psi, 3 x 100 networks for MESA, and Multi-Task's Phase 2 on "
                             "training + test data on cartpole, halfcheetah, ant (docs/mesa_variants.md). "
                             "Explicit hyperparameter options win")
    parser.add_argument("--hidden", type=int, nargs="+", default=None,
                        help="hidden widths of every network (sets --sac-hidden and --recovery-hidden)")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="Phase-3 checkpoint (phase3.pt) every N episodes; an interrupted run resumes "
                             "from it (default: per environment, minutes apart)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep phase3.pt after a run finishes")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log progress.csv's scalars to <run>/tensorboard (needs the tensorboard package)")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: spawned processes on this machine (default); ray: Ray tasks of one CPU "
                             "each (pip install -r requirements-ray.txt), on a local Ray with --workers CPUs "
                             "or on the cluster at --ray-address")
    parser.add_argument("--ray-address", default=None, help='an existing Ray cluster, e.g. "auto" or "ray://head:10001"')
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress per phase: tqdm bars with one worker, a line every 30 s per job with "
                             "several (default: on)")
    for group, (cls, title) in GROUPS.items():
        section, docs = parser.add_argument_group(f"{group}: {title}"), field_docs(cls)
        for f in dataclasses.fields(cls):
            if f"{group}.{f.name}" in SKIPPED:
                continue
            kind = {"int": dict(type=int), "float": dict(type=float), "str": dict(type=str),
                    "bool": dict(action=argparse.BooleanOptionalAction),
                    "tuple[int, ...]": dict(type=int, nargs="+"), "tuple[float, ...]": dict(type=float, nargs="+")}[f.type]
            section.add_argument(f"--{group}-{f.name.replace('_', '-')}", dest=f"{group}.{f.name}",
                                 default=argparse.SUPPRESS, metavar={"tuple[int, ...]": "N", "tuple[float, ...]": "X"}.get(f.type, f.type.upper()),
                                 help=docs.get(f.name, ""), **kind)
    return parser


# `python3 run.py` with no --env, --methods, --seeds, --seed, --episodes or --preset: enough of the
# comparison to show the paper's point on Navigation 1 (MESA against Multi-Task, RRL and Unconstrained
# SAC; seed 0, the first 100 of quick's 300 episodes) in about 10 minutes on 2 cores. Its folder is
# quick_episodes-100, and `python3 run.py --seeds 3` (the full comparison) reuses its Phases 1-2.
SHORT_COMPARISON = ("--env", "navigation1", "--methods", "mesa,multitask,rrl,unconstrained", "--seeds", "1",
                    "--episodes", "100")
FULL_COMPARISON = "python3 run.py --seeds 3"
SWEEP_DEFAULTS = {"env": ["navigation1"], "methods": ["all"], "seeds": ["2"], "preset": "quick"}

CONFIG_DEFAULTS = {"episodes": None, "test_variant": "default", "mesa_variant": "paper", "test_fraction": 1.0,
                   "scale_inputs": True, "hidden": None}


def config_name(args: argparse.Namespace) -> str:
    """The folder of one configuration under --out: the preset, then every setting that differs
    from it, e.g. "quick", "quick_episodes-50_recovery.eps_risk-0.5"; a hash where that is long.
    Two configurations never share a folder, so no run replaces another's results."""
    changed = {k: getattr(args, k) for k, default in CONFIG_DEFAULTS.items() if getattr(args, k) != default}
    changed.update({k: v for k, v in vars(args).items() if "." in k})
    parts = [f"{k.replace('_', '-')}-{','.join(map(str, v)) if isinstance(v, list) else v}"
             for k, v in sorted(changed.items())]
    name = "_".join([args.preset, *parts])
    if len(name) > 80 or not all(c.isalnum() or c in "._-," for c in name):
        name = f"{args.preset}_{hashlib.sha256(name.encode()).hexdigest()[:10]}"
    return name


def progress_mode(show: bool, workers: int) -> str:
    return "none" if not show else "bars" if workers == 1 else "lines"


def split_names(values: list[str], valid: tuple[str, ...], what: str, parser) -> list[str]:
    names = [n for v in values for n in v.replace(",", " ").split()]
    if names == ["all"]:
        return list(valid)
    for n in names:
        if n not in valid:
            parser.error(f"unknown {what} {n!r}; choose from {', '.join(valid)} or all")
    return list(dict.fromkeys(names))


def parse_seeds(values: list[str], parser) -> list[int]:
    try:
        seeds = [int(s) for v in values for s in v.replace(",", " ").split()]
    except ValueError:
        parser.error(f"--seeds takes integers, got {' '.join(values)}")
    if len(seeds) == 1:
        if seeds[0] < 1:
            parser.error(f"--seeds N needs N >= 1, got {seeds[0]}")
        return list(range(seeds[0]))
    if min(seeds) < 0:
        parser.error(f"--seeds takes seeds >= 0, got {min(seeds)}")
    return list(dict.fromkeys(seeds))


def apply_defaults(args: argparse.Namespace, parser) -> bool:
    """Fill in the sweep options left unset: the short comparison where none of them is given (True),
    else SWEEP_DEFAULTS."""
    short = all(getattr(args, k) is None for k in ("env", "methods", "seeds", "seed", "episodes", "preset"))
    if short:
        given = vars(parser.parse_args(list(SHORT_COMPARISON)))
        for key in ("env", "methods", "seeds", "episodes"):
            setattr(args, key, given[key])
    for key, default in SWEEP_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    return short


def writable(folder: str) -> str | None:
    """None where files can be written in folder (made if missing); else why not."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        return f"{e.strerror or e}: {e.filename or folder}"
    return None


# ----------------------------------------------------------------------------- time estimates

def announce(jobs: list[Job], todo: list[Job], workers: int, backend: str, ray_address: str | None,
             missing: list[str]) -> None:
    """One line before the sweep: how many runs, how many at a time, about how long, and which
    environments' datasets are generated first."""
    estimates = [timing.estimate_seconds(j) for j in todo]
    known = [s for s in estimates if s is not None]
    skipped = f" ({len(jobs) - len(todo)} finished, skipped)" if len(todo) < len(jobs) else ""
    text = f"{len(todo)} run{'s' * (len(todo) != 1)} to do{skipped}"
    if backend == "ray" and ray_address:
        text += f" on the Ray cluster: {timing.duration(sum(known))} of one CPU" if known else " on the Ray cluster"
    elif todo:
        text += f", {min(workers, len(todo))} at a time"
        if known:
            text += f": {timing.duration(timing.schedule_seconds(known, workers))}"
    if len(known) < len(todo):
        unknown = f"{len(todo) - len(known)} of them not estimated" if known else "no estimate"
        text += f"; {unknown} (timing.py has quick's times; other presets' come from your finished runs)"
    if missing:
        text += f"; first the datasets of {', '.join(missing)} (README: Environments and datasets, for their times)"
    print(text, flush=True)


# ----------------------------------------------------------------------------- the sweep

def run_job(job: Job) -> dict:
    """One (env, method, seed) run: CARL's own path (carl_run.py) or Algorithm 1 (experiment.py)."""
    return run_carl(job) if job.method in CARL_METHODS else run_one(job)


def run_jobs(jobs: list[Job], workers: int, threads: int, backend: str = "local",
             ray_address: str | None = None) -> list[str]:
    """Run the jobs one after another, in `workers` spawned processes, or as Ray tasks; print a line
    per run. Returns one line per failed job (only Ray goes on past a failure).

    Ctrl-C stops the workers at once (KeyboardInterrupt reaches the caller; main turns SIGTERM into
    one too); finished runs stay.
    """
    done = []

    def line(r):
        j = r["job"]
        done.append(j)
        rows = report.read_episodes(os.path.join(j.folder, "episodes.csv"))
        score = f"success (last 10%) {report.final_value(rows['success']):.2f}" if envs.HAS_SUCCESS[j.env] \
            else f"return (last 10%) {report.final_value(rows['return']):.1f}"
        print(f"done {j.env}/{j.method}/seed{j.seed} ({len(done)} of {len(jobs)}): {j.episodes} episodes, "
              f"{r['violations']} violations, {score}, {r['seconds']:.0f} s", flush=True)
    failures = []
    if backend == "ray":
        for job, result in ray_map(run_job, jobs, threads, ray_address, workers):
            if isinstance(result, Exception):
                failures.append(f"failed {job.env}/{job.method}/seed{job.seed}: {str(result).strip().splitlines()[-1]}")
                print(failures[-1], flush=True)
            else:
                line(result)
    elif workers <= 1:
        for job in jobs:
            line(run_job(job))
    else:
        for result in pool_map(run_job, jobs, workers, threads, ordered=False):
            line(result)
    return failures


def datasets_cached(env: str, args) -> bool:
    """Whether env's training sets and D_test are generated under --data-root (an unreadable manifest:
    no; generating them says what is wrong)."""
    try:
        return all(f.is_cached() for f in datasets.file_jobs(env, args.preset, args.data_root, args.test_variant,
                                                             DATA_SEED))
    except (OSError, ValueError, KeyError, dataset_files.DatasetError):
        return False


def sweep(jobs: list[Job], env_names: list[str], methods: list[str], args, threads: int,
          parser) -> tuple[list[str], list[Job]]:
    """The unfinished jobs, checked for damaged files and announced, then the datasets, then the jobs;
    (failure lines, jobs run). A damaged file, bad dataset or folder ends the command with one line
    (exit status 2)."""
    try:
        todo = [j for j in jobs if not finished(j)]
        for job in todo:
            check_files(job)
    except DamagedFile as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    for job in jobs:
        if job not in todo:
            print(f"skipped {job.env}/{job.method}/seed{job.seed}: finished ({job.folder}/episodes.csv)")
    todo = timing.longest_first(todo)
    missing = [env for env in env_names if todo and not datasets_cached(env, args)]
    announce(jobs, todo, args.workers, args.backend, args.ray_address, missing)
    try:   # datasets before the workers start: no two processes ever generate the same file
        for env in env_names:
            datasets.get_datasets(env, args.preset, args.data_root, args.test_variant, progress=True, seed=DATA_SEED)
            heldout_set(env, args.preset, args.data_root, args.test_variant)
            if set(methods) & set(ORACLE_DATA_METHODS):
                datasets.get_oracle(env, args.preset, args.data_root, args.test_variant, True, DATA_SEED)
    except (dataset_files.DatasetError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    except OSError as e:
        parser.exit(2, f"{parser.prog}: error: cannot write the datasets under --data-root {args.data_root} "
                       f"({e.strerror or e}: {e.filename}): choose a folder you can write to\n")
    todo = [dataclasses.replace(j, position=f"run {i} of {len(todo)}") for i, j in enumerate(todo, 1)]
    try:
        return run_jobs(todo, args.workers, threads, args.backend, args.ray_address), todo
    except DamagedFile as e:     # only where a file was damaged after the check above
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    short = apply_defaults(args, parser)
    env_names = split_names(args.env, envs.ENV_NAMES, "environment", parser)
    methods = split_names(args.methods, METHODS + BASELINES + CARL_METHODS, "method", parser)
    if args.methods == ["all"]:
        methods = list(METHODS)      # the paper's comparison; the baselines and CARL are asked for by name
    seeds = [args.seed] if args.seed is not None else parse_seeds(args.seeds, parser)
    if args.seed is not None and args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--workers and --threads must be >= 1")
    if args.tensorboard:
        if importlib.util.find_spec("tensorboard") is None:
            parser.error("--tensorboard needs the tensorboard package (pip install tensorboard)")
    if args.backend == "ray" and importlib.util.find_spec("ray") is None:
        parser.error("--backend ray needs Ray (pip install -r requirements-ray.txt)")
    if args.ray_address and args.backend != "ray":
        parser.error("--ray-address needs --backend ray")
    if args.checkpoint_every < 0:
        parser.error(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.episodes is not None and args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if not 0 < args.test_fraction <= 1:
        parser.error(f"--test-fraction must lie in (0, 1], got {args.test_fraction}")
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items() if "." in k}
    if args.hidden is not None:
        overrides = {"sac.hidden": tuple(args.hidden), "recovery.hidden": tuple(args.hidden), **overrides}
    threads = args.threads or 1
    torch.set_num_threads(threads)
    out = os.path.join(args.out, config_name(args))
    why = writable(out)
    if why is not None:
        parser.exit(2, f"{parser.prog}: error: cannot write in --out {args.out} ({why}): choose a folder you can "
                       "write to\n")
    if short:
        print(f"the short comparison ({' '.join(['python3 run.py', *SHORT_COMPARISON])}); "
              f"the full one: {FULL_COMPARISON}", flush=True)
    print(f"configuration folder: {out}", flush=True)

    jobs = []   # seed by seed, so that an interrupted run leaves every method with as many seeds
    for env in env_names:
        for s in seeds:
            for m in methods:
                try:
                    hp, episodes = job_config(env, m, args.preset, args.mesa_variant, overrides)
                except ValueError as e:
                    parser.error(str(e))
                jobs.append(Job(env, m, s, args.preset, hp, args.episodes or episodes, out, args.data_root,
                                args.test_variant, progress_mode(args.progress, args.workers), args.test_fraction,
                                args.scale_inputs, checkpoint_every=args.checkpoint_every,
                                keep_checkpoint=args.keep_checkpoints, tensorboard=args.tensorboard))
    stopped = None
    try:
        with sigterm_as_interrupt():    # kill ends the sweep as Ctrl-C does
            failures, todo = sweep(jobs, env_names, methods, args, threads, parser)
    except KeyboardInterrupt as stop:
        stopped = stop_status(stop)
    if stopped:   # out of the except block: its traceback, and with it the worker pool, is freed first
        parser.exit(stopped[1], f"{stopped[0]}: finished runs are kept under {out}/; run the same command "
                                "again to resume (finished runs are skipped, cached Phases 1-2 reused)\n")
    for env in env_names:
        env_dir = os.path.join(out, env)
        # every method with finished runs of these seeds, not only this command's: nothing drops out
        print(f"\n{report.summarise(env_dir, env, METHODS + BASELINES + CARL_METHODS, seeds, envs.HAS_SUCCESS[env], args.preset)}")
        print("success rate and return (last 10%): the mean over each run's last 10% of episodes")
        print(f"summary and figures: {env_dir}/summary.md, cumulative_violations.png, learning_curve.png")
    if short:
        print(f"\nthe full comparison (5 methods, 3 seeds, quick's 300 episodes; reuses these Phases 1-2): "
              f"{FULL_COMPARISON}")
    if failures:
        parser.exit(1, f"{len(failures)} of {len(todo)} runs failed (lines above); the same command retries them\n")


if __name__ == "__main__":
    main()
