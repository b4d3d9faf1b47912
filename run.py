"""Run MESA and its comparisons end to end: datasets, Phase 1, Phase 2, Phase 3, summary, figures.

    python run.py                      # quick comparison of the four methods on navigation1
    python run.py --env maze,cartpole --seeds 3 --preset quick --workers 2

For each (env, method, seed) job (MESA paper Algorithm 1 and section 5):
  1. set_seed(seed); a fresh SAC agent; its policy at initialisation gives the Bellman targets of
     Phases 1-2 (recovery_rl docstring).
  2. Phase 1 (mesa.phase1) on the training datasets (MESA, Multi-Task), D_test (RRL) or the
     oracle's test-environment data (RRL-oracle), then Phase 2 (mesa.phase2) on D_test. The safety
     critic is scored after each phase on a held-out collection of D_test's generator (loss
     against the Bellman targets, and AUROC against report.danger_labels). Both phases are cached
     in phase2.pt.
  3. Reseed, then Phase 3 (recovery_rl.learn_online) in the test environment. The safety buffer
     starts as the method's test-environment data (D_test; RRL-oracle: its own). Afterwards the
     critic Phase 3 started from and the final one are scored on the transitions Phase 3 visited.
Outputs, in one folder per configuration (config_name: the preset and the settings that differ):
<out>/<config>/<env>/<method>/seed<k>/{config.json, metrics.json, phase2.pt, final.pt, episodes.csv}
and <out>/<config>/<env>/{summary.md, summary.json, cumulative_violations.png, learning_curve.png}.
episodes.csv is written last and marks a finished run; a rerun with the same configuration skips it.

Presets: `paper` is the paper's and the authors' settings (MESA paper Tables 1-4 and 5; Phase-3 episodes
from the authors' command lines); `quick` keeps them but with 2 x 128 networks, batches of 128 and
fewer Phase-3 episodes on Cartpole and the runners (README, "Running"); `smoke` runs every phase in
seconds, for tests. `--mesa-variant authors` runs MESA as its authors' code did, on top of any preset
(docs/mesa_variants.md).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import hashlib
import importlib.util
import inspect
import json
import multiprocessing
import os
import platform
import re
import signal
import subprocess
import sys
import time

import gymnasium
import mujoco
import numpy as np
import torch
from tqdm import tqdm

import datasets
import envs
import mesa
import report
from baselines import BASELINES, USES_CRITIC, BaselineConfig, ConstrainedSAC
from mesa import METHODS, FitConfig, Hyperparameters, MetaConfig, MultiTaskConfig
from recovery_rl import (Phase3Progress, RecoveryConfig, Safety, learn_online, phase3_checkpoint, restore_phase3,
                         safety_critic_loss)
from sac import SAC, OneLineParser, ReplayBuffer, SACConfig, atomic_write, save_checkpoint, set_seed

DATA_SEED = 0                 # one set of datasets for every run seed (datasets.get_datasets(seed=0))
HELDOUT_SEED = 998            # D_test is file seed 999 (datasets.py): a different random collection
HELDOUT_SIZE = {"smoke": 200, "quick": 5000, "paper": 10000}
MUJOCO = ("halfcheetah", "ant")
# Phase-3 episodes of the paper preset: the authors' command lines (mesa_exps.txt; Maze:
# Recovery RL's scripts/maze.sh). Quick: the same on the point envs, fewer on the others.
# Phase-3 checkpoints (phase3.pt) every this many episodes: a few minutes of a run apart, so that
# writing one (the buffers dominate: about 200 MB for a paper-size HalfCheetah run) costs under 1%.
CHECKPOINT_EVERY = {"navigation1": 50, "navigation2": 50, "maze": 50, "cartpole": 20, "halfcheetah": 5, "ant": 5}

# Methods pretrained on the RRL-oracle's 10-20K test-environment transitions instead of D_test:
# RRL-oracle, and Recovery RL's comparisons, which run in Recovery RL's setting.
ORACLE_DATA_METHODS = ("rrl_oracle", *BASELINES)

# progress.csv gets a row every this many Phase-3 steps (a few hundred rows per run at most).
LOG_EVERY = {"navigation1": 1000, "navigation2": 1000, "maze": 1000, "cartpole": 1000, "halfcheetah": 5000, "ant": 5000}

PAPER_EPISODES = {"navigation1": 300, "navigation2": 300, "maze": 500, "cartpole": 400,
                  "halfcheetah": 500, "ant": 1000}
QUICK_EPISODES = {"navigation1": 300, "navigation2": 300, "maze": 500, "cartpole": 200,
                  "halfcheetah": 60, "ant": 60}

# Preset changes to the paper's hyperparameters, as {"group.field": value}. Quick: 2 x 128
# networks, batches of 128, and the paper's Phase-1 step counts except MESA's and Multi-Task's on
# the MuJoCo envs, which are 10x / 5x fewer (README, "Running").
QUICK = {"sac.hidden": (128, 128), "recovery.hidden": (128, 128), "sac.batch_size": 128,
         "recovery.batch_size": 128, "meta.batch_size": 128, "multitask.batch_size": 128,
         "rrl.batch_size": 128}
QUICK_MUJOCO = {**QUICK, "meta.steps": 1500, "multitask.steps": 3000}
SMOKE = {"sac.hidden": (16, 16), "recovery.hidden": (16, 16), "sac.batch_size": 16,
         "recovery.batch_size": 16, "meta.batch_size": 16, "multitask.batch_size": 16,
         "rrl.batch_size": 16, "adapt.batch_size": 16, "sac.start_steps": 20, "meta.steps": 3,
         "meta.tasks_per_step": 2, "multitask.steps": 3, "rrl.steps": 3, "adapt.steps": 3}

# --mesa-variant: "paper" (the default) or "authors", MESA as its authors' code ran it
# (docs/mesa_variants.md): five changes to MESA, among them its 3 x 100 networks (MESA's alone, as
# in that code), and Multi-Task's Phase 2 on training + test data where their main.py does that.
MESA_VARIANTS = ("paper", "authors")
AUTHORS_MESA = {"meta.learn_inner_lr": True, "meta.outer_grad_clip": 40.0, "meta.pi_rec_lr": 1e-4,
                "meta.target": "current", "recovery.hidden": (100, 100, 100)}
AUTHORS_MULTITASK_ENVS = ("cartpole", "halfcheetah", "ant")
# Fields added after runs were made: left out of the run key at their defaults, so older run keys
# (finished runs, cached Phases 1-2) stay valid.
LATER_FIELDS = {"meta": ("learn_inner_lr", "inner_lr_lr", "outer_grad_clip", "pi_rec_lr", "target"),
                "multitask": ("phase2_with_train",)}


# ----------------------------------------------------------------------------- configuration

GROUPS = {  # Hyperparameters field -> (dataclass, what it configures)
    "sac": (SACConfig, "SAC task policy (Phase 3)"),
    "recovery": (RecoveryConfig, "safety critic Q_risk and recovery policy pi_rec"),
    "meta": (MetaConfig, "MESA Phase 1 (MAML over the training datasets)"),
    "multitask": (MultiTaskConfig, "Multi-Task Phase 1 (Adam on the pooled training datasets) and its "
                                   "Phase-2 data; its lr is also Multi-Task's Phase-2/3 lr of Q_risk and pi_rec"),
    "rrl": (FitConfig, "RRL Phase 1 (Adam on D_test); its lr is also RRL's Phase-3 lr"),
    "adapt": (FitConfig, "Phase 2 adaptation on D_test (MESA, Multi-Task); lr: --meta-inner-lr / "
                         "--multitask-lr"),
    "baseline": (BaselineConfig, "Recovery RL's comparisons LR, SQRL, RSPO, RP, RCPO (baselines.py)"),
}
SKIPPED = {"recovery.lr", "adapt.lr"}   # never used: each method sets its own lr (mesa.phase2_lr)


def field_docs(cls) -> dict[str, str]:
    """The one-line comment after each field of a config dataclass and its bases (its documentation)."""
    pattern = re.compile(r"^\s+(\w+):[^#\n]*#\s*(.+)$", re.M)
    return {name: doc for c in reversed(cls.__mro__[:-1]) for name, doc in pattern.findall(inspect.getsource(c))}


def preset_config(env: str, preset: str) -> tuple[Hyperparameters, int]:
    """(hyperparameters, Phase-3 episodes) of a preset: the paper's, scaled for quick and smoke."""
    hp = mesa.paper_hyperparameters(env)
    if preset == "paper":
        return hp, PAPER_EPISODES[env]
    changes = SMOKE if preset == "smoke" else QUICK_MUJOCO if env in MUJOCO else QUICK
    return apply(hp, changes), 2 if preset == "smoke" else QUICK_EPISODES[env]


def variant_changes(variant: str, env: str, method: str) -> dict:
    """The {"group.field": value} changes of a MESA variant for one (env, method)."""
    if variant == "authors" and method == "mesa":
        return AUTHORS_MESA
    if variant == "authors" and method == "multitask" and env in AUTHORS_MULTITASK_ENVS:
        return {"multitask.phase2_with_train": True}
    return {}


def job_config(env: str, method: str, preset: str, variant: str, overrides: dict) -> tuple[Hyperparameters, int]:
    """(hyperparameters, Phase-3 episodes) of one (env, method): the preset's, then the MESA
    variant's changes, then the command line's options (which win)."""
    hp, episodes = preset_config(env, preset)
    return apply(hp, {**variant_changes(variant, env, method), **overrides}), episodes


def apply(hp: Hyperparameters, changes: dict) -> Hyperparameters:
    """A copy of hp with {"group.field": value} changes, validated (ValueError on nonsense)."""
    groups = {name: dataclasses.replace(getattr(hp, name)) for name in GROUPS}
    for key, value in changes.items():
        group, name = key.split(".")
        setattr(groups[group], name, value)
    return Hyperparameters(**{name: dataclasses.replace(cfg) for name, cfg in groups.items()})  # re-validates


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        description="Run MESA and the methods it is compared with, end to end (README: Running). "
                    "Every hyperparameter option left unset takes the preset's value.")
    parser.add_argument("--env", nargs="+", default=["navigation1"],
                        help=f"environments, comma or space separated, or 'all': {', '.join(envs.ENV_NAMES)} "
                             "(default: navigation1)")
    parser.add_argument("--methods", nargs="+", default=["all"],
                        help=f"subset of {', '.join(METHODS)} (default: all of these) and of Recovery RL's "
                             f"comparisons {', '.join(BASELINES)}")
    parser.add_argument("--seeds", nargs="+", default=["2"],
                        help="one number N: the N seeds 0..N-1; several (or comma separated): exactly "
                             "those seeds (default: 2, i.e. seeds 0 and 1)")
    parser.add_argument("--seed", type=int, default=None, help="one seed K (overrides --seeds)")
    parser.add_argument("--preset", choices=datasets.PRESETS, default="quick",
                        help="sizes: paper (the paper's), quick (2-core CPU, the default), smoke (seconds, tests)")
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
                    "tuple[int, ...]": dict(type=int, nargs="+")}[f.type]
            section.add_argument(f"--{group}-{f.name.replace('_', '-')}", dest=f"{group}.{f.name}",
                                 default=argparse.SUPPRESS, metavar={"tuple[int, ...]": "N"}.get(f.type, f.type.upper()),
                                 help=docs.get(f.name, ""), **kind)
    return parser


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
        parser.error("seeds must be >= 0")
    return list(dict.fromkeys(seeds))


# ----------------------------------------------------------------------------- one run

@dataclasses.dataclass
class Job:
    env: str
    method: str
    seed: int
    preset: str
    hp: Hyperparameters
    episodes: int
    out: str
    data_root: str
    test_variant: str
    progress: str                # "bars" (tqdm), "lines" (periodic lines: parallel workers) or "none"
    test_fraction: float = 1.0   # share of D_test used (paper Figure 6)
    scale_inputs: bool = True    # standardise observations with D_test's statistics
    env_kwargs: dict = dataclasses.field(default_factory=dict)  # e.g. {"goal_radius": 4.0}
    oracle_variant: str = "mesa"  # RRL-oracle's generator ("rrl": Recovery RL's Navigation 2)
    checkpoint_every: int = 0    # Phase-3 checkpoint every this many episodes (0: CHECKPOINT_EVERY[env])
    keep_checkpoint: bool = False  # keep phase3.pt after the run finishes
    tensorboard: bool = False    # also write progress.csv's scalars for TensorBoard (optional package)

    @property
    def folder(self) -> str:
        return os.path.join(self.out, self.env, self.method, f"seed{self.seed}")

    def key(self, phase3: bool = True) -> str:
        """Hash of what the result depends on; phase3=False: only what Phases 1-2 depend on."""
        hp = dataclasses.asdict(self.hp)
        for group, names in LATER_FIELDS.items():
            defaults = type(getattr(self.hp, group))()
            for name in names:
                if name in hp[group] and hp[group][name] == getattr(defaults, name):
                    del hp[group][name]
        if self.method not in BASELINES:     # absent: the other methods' keys stay as they were
            del hp["baseline"]
        if not phase3:   # Phases 1-2 see SAC only through the initial policy's network shape,
            hp["sac"] = {"hidden": hp["sac"]["hidden"]}      # and never filter, so never use eps_risk
            hp["recovery"] = {k: v for k, v in hp["recovery"].items() if k != "eps_risk"}
        what = {"env": self.env, "method": self.method, "seed": self.seed, "preset": self.preset,
                "test_variant": self.test_variant, "data_seed": DATA_SEED, "hp": hp,
                "test_fraction": self.test_fraction, "scale_inputs": self.scale_inputs,
                "episodes": self.episodes if phase3 else None}
        if self.env_kwargs or self.oracle_variant != "mesa":   # absent keys keep older run keys valid
            what.update(env_kwargs=self.env_kwargs, oracle_variant=self.oracle_variant)
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def heldout_set(env: str, preset: str, root: str, variant: str) -> dict:
    """A collection of D_test's generator in the test environment that D_test does not hold (cached)."""
    n = max(HELDOUT_SIZE[preset], datasets.PRESET_SPECS[preset][env].n_test)
    return datasets.get_heldout(env, preset, root, variant, n, HELDOUT_SEED, DATA_SEED)


def critic_quality(safety: Safety, heldout: dict, policy) -> dict:
    """MSE of Q_risk against its Bellman targets, and AUROC of Q_risk against upcoming violations.

    heldout: transitions in collection order (a held-out set, or the ones Phase 3 visited).
    """
    batch = {"obs": torch.from_numpy(heldout["observations"]), "act": torch.from_numpy(heldout["actions"]),
             "cost": torch.from_numpy(heldout["costs"]),
             "next_obs": torch.from_numpy(heldout["next_observations"])}
    gamma = safety.cfg.gamma_risk
    horizon = round(1.0 / (1.0 - gamma)) if gamma < 1 else np.inf
    labels = report.danger_labels(heldout["costs"], heldout["terminals"], heldout["timeouts"], horizon)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)                     # the same target samples for every evaluation
        q = safety.q_risk(batch["obs"], batch["act"])
        loss = safety_critic_loss(q, safety.targets(batch, policy)).item()
    return {"loss": loss, "auroc": report.auroc(q.numpy(), labels), "positives": int(labels.sum()),
            "transitions": len(labels), "label_horizon": float(horizon)}


class ProgressLines:
    """Progress as periodic one-line reports (for parallel workers, where bars would interleave):
    run, phase, count, speed and ETA every `every` seconds and when the phase ends."""

    def __init__(self, label: str, total: int, every: float = 30.0):
        self.label, self.total, self.every, self.count, self.postfix = label, total, every, 0, ""
        self.t0 = self.last = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None and self.total:
            self._print()

    def update(self, n: int = 1) -> None:
        self.count += n
        if time.perf_counter() - self.last >= self.every:
            self._print()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _print(self) -> None:
        self.last = time.perf_counter()
        elapsed = self.last - self.t0
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.label} {self.count}/{self.total}, {rate:.2f}/s, {elapsed / 60:.1f} min, "
              f"ETA {eta / 60:.1f} min{extra}", file=sys.stderr, flush=True)


def progress_bar(job: Job, phase: str, total: int):
    """A tqdm bar (one worker), periodic lines (several workers) or nothing (--no-progress)."""
    label = f"{job.env}/{job.method}/seed{job.seed} {phase}"
    if job.progress == "lines":
        return ProgressLines(label, total)
    return tqdm(total=total, desc=label, leave=False, disable=job.progress != "bars" or total == 0,
                mininterval=0.5, file=sys.stderr)


def offline_buffers(job: Job, train: list, test: dict) -> tuple[list[ReplayBuffer], ReplayBuffer]:
    """Replay buffers of the training datasets (MESA and Multi-Task only) and of the method's
    test-environment data (D_test; RRL-oracle's own)."""
    train_buffers = [ReplayBuffer.from_arrays(d, seed=job.seed + 1 + i) for i, d in enumerate(train)] \
        if job.method in ("mesa", "multitask") else []
    return train_buffers, ReplayBuffer.from_arrays(test, seed=job.seed)


def offline_phases(job: Job, safety: Safety, policy, train: list, test: dict, heldout: dict) -> dict:
    """Phases 1 and 2 with the critic scored after each; returns {"timings", "critic"}."""
    hp, method, timings, critic = job.hp, job.method, {}, {}
    train_buffers, test_buffer = offline_buffers(job, train, test)
    steps = {"mesa": hp.meta.steps, "multitask": hp.multitask.steps}.get(method, hp.rrl.steps)
    adapts = method in ("mesa", "multitask")
    for phase, total in (("phase1", steps), ("phase2", hp.adapt.steps if adapts else 0)):
        t0 = time.perf_counter()
        with progress_bar(job, phase, total) as bar:
            callback = lambda step, metrics: bar.update(1)  # noqa: E731
            if phase == "phase1":
                mesa.phase1(method, safety, train_buffers, test_buffer, policy, hp, job.seed, callback)
            else:
                mesa.phase2(method, safety, test_buffer, policy, hp, callback, train_buffers)
        timings[phase] = time.perf_counter() - t0
        critic[f"after_{phase}"] = critic_quality(safety, heldout, policy)
    return {"timings": timings, "critic": critic}


def load_inputs(job: Job) -> tuple[list[dict], dict, gymnasium.Env, callable]:
    """(training datasets, the method's test-environment data, test env, scaling of further datasets)
    as the job's networks see them.

    D_test is cut to job.test_fraction; RRL-oracle gets its own data instead. With job.scale_inputs
    every observation, offline and online, is standardised with the statistics of that D_test, for
    every method alike (docs/design.md).
    """
    train, test = datasets.get_datasets(job.env, job.preset, job.data_root, job.test_variant, seed=DATA_SEED)
    test = datasets.head(test, job.test_fraction)
    own = test if job.method not in ORACLE_DATA_METHODS else datasets.get_oracle(
        job.env, job.preset, job.data_root, job.test_variant, seed=DATA_SEED, variant=job.oracle_variant)
    env = envs.make_env(job.env, envs.test_task(job.env, job.test_variant), **job.env_kwargs)
    if not job.scale_inputs:
        return train, own, env, lambda data: data
    mean, std = observation_statistics(job)
    scale = lambda data: datasets.scaled(data, mean, std)   # noqa: E731
    return [scale(d) for d in train], scale(own), envs.scaled_observations(env, mean, std), scale


def observation_statistics(job: Job) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and std of D_test's observations (its first test_fraction), which standardise every
    input of the job's networks; None where the job feeds raw observations."""
    if not job.scale_inputs:
        return None
    _, test = datasets.get_datasets(job.env, job.preset, job.data_root, job.test_variant, seed=DATA_SEED)
    return datasets.observation_scale(datasets.head(test, job.test_fraction))


def fresh_networks(job: Job, env: gymnasium.Env) -> tuple[SAC, Safety | None]:
    """set_seed(job.seed), then a new SAC agent and (all but Unconstrained) a new Safety for env."""
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    set_seed(job.seed)
    if job.method not in BASELINES:
        agent = SAC(obs_dim, act_dim, low, high, job.hp.sac)
        safety = None if job.method == "unconstrained" else Safety(obs_dim, act_dim, low, high, job.hp.recovery)
        return agent, safety
    safety = None                      # the baselines: Q_risk without a recovery policy, or none (RP)
    if job.method in USES_CRITIC:
        safety = Safety(obs_dim, act_dim, low, high, job.hp.recovery, recovery=False)
    agent = ConstrainedSAC(job.method, obs_dim, act_dim, low, high, job.hp.sac, job.hp.baseline, safety, job.episodes)
    return agent, safety


def cached_offline_phases(job: Job, key: str) -> dict | None:
    """The saved Phases 1-2 (phase2.pt) with this key: the run's own, or the same run's in another
    configuration folder beside it (e.g. one that changed only eps_risk or the episodes), copied in."""
    own = os.path.join(job.folder, "phase2.pt")
    siblings = sorted(glob.glob(os.path.join(os.path.dirname(job.out), "*", job.env, job.method,
                                             f"seed{job.seed}", "phase2.pt")))
    for path in [own, *siblings]:
        if os.path.exists(path):
            state = torch.load(path, weights_only=True)
            if state["key"] == key:
                if path != own:
                    os.makedirs(job.folder, exist_ok=True)
                    save_checkpoint(state, own)
                return state
    return None


def run_one(job: Job) -> dict:
    """One (env, method, seed) run; writes its folder and returns a one-line summary's numbers."""
    t_start = time.perf_counter()
    train, test, env, scale = load_inputs(job)
    agent, safety = fresh_networks(job, env)
    info = {"timings": {}, "critic": {}}
    if safety is not None:
        cache, key = os.path.join(job.folder, "phase2.pt"), job.key(phase3=False)
        state = cached_offline_phases(job, key)
        if state is not None:
            safety.load_state_dict(state["safety"])
            info = {"timings": state["timings"], "critic": state["critic"], "phase2_cached": True}
        else:
            heldout = scale(heldout_set(job.env, job.preset, job.data_root, job.test_variant))
            info = offline_phases(job, safety, agent.policy, train, test, heldout)
            os.makedirs(job.folder, exist_ok=True)
            save_checkpoint({"key": key, "safety": safety.state_dict(), **info}, cache)

    set_seed(job.seed)   # Phase 3 starts from the same random state whether Phase 2 was cached or not
    start_state = copy.deepcopy(safety.state_dict()) if safety is not None else None
    progress = Phase3Progress.start(env, safety, job.episodes, job.seed, test)
    rows, seconds_before = resume_phase3(job, env, agent, safety, progress)
    if rows:
        start_state = torch.load(checkpoint_path(job), weights_only=True)["start_state"]
    t0, every = time.perf_counter(), job.checkpoint_every or CHECKPOINT_EVERY[job.env]
    os.makedirs(job.folder, exist_ok=True)
    log = report.TrainingLog(os.path.join(job.folder, "progress.csv"), progress.env_step,
                             os.path.join(job.folder, "tensorboard") if job.tensorboard else None)
    with progress_bar(job, "phase3", job.episodes) as bar:
        bar.update(len(rows))
        for row in learn_online(env, agent, safety, job.episodes, job.seed, progress=progress, log=log,
                                log_every=20 if job.preset == "smoke" else LOG_EVERY[job.env]):
            rows.append(row)
            bar.update(1)
            bar.set_postfix(ret=f"{row['return']:.1f}", violations=sum(r["violation"] for r in rows))
            if progress.episode % every == 0 and progress.episode < job.episodes:
                save_checkpoint({"key": job.key(), "rows": rows, "start_state": start_state,
                                 "seconds": seconds_before + time.perf_counter() - t0,
                                 **phase3_checkpoint(env, agent, safety, progress)}, checkpoint_path(job))
    env.close()
    log.close()
    info["timings"]["phase3"] = seconds_before + time.perf_counter() - t0
    if safety is not None:       # the buffer's rows after the offline data: what Phase 3 visited
        visited = {k: v[len(test["rewards"]):] for k, v in progress.safety_buffer.arrays().items()}
        info["critic"].update(onpolicy_quality(safety, start_state, visited, agent.policy))
    stats = observation_statistics(job)
    save_checkpoint({"key": job.key(), "sac": agent.state_dict(),
                     "safety": safety.state_dict() if safety is not None else None,
                     "obs_scale": None if stats is None else tuple(torch.from_numpy(s) for s in stats)},
                    os.path.join(job.folder, "final.pt"))      # the trained agent (torch.load weights_only)
    info["timings"]["total"] = time.perf_counter() - t_start
    write_run(job, info, rows)
    if os.path.exists(checkpoint_path(job)) and not job.keep_checkpoint:
        os.remove(checkpoint_path(job))
    return {"job": job, "violations": sum(r["violation"] for r in rows), "return": rows[-1]["return"],
            "success": float(np.mean([r["success"] for r in rows])) if envs.HAS_SUCCESS[job.env] else np.nan,
            "seconds": info["timings"]["total"]}


def checkpoint_path(job: Job) -> str:
    return os.path.join(job.folder, "phase3.pt")


def resume_phase3(job: Job, env, agent: SAC, safety: Safety | None, progress: Phase3Progress) -> tuple[list, float]:
    """(episode rows so far, Phase-3 seconds so far) of this run's checkpoint, restored into the
    fresh objects; ([], 0) where there is none or it belongs to another configuration."""
    path = checkpoint_path(job)
    if not os.path.exists(path):
        return [], 0.0
    state = torch.load(path, weights_only=True)
    if state["key"] != job.key():
        return [], 0.0
    restore_phase3(state, env, agent, safety, progress)
    print(f"resumed {job.env}/{job.method}/seed{job.seed} at episode {progress.episode}", flush=True)
    return state["rows"], state["seconds"]


def onpolicy_quality(safety: Safety, start_state: dict, visited: dict, policy) -> dict:
    """Critic quality on the transitions Phase 3 visited: the critic it started from and the final one."""
    final = copy.deepcopy(safety.state_dict())
    scores = {"onpolicy_final": critic_quality(safety, visited, policy)}
    safety.load_state_dict(start_state)
    scores["onpolicy_start"] = critic_quality(safety, visited, policy)
    safety.load_state_dict(final)
    return scores


def versions() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__, "git_commit": commit or "unknown"}


def write_run(job: Job, info: dict, rows: list[dict]) -> None:
    """config.json and metrics.json first, episodes.csv last: its presence marks a finished run."""
    config = {"env": job.env, "method": job.method, "seed": job.seed, "preset": job.preset,
              "episodes": job.episodes, "test_variant": job.test_variant, "data_seed": DATA_SEED,
              "data_root": job.data_root, "hyperparameters": dataclasses.asdict(job.hp),
              "env_kwargs": job.env_kwargs, "test_fraction": job.test_fraction, "scale_inputs": job.scale_inputs,
              "oracle_variant": job.oracle_variant,
              "phase2_lr": job.hp.phase2_lr(job.method), "run_key": job.key(), "torch_threads":
              torch.get_num_threads(), "versions": versions(), "command": sys.argv}
    report.write_json(os.path.join(job.folder, "config.json"), config)
    report.write_json(os.path.join(job.folder, "metrics.json"), info)
    atomic_write(os.path.join(job.folder, "episodes.csv"), report.episodes_csv(rows))


def finished(job: Job) -> bool:
    """A run is finished when its episodes.csv exists and its config has the same run key."""
    try:
        with open(os.path.join(job.folder, "config.json")) as f:
            same = json.load(f)["run_key"] == job.key()
        return same and os.path.exists(os.path.join(job.folder, "episodes.csv"))
    except (OSError, ValueError, KeyError):
        return False


# ----------------------------------------------------------------------------- the sweep

def _init_worker(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the parent's to handle: no tracebacks
    torch.set_num_threads(threads)


def run_jobs(jobs: list[Job], workers: int, threads: int, backend: str = "local",
             ray_address: str | None = None) -> list[str]:
    """Run the jobs one after another, in `workers` spawned processes, or as Ray tasks; print a line
    per run. Returns one line per failed job (only Ray goes on past a failure).

    Ctrl-C stops the workers at once (KeyboardInterrupt reaches the caller); finished runs stay.
    """
    def line(r):
        j = r["job"]
        score = f"success {r['success']:.2f}" if envs.HAS_SUCCESS[j.env] else f"last return {r['return']:.1f}"
        print(f"done {j.env}/{j.method}/seed{j.seed}: {j.episodes} episodes, {r['violations']} violations, "
              f"{score}, {r['seconds']:.0f} s", flush=True)
    failures = []
    if backend == "ray":
        for job, result in ray_map(run_one, jobs, threads, ray_address, workers):
            if isinstance(result, Exception):
                failures.append(f"failed {job.env}/{job.method}/seed{job.seed}: {str(result).strip().splitlines()[-1]}")
                print(failures[-1], flush=True)
            else:
                line(result)
    elif workers <= 1:
        for job in jobs:
            line(run_one(job))
    else:
        for result in pool_map(run_one, jobs, workers, threads, ordered=False):
            line(result)
    return failures


def _call_with_threads(function, item, threads: int):
    torch.set_num_threads(threads)
    return function(item)


def ray_map(function, items: list, threads: int, address: str | None = None, local_cpus: int = 1):
    """(item, function(item)) for every item, as Ray tasks of one CPU each, yielded as they finish;
    a task that fails yields its exception and the others go on. address None starts a local Ray
    with local_cpus CPUs; else it joins that cluster, whose nodes must see this repository and the
    output folder at the same paths (a shared filesystem)."""
    import ray    # optional: requirements-ray.txt
    root = os.path.dirname(os.path.abspath(__file__))
    ray.init(address=address, num_cpus=None if address else local_cpus, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": root}}, configure_logging=False)
    task = ray.remote(num_cpus=1, max_retries=0)(_call_with_threads)
    pending = {task.remote(function, item, threads): item for item in items}
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(ref)
            try:
                yield item, ray.get(ref)
            except ray.exceptions.RayError as error:
                yield item, error
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.shutdown()


def pool_map(function, items: list, workers: int, threads: int, ordered: bool = True):
    """function(item) for every item in `workers` spawned processes of `threads` torch threads each,
    yielded in order (or as they finish). Ctrl-C terminates the workers at once."""
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (threads,), maxtasksperchild=1)
    try:
        yield from (pool.imap if ordered else pool.imap_unordered)(function, items)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    env_names = split_names(args.env, envs.ENV_NAMES, "environment", parser)
    methods = split_names(args.methods, METHODS + BASELINES, "method", parser)
    if args.methods == ["all"]:
        methods = list(METHODS)      # the paper's comparison; the baselines are asked for by name
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
    try:   # datasets before the workers start: no two processes ever generate the same file
        for env in env_names:
            datasets.get_datasets(env, args.preset, args.data_root, args.test_variant, progress=True, seed=DATA_SEED)
            heldout_set(env, args.preset, args.data_root, args.test_variant)
            if set(methods) & set(ORACLE_DATA_METHODS):
                datasets.get_oracle(env, args.preset, args.data_root, args.test_variant, True, DATA_SEED)
    except (datasets.DatasetError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")

    todo = [j for j in jobs if not finished(j)]
    for job in jobs:
        if job not in todo:
            print(f"skipped {job.env}/{job.method}/seed{job.seed}: finished ({job.folder}/episodes.csv)")
    try:
        failures = run_jobs(todo, args.workers, threads, args.backend, args.ray_address)
    except KeyboardInterrupt:
        parser.exit(130, f"interrupted: finished runs are kept under {out}/; run the same command "
                         "again to resume (finished runs are skipped, cached Phases 1-2 reused)\n")
    for env in env_names:
        env_dir = os.path.join(out, env)
        # every method with finished runs of these seeds, not only this command's: nothing drops out
        print(f"\n{report.summarise(env_dir, env, METHODS + BASELINES, seeds, envs.HAS_SUCCESS[env], args.preset)}")
        print(f"summary and figures: {env_dir}/summary.md, cumulative_violations.png, learning_curve.png")
    if failures:
        parser.exit(1, f"{len(failures)} of {len(todo)} runs failed (lines above); the same command retries them\n")


if __name__ == "__main__":
    main()
