"""Hyperparameter presets: the paper's, `quick` and `smoke`, and the MESA variants (README: Running).

A job's hyperparameters are built in three layers (job_config): the preset's (preset_config: the
paper's, mesa.paper_hyperparameters, scaled down for quick and smoke), then the MESA variant's
changes (variant_changes: MESA as its authors' code ran it, docs/mesa_variants.md), then the
command line's options, which win. Every change is a {"group.field": value} pair on one of the
config dataclasses in GROUPS, and apply() re-validates the result.

`paper` is the paper's and the authors' settings (MESA paper Tables 1-4 and 5; Phase-3 episodes from
the authors' command lines); `quick` keeps them but with 2 x 128 networks, batches of 128 and fewer
Phase-3 episodes on Cartpole and the runners; `smoke` runs every phase in seconds, for tests.
"""
from __future__ import annotations

import dataclasses
import inspect
import re

import carl
import mesa
from baselines import BaselineConfig
from carl import CARLConfig
from mesa import FitConfig, Hyperparameters, MetaConfig, MultiTaskConfig
from recovery_rl import RecoveryConfig
from sac import SACConfig

MUJOCO = ("halfcheetah", "ant")

# Phase-3 episodes of the paper preset: the authors' command lines (mesa_exps.txt; Maze:
# Recovery RL's scripts/maze.sh). Quick: the same on the point envs, fewer on the others.
PAPER_EPISODES = {"navigation1": 300, "navigation2": 300, "maze": 500, "cartpole": 400,
                  "halfcheetah": 500, "ant": 1000}
QUICK_EPISODES = {"navigation1": 300, "navigation2": 300, "maze": 500, "cartpole": 200,
                  "halfcheetah": 60, "ant": 60}

# Preset changes to the paper's hyperparameters, as {"group.field": value}. Quick: 2 x 128
# networks and batches of 128 for every method alike, and fewer Phase-3 episodes; every Phase-1 and
# Phase-2 step count stays the paper's (docs/design.md, "Each method's Phase-1 budget"). No preset
# gives one method fewer Phase-1 steps than another.
QUICK = {"sac.hidden": (128, 128), "recovery.hidden": (128, 128), "sac.batch_size": 128,
         "recovery.batch_size": 128, "meta.batch_size": 128, "multitask.batch_size": 128,
         "rrl.batch_size": 128}
SMOKE = {"sac.hidden": (16, 16), "recovery.hidden": (16, 16), "sac.batch_size": 16,
         "recovery.batch_size": 16, "meta.batch_size": 16, "multitask.batch_size": 16,
         "rrl.batch_size": 16, "adapt.batch_size": 16, "sac.start_steps": 20, "meta.steps": 3,
         "meta.tasks_per_step": 2, "multitask.steps": 3, "rrl.steps": 3, "adapt.steps": 3}

# CARL's planner at CARL's sizes costs 2 s (HalfCheetah) to 17 s (Cartpole) per environment step on
# one core here (docs/carl.md, "Cost"). Quick plans with a quarter of the candidates, half the
# particles and three of the five CEM iterations, through a 2 x 200 ensemble (the first, a middle
# and the last of CARL's weight decays); it keeps CARL's horizon, ensemble size, epochs and
# pretraining episodes. Smoke: seconds.
QUICK_CARL = {"carl.population": 100, "carl.elites": 10, "carl.iterations": 3, "carl.particles": 10,
              "carl.hidden": (200, 200)}
SMOKE_CARL = {"carl.population": 8, "carl.elites": 2, "carl.iterations": 1, "carl.particles": 2,
              "carl.ensemble": 2, "carl.hidden": (8, 8), "carl.weight_decays": (1e-4, 1e-4, 1e-4),
              "carl.horizon": 3, "carl.epochs": 1, "carl.pretrain_episodes": 1}


def quick_carl(env: str) -> dict:
    """QUICK_CARL with three of CARL's weight decays for env (one per layer of the 2 x 200 model)."""
    decays = carl.paper_config(env).weight_decays
    return {**QUICK_CARL, "carl.weight_decays": (decays[0], decays[len(decays) // 2], decays[-1])}


# --mesa-variant: "paper" (the default) or "authors", MESA as its authors' code ran it
# (docs/mesa_variants.md): six changes to MESA, among them its 3 x 100 networks and its critic of
# WLinear layers (MESA's alone, as in that code), and Multi-Task's Phase 2 on training + test data
# where their main.py does that.
MESA_VARIANTS = ("paper", "authors")
AUTHORS_MESA = {"meta.learn_inner_lr": True, "meta.outer_grad_clip": 40.0, "meta.pi_rec_lr": 1e-4,
                "meta.target": "current", "recovery.hidden": (100, 100, 100), "recovery.layers": "wlinear"}
AUTHORS_MULTITASK_ENVS = ("cartpole", "halfcheetah", "ant")
# Fields added after runs were made: left out of the run key at their defaults, so older run keys
# (finished runs, cached Phases 1-2) stay valid.
LATER_FIELDS = {"meta": ("learn_inner_lr", "inner_lr_lr", "outer_grad_clip", "pi_rec_lr", "target"),
                "multitask": ("phase2_with_train",), "recovery": ("layers", "heads")}


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
    "carl": (CARLConfig, "CARL and CARL-Offline (carl.py): the ensemble, the CEM planner, the caution"),
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
    changes = {**SMOKE, **SMOKE_CARL} if preset == "smoke" else {**QUICK, **quick_carl(env)}
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
