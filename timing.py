"""How long runs take: the per-run times measured for the quick preset, and run.py's estimate of a sweep.

run.py prints, before it starts, how many runs it will do and about how long they take. A run's
seconds are its Phase-1 steps times seconds per step plus its Phase-3 episodes times seconds per
episode, at the speed of this machine's finished runs of the same env, method and preset (their
metrics.json "timings") where there are some, else at QUICK_SECONDS's (quick only); a sweep's wall
time is the runs started in order, each on the first free worker.
"""
from __future__ import annotations

import glob
import heapq
import json
import os

import numpy as np

from experiment import Job

# Seconds of one quick run, two jobs at a time on a 2-core machine, one torch thread each:
# (per Phase-1 step, per Phase-3 episode), medians over the 3 seeds of the committed runs in
# results/<env>/<method>/seed*/metrics.json ("timings"; some ran beside the tests, so these lean high).
# estimate_seconds prefers this machine's own finished runs (their metrics.json).
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


def phase1_steps(job: Job) -> int:
    """Phase-1 steps of the job's method (0 for Unconstrained SAC, which has no Phase 1)."""
    if job.method == "unconstrained":
        return 0
    return {"mesa": job.hp.meta.steps, "multitask": job.hp.multitask.steps}.get(job.method, job.hp.rrl.steps)


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
            hp = config["hyperparameters"]
            steps = {"mesa": hp["meta"]["steps"], "multitask": hp["multitask"]["steps"]}.get(job.method,
                                                                                          hp["rrl"]["steps"])
            if "phase1" in timings and not metrics.get("phase2_cached") and steps:
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
