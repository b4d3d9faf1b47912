"""One job of the comparison: MESA's Algorithm 1 (paper section 5) for one (env, method, seed).

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
A job writes <out>/<env>/<method>/seed<k>/{config.json, metrics.json, phase2.pt, final.pt,
progress.csv, episodes.csv}; episodes.csv is written last and marks a finished run (finished()).
Phase 3 checkpoints to phase3.pt every few minutes, and an interrupted job resumes from it.
run.py builds the jobs from its command line and runs them in parallel.
"""
from __future__ import annotations

import copy
import dataclasses
import glob
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import gymnasium
import mujoco
import numpy as np
import torch
from tqdm import tqdm

import carl
import datasets
import envs
import mesa
import report
from baselines import BASELINES, USES_CRITIC, ConstrainedSAC
from mesa import Hyperparameters
from presets import LATER_FIELDS
from recovery_rl import Phase3Progress, Safety, learn_online, phase3_checkpoint, restore_phase3, safety_critic_loss
from sac import SAC, ReplayBuffer, atomic_write, global_rng_state, save_checkpoint, set_global_rng_state, set_seed

DATA_SEED = 0                 # one set of datasets for every run seed (datasets.get_datasets(seed=0))
HELDOUT_SEED = 998            # D_test is file seed 999 (datasets.py): a different random collection
HELDOUT_SIZE = {"smoke": 200, "quick": 5000, "paper": 10000}
# Phase-3 checkpoints (phase3.pt) every this many episodes: a few minutes of a run apart, so that
# writing one (the buffers dominate: about 200 MB for a paper-size HalfCheetah run) costs under 1%.
CHECKPOINT_EVERY = {"navigation1": 50, "navigation2": 50, "maze": 50, "cartpole": 20, "halfcheetah": 5, "ant": 5}

# Methods pretrained on the RRL-oracle's 10-20K test-environment transitions instead of D_test:
# RRL-oracle, and Recovery RL's comparisons, which run in Recovery RL's setting.
ORACLE_DATA_METHODS = ("rrl_oracle", *BASELINES)

# progress.csv gets a row every this many Phase-3 steps (a few hundred rows per run at most).
LOG_EVERY = {"navigation1": 1000, "navigation2": 1000, "maze": 1000, "cartpole": 1000, "halfcheetah": 5000, "ant": 5000}


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
    position: str = ""           # e.g. "run 3 of 10": shown in its progress lines; not part of the run

    @property
    def folder(self) -> str:
        return os.path.join(self.out, self.env, self.method, f"seed{self.seed}")

    def key(self, phase3: bool = True) -> str:
        """Hash of what the result depends on; phase3=False: only what Phases 1-2 depend on."""
        return run_key(self.key_fields(), phase3)

    def key_fields(self) -> dict:
        """What run_key hashes, as config.json records it (finished() rebuilds it from there)."""
        return {"env": self.env, "method": self.method, "seed": self.seed, "preset": self.preset,
                "test_variant": self.test_variant, "data_seed": DATA_SEED, "hp": dataclasses.asdict(self.hp),
                "test_fraction": self.test_fraction, "scale_inputs": self.scale_inputs, "episodes": self.episodes,
                "env_kwargs": self.env_kwargs, "oracle_variant": self.oracle_variant}


# The configuration groups a method never reads, left out of its run key: changing one method's
# settings (e.g. quick's MESA meta-steps) leaves the other methods' runs valid. The baselines keep
# every group (mesa.phase1 / phase2 and experiment.fresh_networks say who reads what); CARL reads
# its own group alone (run_carl).
NOT_CARL = ("sac", "recovery", "meta", "multitask", "rrl", "adapt", "baseline")
UNREAD_GROUPS = {"unconstrained": ("recovery", "meta", "multitask", "rrl", "adapt"),
                 "rrl": ("meta", "multitask"), "rrl_oracle": ("meta", "multitask"),
                 "multitask": ("meta", "rrl"), "mesa": ("multitask", "rrl"),
                 **{method: NOT_CARL for method in carl.CARL_METHODS}}
# CARL's settings that only Phase 3's caution reads (pretraining plans on the plain mean), left out
# of its Phase-1 key: CARL (Reward) and CARL (State) share one pretrained ensemble.
CARL_PHASE3_ONLY = ("risk", "catastrophe_penalty", "catastrophe_threshold", "percentile")
HP_GROUPS = {f.name: type(getattr(Hyperparameters(), f.name)) for f in dataclasses.fields(Hyperparameters)}


def run_key(fields: dict, phase3: bool = True) -> str:
    """The run key of Job.key_fields() (or of a config.json's record of them): a hash of the
    configuration groups the method reads, where fields added after runs existed (LATER_FIELDS)
    count only away from their defaults, as do env_kwargs and the oracle variant."""
    hp = copy.deepcopy(fields["hp"])
    method = fields["method"]
    for group in UNREAD_GROUPS.get(method, ()):
        hp.pop(group, None)
    for group, names in LATER_FIELDS.items():
        if group in hp:
            defaults = dataclasses.asdict(HP_GROUPS[group]())
            for name in names:
                if name in hp[group] and hp[group][name] == defaults[name]:
                    del hp[group][name]
    if method not in BASELINES:     # absent: the other methods' keys stay as they were
        hp.pop("baseline", None)
    if method not in carl.CARL_METHODS:
        hp.pop("carl", None)
    if method != "mesa" and "meta" in hp:     # MESA's alone (mesa.Hyperparameters.phase2_tau)
        hp["meta"].pop("adapted_tau_risk", None)
    if not phase3:   # Phases 1-2 see SAC only through the initial policy's network shape,
        if "sac" in hp:                                  # and never filter, so never use eps_risk
            hp["sac"] = {"hidden": hp["sac"]["hidden"]}
        if "recovery" in hp:
            hp["recovery"] = {k: v for k, v in hp["recovery"].items() if k != "eps_risk"}
        if "carl" in hp:
            hp["carl"] = {k: v for k, v in hp["carl"].items() if k not in CARL_PHASE3_ONLY}
    what = {"env": fields["env"], "method": method, "seed": fields["seed"], "preset": fields["preset"],
            "test_variant": fields["test_variant"], "data_seed": fields["data_seed"], "hp": hp,
            "test_fraction": fields["test_fraction"], "scale_inputs": fields["scale_inputs"],
            "episodes": fields["episodes"] if phase3 else None}
    env_kwargs, oracle_variant = fields.get("env_kwargs") or {}, fields.get("oracle_variant", "mesa")
    if env_kwargs or oracle_variant != "mesa":   # absent keys keep older run keys valid
        what.update(env_kwargs=env_kwargs, oracle_variant=oracle_variant)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def heldout_set(env: str, preset: str, root: str, variant: str) -> dict:
    """A collection of D_test's generator in the test environment that D_test does not hold (cached)."""
    n = max(HELDOUT_SIZE[preset], datasets.PRESET_SPECS[preset][env].n_test)
    return datasets.get_heldout(env, preset, root, variant, n, HELDOUT_SEED, DATA_SEED)


def critic_quality(safety: Safety, heldout: dict, policy) -> dict:
    """MSE of Q_risk against its Bellman targets, AUROC of Q_risk against upcoming violations, and
    its level against eps_risk (report.critic_level: median at safe transitions, shares above).

    heldout: transitions in collection order (a held-out set, D_test, or the ones Phase 3 visited).
    """
    batch = {"obs": torch.from_numpy(heldout["observations"]), "act": torch.from_numpy(heldout["actions"]),
             "cost": torch.from_numpy(heldout["costs"]),
             "next_obs": torch.from_numpy(heldout["next_observations"])}
    horizon = report.label_horizon(safety.cfg.gamma_risk)
    labels = report.danger_labels(heldout["costs"], heldout["terminals"], heldout["timeouts"], horizon)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)                     # the same target samples for every evaluation
        q = safety.q_risk(batch["obs"], batch["act"])
        loss = safety_critic_loss(q, safety.targets(batch, policy)).item()
    return {"loss": loss, "auroc": report.auroc(q.numpy(), labels), "positives": int(labels.sum()),
            "transitions": len(labels), "label_horizon": float(horizon),
            **report.critic_level(q.numpy(), labels, safety.cfg.eps_risk)}


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
        critic[f"d_test_after_{phase}"] = critic_quality(safety, test, policy)
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
    if job.method in carl.CARL_METHODS:
        return run_carl(job)
    t_start = time.perf_counter()
    train, test, env, scale = load_inputs(job)
    agent, safety = fresh_networks(job, env)
    info = {"timings": {}, "critic": {}}
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
    info["timings"]["total"] = seconds_before + time.perf_counter() - t_start   # with Phase 3 before a resumption
    write_run(job, info, rows)
    if os.path.exists(checkpoint_path(job)) and not job.keep_checkpoint:
        os.remove(checkpoint_path(job))
    return {"job": job, "violations": sum(r["violation"] for r in rows), "return": rows[-1]["return"],
            "success": float(np.mean([r["success"] for r in rows])) if envs.HAS_SUCCESS[job.env] else np.nan,
            "seconds": info["timings"]["total"]}


# ----------------------------------------------------------------------------- CARL, CARL-Offline

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


def pretraining_path(job: Job) -> str:
    """CARL's Phase-1 checkpoint (carl only): removed once Phase 1 is saved in phase1.pt."""
    return os.path.join(job.folder, "pretraining.pt")


def checkpoint_path(job: Job) -> str:
    return os.path.join(job.folder, "phase3.pt")


# ----------------------------------------------------------------------------- damaged files
# A file of a run that cannot be read stops the command with one line that names it and says what to
# do (run.py: exit status 2); nothing is deleted or overwritten. run.py checks every job's files
# before the first job starts (check_files), so a damaged one never stops a sweep half way.

PHASE2_ADVICE = "delete it to run this run's Phases 1-2 again"
PHASE3_ADVICE = "delete it to restart this run's Phase 3 from its cached Phases 1-2"
PRETRAINING_ADVICE = "delete it to restart this run's Phase 1 (CARL's pretraining)"


class DamagedFile(ValueError):
    """A run's file that cannot be read; the message names it and what to do."""


def load_checkpoint(path: str, advice: str) -> dict:
    """torch.load(path, weights_only=True), or a DamagedFile "<path> is damaged (...): <advice>"."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:    # truncated or overwritten: torch raises RuntimeError, EOFError, pickle errors
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
        raise DamagedFile(f"{path} is damaged ({reason}): {advice}") from None


def phase2_paths(job: Job) -> list[str]:
    """Where cached Phases 1-2 of this run may lie: its own phase2.pt (CARL's: phase1.pt, its
    pretrained agent), then the same run's in the other configuration folders beside it."""
    name = "phase1.pt" if job.method in carl.CARL_METHODS else "phase2.pt"
    own = os.path.join(job.folder, name)
    siblings = sorted(glob.glob(os.path.join(os.path.dirname(job.out), "*", job.env, job.method,
                                             f"seed{job.seed}", name)))
    return [own, *(s for s in siblings if os.path.abspath(s) != os.path.abspath(own))]


def check_files(job: Job) -> None:
    """A DamagedFile for the first file this unfinished job would read that cannot be read: its
    cached Phases 1-2 (its own or a sibling configuration's phase2.pt; CARL's phase1.pt), CARL's
    pretraining checkpoint or its Phase-3 checkpoint."""
    for path in phase2_paths(job):
        if os.path.exists(path):
            load_checkpoint(path, PHASE2_ADVICE)
    for path, advice in ((pretraining_path(job), PRETRAINING_ADVICE), (checkpoint_path(job), PHASE3_ADVICE)):
        if os.path.exists(path):
            load_checkpoint(path, advice)


def resume_phase3(job: Job, restore) -> tuple[list, float]:
    """(episode rows so far, Phase-3 seconds so far) of this run's checkpoint, which restore(state)
    puts into the fresh objects (recovery_rl's or carl's restore_phase3); ([], 0) where there is
    none or it belongs to another configuration."""
    path = checkpoint_path(job)
    if not os.path.exists(path):
        return [], 0.0
    state = load_checkpoint(path, PHASE3_ADVICE)
    if state["key"] != job.key():
        return [], 0.0
    restore(state)
    print(f"resumed {job.env}/{job.method}/seed{job.seed} at episode {len(state['rows'])}", flush=True)
    return state["rows"], state["seconds"]


def onpolicy_quality(safety: Safety, start_state: dict, visited: dict, policy, test: dict | None = None) -> dict:
    """Critic quality on the transitions Phase 3 visited: the critic it started from and the final
    one; and the final one's on the method's test-environment data (D_test; RRL-oracle: its own)."""
    final = copy.deepcopy(safety.state_dict())
    scores = {"onpolicy_final": critic_quality(safety, visited, policy)}
    if test is not None:
        scores["d_test_final"] = critic_quality(safety, test, policy)
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


def stored_key(config: dict) -> str:
    """The run key, under today's run_key, of the configuration a config.json records: a run made
    before a change to the key (e.g. UNREAD_GROUPS) is still recognised by what it ran with."""
    fields = {"env": config["env"], "method": config["method"], "seed": config["seed"],
              "preset": config["preset"], "test_variant": config["test_variant"], "data_seed": config["data_seed"],
              "hp": config["hyperparameters"], "test_fraction": config.get("test_fraction", 1.0),
              "scale_inputs": config.get("scale_inputs", True), "episodes": config["episodes"],
              "env_kwargs": config.get("env_kwargs") or {}, "oracle_variant": config.get("oracle_variant", "mesa")}
    return run_key(fields)


def finished(job: Job) -> bool:
    """A run is finished when its episodes.csv exists and its config.json records the same run key,
    or a configuration with the same key today (stored_key).

    A DamagedFile where episodes.csv exists beside a config.json that cannot be read: a finished
    run's results are never run over."""
    path = os.path.join(job.folder, "config.json")
    if not os.path.exists(os.path.join(job.folder, "episodes.csv")):
        return False
    try:
        with open(path) as f:
            config = json.load(f)
        return config["run_key"] == job.key() or stored_key(config) == job.key()
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = "missing" if isinstance(e, FileNotFoundError) else "cannot be read"
        raise DamagedFile(f"{path} is damaged ({reason}) beside a finished run's episodes.csv: restore it, "
                          f"or move {job.folder} away to run this run again") from None
