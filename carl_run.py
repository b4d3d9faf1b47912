"""One CARL or CARL-Offline job (carl.py): the comparison's last two rows, run as experiment.run_one
runs the others, with the same folder, resumption and files.

  1. Phase 1: CARL runs PETS in the training tasks (carl.pretrain_online), checkpointed to
     pretraining.pt and resumed from it; CARL-Offline fits its model to the offline training
     datasets and D_test (carl.pretrain_offline). Either is cached in phase1.pt.
  2. Reseed, then Phase 3 in the test task (carl.learn_online), checkpointed to phase3.pt.
It writes config.json, metrics.json (no critic, so no critic scores), episodes.csv and final.pt.
"""
from __future__ import annotations

import os
import time

import numpy as np

import carl
import datasets
import envs
from common import global_rng_state, save_checkpoint, set_global_rng_state, set_seed
from experiment import CHECKPOINT_EVERY, cached_offline_phases, progress_bar
from jobspec import (DATA_SEED, PRETRAINING_ADVICE, Job, checkpoint_path, load_checkpoint, phase2_paths,
                     pretraining_path, resume_phase3, write_run)


def carl_phase1(job: Job, agent: carl.CARLAgent, train: list[dict], test: dict, bar,
                progress: carl.Pretraining | None = None) -> None:
    """CARL: PETS in the training tasks (carl.pretrain_online) from `progress`, checkpointed to
    pretraining.pt every CHECKPOINT_EVERY[env] episodes. CARL-Offline: the offline training
    datasets and D_test, and nothing else (carl.pretrain_offline)."""
    if job.method != "carl":
        carl.pretrain_offline(agent, [*train, test])
        bar.update(1)
        return
    progress = progress or carl.Pretraining.start(job.env, agent, job.seed)
    every, t0, seconds = job.checkpoint_every or CHECKPOINT_EVERY[job.env], time.perf_counter(), progress.seconds

    def after(episode: int) -> None:
        bar.update(1)
        if progress.episode % every == 0 and progress.episode <= job.hp.carl.pretrain_episodes:
            progress.seconds = seconds + time.perf_counter() - t0
            save_checkpoint({"key": job.key(phase3=False), "carl": agent.state_dict(),
                             "pretraining": progress.state_dict(), "rng": global_rng_state()}, pretraining_path(job))
    carl.pretrain_online(job.env, agent, job.seed, callback=after, progress=progress)
    progress.seconds = seconds + time.perf_counter() - t0


def resume_pretraining(job: Job, agent: carl.CARLAgent) -> carl.Pretraining | None:
    """CARL's Phase 1 so far (pretraining.pt), restored into the fresh agent; a fresh start where
    there is none or it belongs to another configuration; None for CARL-Offline."""
    if job.method != "carl":
        return None
    progress, path = carl.Pretraining.start(job.env, agent, job.seed), pretraining_path(job)
    if os.path.exists(path):
        state = load_checkpoint(path, PRETRAINING_ADVICE)
        if state["key"] == job.key(phase3=False):
            agent.load_state_dict(state["carl"])
            progress.load_state_dict(state["pretraining"])
            set_global_rng_state(state["rng"])
            print(f"resumed {job.env}/{job.method}/seed{job.seed} pretraining at episode {progress.episode}",
                  flush=True)
    return progress


def cached_carl_phase1(job: Job, agent: carl.CARLAgent, train: list[dict], test: dict) -> dict:
    """Phase 1 of a CARL run: loaded from phase1.pt (its own or a sibling configuration's) where one
    with this run's Phase-1 key exists, else run (resuming pretraining.pt) and saved there.
    Returns metrics.json's timings."""
    key = job.key(phase3=False)
    state = cached_offline_phases(job, key)
    if state is not None:
        agent.load_state_dict(state["carl"])
        return {"timings": state["timings"], "phase1_cached": True}
    t0 = time.perf_counter()
    os.makedirs(job.folder, exist_ok=True)
    progress = resume_pretraining(job, agent)
    total, done = (job.hp.carl.pretrain_episodes + 1, progress.episode) if progress is not None else (1, 0)
    with progress_bar(job, "phase1", total, initial=done) as bar:
        carl_phase1(job, agent, train, test, bar, progress)
    timings = {"phase1": progress.seconds if progress is not None else time.perf_counter() - t0}
    save_checkpoint({"key": key, "carl": agent.state_dict(), "timings": timings}, phase2_paths(job)[0])
    if os.path.exists(pretraining_path(job)):
        os.remove(pretraining_path(job))
    return {"timings": timings}


def run_carl(job: Job) -> dict:
    """One CARL or CARL-Offline run (carl.py): Phase 1 (cached in phase1.pt), then Phase 3 in the
    test task, checkpointed to phase3.pt every CHECKPOINT_EVERY[env] episodes and resumed from it;
    the same episodes.csv, config.json and metrics.json as the other methods (no critic, so no
    critic scores). Raw observations: the ensemble standardises its own inputs."""
    t_start = time.perf_counter()
    train, test = datasets.get_datasets(job.env, job.preset, job.data_root, job.test_variant, seed=DATA_SEED)
    test = datasets.head(test, job.test_fraction)
    task = envs.test_task(job.env, job.test_variant)
    env = envs.make_env(job.env, task, **job.env_kwargs)
    set_seed(job.seed)
    agent = carl.CARLAgent(env.observation_space.shape[0], env.action_space.shape[0], env.action_space.low,
                           env.action_space.high, job.hp.carl, carl.reward_function(job.env, task), job.seed,
                           carl.ANGLES.get(job.env, ()))
    info = cached_carl_phase1(job, agent, train, test)
    set_seed(job.seed)   # Phase 3 starts from the same random state whether Phase 1 was cached or not
    progress = carl.Adaptation.start(env, job.episodes, job.seed)
    rows, seconds_before = resume_phase3(job, lambda state: carl.restore_phase3(state, env, agent, progress))
    t0, every = time.perf_counter(), job.checkpoint_every or CHECKPOINT_EVERY[job.env]
    with progress_bar(job, "phase3", job.episodes, initial=len(rows)) as bar:
        for row in carl.learn_online(env, agent, job.episodes, job.seed,
                                     test if job.method == "carl_offline" else None, progress):
            rows.append(row)
            bar.update(1)
            bar.set_postfix(ret=f"{row['return']:.1f}", violations=sum(r["violation"] for r in rows))
            if progress.episode % every == 0 and progress.episode < job.episodes:
                save_checkpoint({"key": job.key(), "rows": rows, "seconds": seconds_before + time.perf_counter() - t0,
                                 **carl.phase3_checkpoint(env, agent, progress)}, checkpoint_path(job))
    env.close()
    info["timings"]["phase3"] = seconds_before + time.perf_counter() - t0
    save_checkpoint({"key": job.key(), "carl": agent.state_dict()}, os.path.join(job.folder, "final.pt"))
    info["timings"]["total"] = seconds_before + time.perf_counter() - t_start   # with Phase 3 before a resumption
    write_run(job, {**info, "critic": {}}, rows)
    if os.path.exists(checkpoint_path(job)) and not job.keep_checkpoint:
        os.remove(checkpoint_path(job))
    return {"job": job, "violations": sum(r["violation"] for r in rows), "return": rows[-1]["return"],
            "success": float(np.mean([r["success"] for r in rows])) if envs.HAS_SUCCESS[job.env] else np.nan,
            "seconds": info["timings"]["total"]}
