"""How long runs take: the per-run times measured for the quick preset, and run.py's estimate of a sweep.

run.py prints, before it starts, how many runs it will do and about how long they take. A run's
seconds are its Phase-1 steps times seconds per step plus its Phase-3 episodes times seconds per
episode (CARL's "steps" are its pretraining episodes, CARL-Offline's Phase 1 is one), at the speed of this machine's finished runs of the same env, method and preset (their
metrics.json "timings") where there are some, else at QUICK_SECONDS's (quick only); a sweep's wall
time is the runs started in order, each on the first free worker.
"""
from __future__ import annotations

import dataclasses
import glob
import heapq
import json
import os

import numpy as np

from jobspec import Job

# Seconds of one quick run, two jobs at a time on a 2-core machine, one torch thread each:
# (per Phase-1 step, per Phase-3 episode), medians over the 3 seeds of the committed runs in
# results/<env>/<method>/seed*/metrics.json ("timings"; some ran beside the tests, so these lean high).
# estimate_seconds prefers this machine's own finished runs (their metrics.json).
# CARL in quick, one torch thread (docs/carl.md, "Cost"): carl (per pretraining episode, per Phase-3
# episode), carl_offline (its whole Phase 1, per Phase-3 episode). No CARL run has finished yet, so
# these are built from measured parts: the planner's seconds per environment step (bench.py
# --quick: Cartpole 0.145 s, HalfCheetah 0.062 s, with two other jobs on the 2 cores) times
# full-length episodes (200, 1000 steps: an upper bound, since Phase-3 episodes end at a
# violation), plus the ensemble updates of the refits at 10 ms each (measured beside the planner).
# Cartpole: pretraining 200 x 0.145 s + 5 epochs over 5K transitions on average; Phase 3 the same
# over 20K; CARL-Offline's Phase 1 is 5 epochs over 401K transitions (7.8K updates), its Phase 3
# adds D_test's 1K. HalfCheetah: pretraining 1000 x 0.062 s + 10 epochs over 50K on average;
# Phase 3 10 epochs over 30K; CARL-Offline's Phase 1 is 10 epochs over 1.64M (64K updates), its
# Phase 3 adds D_test's 40K.
CARL_QUICK_SECONDS = {
    "cartpole": {"carl": (30.0, 33.0), "carl_offline": (80.0, 33.0)},
    "halfcheetah": {"carl": (82.0, 74.0), "carl_offline": (640.0, 90.0)},
}
QUICK_SECONDS = {
    "navigation1": {"unconstrained": (0, 0.09), "rrl": (0.0050, 0.97), "multitask": (0.0046, 1.17),
                    "mesa": (0.050, 1.44), "rrl_oracle": (0.0049, 0.88)},
    "navigation2": {"unconstrained": (0, 0.30), "rrl": (0.0023, 1.32), "multitask": (0.0035, 1.43),
                    "mesa": (0.029, 0.80), "rrl_oracle": (0.0046, 0.71)},
    "maze": {"unconstrained": (0, 0.04), "rrl": (0.0038, 0.28), "multitask": (0.0027, 0.38),
             "mesa": (0.021, 0.08), "rrl_oracle": (0.0028, 0.30)},
    "cartpole": {"unconstrained": (0, 1.05), "rrl": (0.0060, 2.22), "multitask": (0.0073, 2.29),
                 "mesa": (0.035, 0.50), "rrl_oracle": (0.0073, 2.10)},
    "halfcheetah": {"unconstrained": (0, 3.59), "rrl": (0.0023, 5.99), "multitask": (0.0034, 5.04),
                    "mesa": (0.017, 5.36), "rrl_oracle": (0.0022, 5.22)},
    "ant": {"unconstrained": (0, 2.20), "rrl": (0.0022, 4.24), "multitask": (0.0035, 4.14),
            "mesa": (0.018, 3.78), "rrl_oracle": (0.0021, 3.77)},
}
QUICK_SECONDS["ant"].update(CARL_QUICK_SECONDS["halfcheetah"])   # Ant plans with HalfCheetah's CARL settings
QUICK_SECONDS.update({env: {**QUICK_SECONDS[env], **rates} for env, rates in CARL_QUICK_SECONDS.items()})


def phase1_count(method: str, hp: dict) -> int:
    """Phase-1 steps of a method with hyperparameters hp (as config.json records them): 0 for
    Unconstrained SAC, which has no Phase 1; CARL's pretraining episodes, the random one included;
    1 for CARL-Offline, whose Phase 1 is one fit."""
    if method == "unconstrained":
        return 0
    if method == "carl":
        return hp["carl"]["pretrain_episodes"] + 1
    if method == "carl_offline":
        return 1
    return {"mesa": hp["meta"]["steps"], "multitask": hp["multitask"]["steps"]}.get(method, hp["rrl"]["steps"])


def phase1_steps(job: Job) -> int:
    """Phase-1 steps of the job's method (phase1_count)."""
    return phase1_count(job.method, dataclasses.asdict(job.hp))


def measured_rates(job: Job) -> tuple[float, float] | None:
    """(seconds per Phase-1 step, per Phase-3 episode) of this machine's finished runs of the job's
    env, method and preset under --out (any configuration folder, any seed); None where there are none."""
    step_rates, episode_rates = [], []
    pattern = os.path.join(os.path.dirname(job.out), "*", job.env, job.method, "seed*", "metrics.json")
    for path in glob.glob(pattern):
        try:
            with open(path) as f:
                metrics = json.load(f)
            with open(os.path.join(os.path.dirname(path), "config.json")) as f:
                config = json.load(f)
            if config["preset"] != job.preset:
                continue
            timings = metrics["timings"]
            episode_rates.append(timings["phase3"] / config["episodes"])
            steps = phase1_count(job.method, config["hyperparameters"])
            cached = metrics.get("phase2_cached") or metrics.get("phase1_cached")
            if "phase1" in timings and not cached and steps:
                step_rates.append((timings["phase1"] + timings.get("phase2", 0.0)) / steps)
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            continue     # an unfinished or damaged run says nothing about the time
    if not episode_rates:
        return None
    return (float(np.median(step_rates)) if step_rates else 0.0), float(np.median(episode_rates))


def estimate_seconds(job: Job) -> float | None:
    """About how many seconds the job takes: at the speed of this machine's finished runs of its env,
    method and preset, else of QUICK_SECONDS (quick only); None where neither knows."""
    rates = measured_rates(job)
    if rates is None and job.preset == "quick":
        rates = QUICK_SECONDS.get(job.env, {}).get(job.method)
    if rates is None:
        return None
    per_step, per_episode = rates
    return per_step * phase1_steps(job) + per_episode * job.episodes


def schedule_seconds(seconds: list[float], workers: int) -> float:
    """Wall time of jobs taking these seconds, started in this order, each on the first free worker."""
    free = [0.0] * max(1, workers)
    for s in seconds:
        heapq.heapreplace(free, free[0] + s)
    return max(free)


def duration(seconds: float) -> str:
    """'under a minute', 'about 12 minutes', 'about 2 h 10 min'."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 90:
        return f"about {minutes} minute{'s' * (minutes > 1)}"
    hours, rest = divmod(10 * round(minutes / 10), 60)
    return f"about {hours} h {rest} min"


def longest_first(jobs: list[Job]) -> list[Job]:
    """The jobs seed by seed as given (an interruption leaves every method with as many seeds), the
    longest of each seed first, so that the workers finish together."""
    group = {}
    for j in jobs:
        group.setdefault((j.env, j.seed), len(group))
    return sorted(jobs, key=lambda j: (group[(j.env, j.seed)], -(estimate_seconds(j) or 0.0)))
