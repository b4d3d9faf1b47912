"""One job of the comparison: MESA's Algorithm 1 (paper section 5) for one (env, method, seed).

  1. set_seed(seed); a fresh SAC agent; its policy at initialisation gives the Bellman targets of
     Phases 1-2 (recovery_rl docstring).
  2. Phase 1 (mesa.phase1) on the training datasets (MESA, Multi-Task), D_test (RRL) or the
     oracle's test-environment data (RRL-oracle), then Phase 2 (mesa.phase2) on D_test. The safety
     critic is scored after each phase on a held-out collection of D_test's generator (loss
     against the Bellman targets, and AUROC against critic_scores.danger_labels). Both phases are cached
     in phase2.pt.
  3. Reseed, then Phase 3 (recovery_rl.learn_online) in the test environment. The safety buffer
     starts as the method's test-environment data (D_test; RRL-oracle: its own). Afterwards the
     critic Phase 3 started from and the final one are scored on the transitions Phase 3 visited.
A job (jobspec.Job) writes <out>/<env>/<method>/seed<k>/{config.json, metrics.json, phase2.pt,
final.pt, progress.csv, episodes.csv}; episodes.csv is written last and marks a finished run
(jobspec.finished). MESA's meta-learning checkpoints to pretraining.pt and Phase 3 to phase3.pt every
few minutes, and an interrupted job resumes from them. CARL and CARL-Offline (carl.py) run through
carl_run.run_carl instead. run.py builds the jobs from its command line and runs them in parallel.
"""
from __future__ import annotations

import copy
import os
import sys
import time

import gymnasium
import numpy as np
import torch
from tqdm import tqdm

import datasets
import envs
import mesa
import report
from baselines import BASELINES, USES_CRITIC, ConstrainedSAC
from common import global_rng_state, save_checkpoint, set_global_rng_state, set_seed
from critic_scores import critic_quality, onpolicy_quality
from jobspec import (DATA_SEED, PHASE2_ADVICE, PHASE3_ADVICE, PRETRAINING_ADVICE, Job, checkpoint_path, load_checkpoint,
                  phase2_paths, pretraining_path, resume_phase3, write_run)
from recovery_rl import Phase3Progress, Safety, learn_online, phase3_checkpoint, restore_phase3
from replay_buffer import ReplayBuffer
from sac import SAC

HELDOUT_SEED = 998            # D_test is file seed 999 (datasets.py): a different random collection
HELDOUT_SIZE = {"smoke": 200, "quick": 5000, "paper": 10000}
# Phase-3 checkpoints (phase3.pt) every this many episodes: a few minutes of a run apart, so that
# writing one (the buffers dominate: about 200 MB for a paper-size HalfCheetah run) costs under 1%.
CHECKPOINT_EVERY = {"navigation1": 50, "navigation2": 50, "maze": 50, "cartpole": 20, "halfcheetah": 5, "ant": 5}
# MESA's Phase 1 checkpoints to pretraining.pt every this many meta-steps (0.5-2 minutes apart).
META_CHECKPOINT_EVERY = 500

# Methods pretrained on the RRL-oracle's 10-20K test-environment transitions instead of D_test:
# RRL-oracle, and Recovery RL's comparisons, which run in Recovery RL's setting.
ORACLE_DATA_METHODS = ("rrl_oracle", *BASELINES)

# progress.csv gets a row every this many Phase-3 steps (a few hundred rows per run at most).
LOG_EVERY = {"navigation1": 1000, "navigation2": 1000, "maze": 1000, "cartpole": 1000, "halfcheetah": 5000, "ant": 5000}


def heldout_set(env: str, preset: str, root: str, variant: str) -> dict:
    """A collection of D_test's generator in the test environment that D_test does not hold (cached)."""
    n = max(HELDOUT_SIZE[preset], datasets.PRESET_SPECS[preset][env].n_test)
    return datasets.get_heldout(env, preset, root, variant, n, HELDOUT_SEED, DATA_SEED)


class ProgressLines:
    """Progress as periodic one-line reports (for parallel workers, where bars would interleave):
    run, phase, count, speed and ETA every `every` seconds and when the phase ends."""

    def __init__(self, label: str, total: int, every: float = 30.0, initial: int = 0):
        self.label, self.total, self.every, self.postfix = label, total, every, ""
        self.count = self.initial = initial     # a resumed run starts at its checkpoint's count
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
        rate = (self.count - self.initial) / elapsed if elapsed > 0 else 0.0     # this process's speed
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.label} {self.count}/{self.total}, {rate:.2f}/s, {elapsed / 60:.1f} min, "
              f"ETA {eta / 60:.1f} min{extra}", file=sys.stderr, flush=True)


def progress_bar(job: Job, phase: str, total: int, initial: int = 0):
    """A tqdm bar (one worker), periodic lines (several workers) or nothing (--no-progress); a
    resumed phase starts at `initial`, and its speed and ETA count only what this process did."""
    label = f"{job.env}/{job.method}/seed{job.seed} {phase}" + (f" ({job.position})" if job.position else "")
    if job.progress == "lines":
        return ProgressLines(label, total, initial=initial)
    return tqdm(total=total, initial=initial, desc=label, leave=False, disable=job.progress != "bars" or total == 0,
                mininterval=0.5, file=sys.stderr)


def offline_buffers(job: Job, train: list, test: dict) -> tuple[list[ReplayBuffer], ReplayBuffer]:
    """Replay buffers of the training datasets (MESA and Multi-Task only) and of the method's
    test-environment data (D_test; RRL-oracle's own)."""
    train_buffers = [ReplayBuffer.from_arrays(d, seed=job.seed + 1 + i) for i, d in enumerate(train)] \
        if job.method in ("mesa", "multitask") else []
    return train_buffers, ReplayBuffer.from_arrays(test, seed=job.seed)


def offline_phases(job: Job, safety: Safety, policy, train: list, test: dict, heldout: dict) -> dict:
    """Phases 1 and 2 with the critic scored after each; returns {"timings", "critic",
    "earlier_seconds" (Phase-1 time of the processes before a resumption)}. MESA's
    meta-learning resumes from pretraining.pt and checkpoints to it (resume_meta_learning)."""
    hp, method, timings, critic = job.hp, job.method, {}, {}
    train_buffers, test_buffer = offline_buffers(job, train, test)
    steps = {"mesa": hp.meta.steps, "multitask": hp.multitask.steps}.get(method, hp.rrl.steps)
    adapts = method in ("mesa", "multitask")
    meta = resume_meta_learning(job, safety, [*train_buffers, test_buffer])
    earlier = meta.seconds if meta is not None else 0.0      # Phase-1 seconds of the processes before
    for phase, total in (("phase1", steps), ("phase2", hp.adapt.steps if adapts else 0)):
        t0, done = time.perf_counter(), meta.step if meta is not None and phase == "phase1" else 0
        with progress_bar(job, phase, total, initial=done) as bar:
            callback = lambda step, metrics: bar.update(1)  # noqa: E731
            if phase == "phase1":
                if meta is not None:
                    callback = meta_checkpoints(job, safety, meta, [*train_buffers, test_buffer], bar)
                mesa.phase1(method, safety, train_buffers, test_buffer, policy, hp, job.seed, callback, meta)
            else:
                mesa.phase2(method, safety, test_buffer, policy, hp, callback, train_buffers)
        timings[phase] = time.perf_counter() - t0 + (earlier if phase == "phase1" else 0.0)
        critic[f"after_{phase}"] = critic_quality(safety, heldout, policy)
        critic[f"d_test_after_{phase}"] = critic_quality(safety, test, policy)
    if os.path.exists(pretraining_path(job)):    # Phase 1 is done: its caller saves it (phase2.pt)
        os.remove(pretraining_path(job))
    return {"timings": timings, "critic": critic, "earlier_seconds": earlier}


def meta_checkpoints(job: Job, safety: Safety, meta: mesa.MetaLearning, buffers: list[ReplayBuffer], bar):
    """MESA's Phase-1 callback: advances the bar, and every META_CHECKPOINT_EVERY meta-steps saves
    pretraining.pt (Safety, the meta-learning's state, the buffers' and the global random states)."""
    t0, seconds = time.perf_counter(), meta.seconds

    def after(step: int, metrics: dict) -> None:
        bar.update(1)
        if meta.step % META_CHECKPOINT_EVERY == 0 and meta.step < job.hp.meta.steps:
            meta.seconds = seconds + time.perf_counter() - t0
            save_checkpoint({"key": job.key(phase3=False), "safety": safety.state_dict(),
                             "meta_learning": meta.state_dict(), "rng": global_rng_state(),
                             "buffer_rngs": [b.rng.bit_generator.state for b in buffers]}, pretraining_path(job))
    return after


def resume_meta_learning(job: Job, safety: Safety, buffers: list[ReplayBuffer]) -> mesa.MetaLearning | None:
    """MESA's Phase 1 so far (pretraining.pt), restored into the fresh Safety and buffers; a fresh
    start where there is none or it belongs to another configuration; None for the other methods
    (their Phase 1, plain Adam steps, takes minutes and restarts)."""
    if job.method != "mesa":
        return None
    meta, path = mesa.MetaLearning.start(safety, job.hp.meta, job.seed), pretraining_path(job)
    if os.path.exists(path):
        state = load_checkpoint(path, PRETRAINING_ADVICE)
        if state["key"] == job.key(phase3=False):
            safety.load_state_dict(state["safety"])
            meta.load_state_dict(state["meta_learning"])
            for buffer, rng in zip(buffers, state["buffer_rngs"], strict=True):
                buffer.rng.bit_generator.state = rng
            set_global_rng_state(state["rng"])
            print(f"resumed {job.env}/{job.method}/seed{job.seed} Phase 1 at meta-step {meta.step}", flush=True)
    return meta


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
    own, *_ = paths = phase2_paths(job)
    for path in paths:
        if os.path.exists(path):
            state = load_checkpoint(path, PHASE2_ADVICE)
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
    info, phase1_earlier = {"timings": {}, "critic": {}}, 0.0
    if safety is not None:
        cache, key = os.path.join(job.folder, "phase2.pt"), job.key(phase3=False)
        state = cached_offline_phases(job, key)
        if state is not None:
            safety.load_state_dict(state["safety"])
            safety.tau_risk = job.hp.phase2_tau(job.method)    # as mesa.phase2 leaves it for Phase 3
            info = {"timings": state["timings"], "critic": state["critic"], "phase2_cached": True}
        else:
            heldout = scale(heldout_set(job.env, job.preset, job.data_root, job.test_variant))
            info = offline_phases(job, safety, agent.policy, train, test, heldout)
            phase1_earlier = info.pop("earlier_seconds")
            os.makedirs(job.folder, exist_ok=True)
            save_checkpoint({"key": key, "safety": safety.state_dict(), **info}, cache)

    set_seed(job.seed)   # Phase 3 starts from the same random state whether Phase 2 was cached or not
    start_state = copy.deepcopy(safety.state_dict()) if safety is not None else None
    progress = Phase3Progress.start(env, safety, job.episodes, job.seed, test)
    rows, seconds_before = resume_phase3(job, lambda state: restore_phase3(state, env, agent, safety, progress))
    if rows:
        start_state = load_checkpoint(checkpoint_path(job), PHASE3_ADVICE)["start_state"]
    t0, every = time.perf_counter(), job.checkpoint_every or CHECKPOINT_EVERY[job.env]
    os.makedirs(job.folder, exist_ok=True)
    log = report.TrainingLog(os.path.join(job.folder, "progress.csv"), progress.env_step,
                             os.path.join(job.folder, "tensorboard") if job.tensorboard else None)
    with progress_bar(job, "phase3", job.episodes, initial=len(rows)) as bar:
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
        info["critic"].update(onpolicy_quality(safety, start_state, visited, agent.policy, test))
    stats = observation_statistics(job)
    save_checkpoint({"key": job.key(), "sac": agent.state_dict(),
                     "safety": safety.state_dict() if safety is not None else None,
                     "obs_scale": None if stats is None else tuple(torch.from_numpy(s) for s in stats)},
                    os.path.join(job.folder, "final.pt"))      # the trained agent (torch.load weights_only)
    info["timings"]["total"] = phase1_earlier + seconds_before + time.perf_counter() - t_start  # with time before resumptions
    write_run(job, info, rows)
    if os.path.exists(checkpoint_path(job)) and not job.keep_checkpoint:
        os.remove(checkpoint_path(job))
    return {"job": job, "violations": sum(r["violation"] for r in rows), "return": rows[-1]["return"],
            "success": float(np.mean([r["success"] for r in rows])) if envs.HAS_SUCCESS[job.env] else np.nan,
            "seconds": info["timings"]["total"]}

