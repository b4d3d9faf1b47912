"""How each offline dataset is generated (MESA paper Table 5 and appendix A.3; docs/datasets.md).

The generators follow the authors' (docs/datasets.md lists file and line of each):
- Navigation 1: rollouts of at most 10 steps that end at the first violation, from starts inside
  the corridor near a wall (x ~ U(-80, 50), |y| ~ U(2, 5)), actions clip(N(0, I), -1, 1).
- Navigation 2: the same rollouts aimed at the obstacle from one of four sides (left, right, above,
  below), the aimed action coordinate uniform towards it, the other clip(N(0, 1)). Variant "rrl"
  (Recovery RL's navigation2.py, used only by the Recovery RL check) draws a third of the starts
  uniformly over [-40, 10] x [-25, 25].
- Maze: 20-step segments from three bands of x, half with uniformly random actions, half with the
  scripted expert (point_envs.Maze.expert_action); a segment ends at the first violation.
- Cartpole, HalfCheetah, Ant: the replay buffer of one SAC run per task ("train" in each training
  task, "replay" in the test task), stopped when it holds the dataset's size; its episodes do not
  end on a violation (the paper's violation counts need that). D_test is the first rows of one fixed
  permutation of the test task's replay (draw_from_replay), the oracle's data a seeded subsample of
  it, as the authors' runs sampled their test pickles. Kind "test" still gives uniformly random
  episodes, the paper's stated generator, kept for comparison (docs/datasets.md).
A point-environment rollout that reaches the goal also ends; the last transition of a dataset that
ends mid-rollout is marked as a timeout, so every episode in a file ends with a terminal or a timeout.
Collection runs torch on one thread (restored afterwards): the arrays then do not depend on the
machine's thread count. This module exists apart from envs.py because collection uses SAC, and
envs must not import sac; datasets.py stores, checks and caches what it collects.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import envs
from common import set_seed
from replay_buffer import FIELDS, ReplayBuffer
from sac import SAC, SACConfig

KINDS = ("train", "test", "oracle", "replay")
DIMS = {"navigation1": (2, 2), "navigation2": (2, 2), "maze": (2, 2), "cartpole": (4, 1),
        "halfcheetah": (17, 6), "ant": (27, 8)}          # (obs_dim, act_dim), checked by a test
POINT_ENVS = ("navigation1", "navigation2", "maze")
TEST_DRAW_SEED = 999                              # the permutation of that replay D_test takes its rows from


@dataclass(frozen=True)
class CollectSpec:
    """How one environment's datasets are collected under one preset."""
    n_train: int                  # transitions per training task
    n_test: int                   # transitions in D_test
    n_oracle: int                 # transitions of the RRL-oracle's test-environment data
    rollout_len: int = 0          # point envs: steps per rollout (0 = full episodes)
    start_steps: int = 0          # SAC replay: uniformly random actions for the first steps
    updates_per_step: float = 0.0  # SAC replay: gradient updates per environment step after start_steps
    sac_hidden: tuple[int, ...] = (256, 256)  # SAC replay: the collecting SAC's hidden widths
    sac_batch: int = 256          # SAC replay: the collecting SAC's batch size
    violation_ends_value: bool = True  # SAC replay: the collector learns as if a violation ended the episode


# ----------------------------------------------------------------------------- point-env generators
# A plan draws one rollout: its start and the rule that picks each action.
Plan = tuple[np.ndarray, Callable[[np.random.Generator], np.ndarray]]


def clipped_normal(rng: np.random.Generator, size: int = 2) -> np.ndarray:
    """clip(N(0, I), -1, 1): the authors' exploration noise for the navigation data."""
    return np.clip(rng.standard_normal(size), -1.0, 1.0)


def navigation1_plan(rng: np.random.Generator, env) -> Plan:
    """Inside the corridor near a wall: x ~ U(-80, 50), y ~ U(2, 5) or U(-5, -2) (docs/datasets.md)."""
    start = np.array([rng.uniform(-80.0, 50.0), rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 5.0)])
    return start, clipped_normal


# Navigation 2's four blocks aimed at the obstacle x[-30, -20] y[-7.5, 7.5]:
# (x range, y range, the aimed axis, the aimed action coordinate's range)
NAVIGATION2_BLOCKS = {
    "left": ((-35.0, -30.0), (-12.0, 12.0), 0, (0.5, 1.0)),
    "right": ((-20.0, -15.0), (-12.0, 12.0), 0, (-1.0, -0.5)),
    "above": ((-30.0, -20.0), (10.0, 15.0), 1, (-1.0, -0.5)),
    "below": ((-30.0, -20.0), (-15.0, -10.0), 1, (0.5, 1.0)),
}
NAVIGATION2_UNIFORM = ((-40.0, 10.0), (-25.0, 25.0))   # Recovery RL's extra third of the starts


def navigation2_plan(rng: np.random.Generator, env, variant: str = "mesa") -> Plan:
    """One of the four aimed blocks, each equally likely ("rrl": a third uniform starts first)."""
    if variant == "rrl" and rng.random() < 1 / 3:
        (x0, x1), (y0, y1) = NAVIGATION2_UNIFORM
        return np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)]), clipped_normal
    (x0, x1), (y0, y1), axis, (a0, a1) = list(NAVIGATION2_BLOCKS.values())[rng.integers(4)]

    def aimed(rng):
        action = clipped_normal(rng)
        action[axis] = rng.uniform(a0, a1)
        return action
    return np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)]), aimed


# Maze start bands of x: (probability, x range); y ~ U(-0.22, 0.22) in every band.
MAZE_START_BANDS = ((0.3, (0.14, 0.22)), (0.3, (-0.04, 0.04)), (0.4, (-0.22, -0.13)))


def maze_plan(rng: np.random.Generator, env) -> Plan:
    """A start in one of three bands of x; half the segments random actions, half the expert."""
    probabilities, ranges = zip(*MAZE_START_BANDS)
    x0, x1 = ranges[rng.choice(len(ranges), p=probabilities)]
    start = np.array([rng.uniform(x0, x1), rng.uniform(-0.22, 0.22)])
    if rng.random() < 0.5:
        return start, lambda rng: rng.uniform(env.action_space.low, env.action_space.high)
    return start, lambda rng: env.expert_action()


PLANS = {"navigation1": navigation1_plan, "navigation2": navigation2_plan, "maze": maze_plan}


def point_rollouts(name: str, task: dict, n: int, seed: int, rollout_len: int,
                   variant: str = "mesa") -> dict[str, np.ndarray]:
    """n transitions of short rollouts that end at the first violation, the goal or rollout_len."""
    env = envs.make_env(name, task, terminate_on_violation=True)
    point = env.unwrapped
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(*DIMS[name], n, seed=seed)
    env.reset(seed=seed)                                       # seeds the dynamics noise
    plan = (lambda rng, env: navigation2_plan(rng, env, variant)) if name == "navigation2" else PLANS[name]
    while len(buf) < n:
        start, pick_action = plan(rng, point)
        if point.violates(start):                              # only possible on a thin wall: redraw
            continue
        obs = env.reset(options={"start": start})[0]
        for t in range(rollout_len):
            action = pick_action(rng).astype(np.float32)
            next_obs, reward, terminated, _, info = env.step(action)
            cut = t == rollout_len - 1 or len(buf) == n - 1
            buf.add(obs, action, reward, info["cost"], next_obs, terminated, cut and not terminated)
            if terminated or cut:
                break
            obs = next_obs
    env.close()
    return buf.arrays()


# ----------------------------------------------------------------------------- SAC replay and random episodes

def sac_replay(name: str, task: dict, n: int, seed: int, spec: CollectSpec,
               progress: bool = False) -> dict[str, np.ndarray]:
    """The replay buffer of one SAC run in `task`, stopped after n environment steps.

    Uniformly random actions for spec.start_steps steps, then pi's samples, with
    spec.updates_per_step SAC updates per step (a fraction updates every 1/updates_per_step steps).
    A violation does not end the episode (the paper). With spec.violation_ends_value the collecting
    SAC learns as if it did (no value after a violation), as the authors' collector did: their
    environments end the episode there (half_cheetah_disabled.py:134-136, main.py:1112). Otherwise
    nothing stops it from learning to run on its back, and the buffer fills with violations.
    """
    env = envs.make_env(name, task, terminate_on_violation=False)
    low, high = env.action_space.low, env.action_space.high
    set_seed(seed)
    buf = ReplayBuffer(*DIMS[name], n, seed=seed)
    agent = SAC(*DIMS[name], low, high, SACConfig(start_steps=spec.start_steps, hidden=spec.sac_hidden,
                                                  batch_size=spec.sac_batch))
    obs, credit, t0 = env.reset(seed=seed)[0], 0.0, time.time()
    for step in range(n):
        action = agent.explore(obs, step)
        next_obs, reward, terminated, truncated, info = env.step(action)
        timeout = (truncated or step == n - 1) and not terminated
        buf.add(obs, action, reward, info["cost"], next_obs, terminated, timeout)
        obs = env.reset()[0] if terminated or timeout else next_obs
        if step >= spec.start_steps and len(buf) >= spec.sac_batch:
            credit += spec.updates_per_step
            while credit >= 1.0:
                agent.update(collector_batch(buf.sample(spec.sac_batch), spec.violation_ends_value))
                credit -= 1.0
        if progress and (step + 1) % PROGRESS_EVERY == 0:
            print(f"  {name} seed {seed}: {step + 1}/{n} SAC steps, {time.time() - t0:.0f} s, "
                  f"{recent_progress(buf, PROGRESS_EVERY)}", file=sys.stderr, flush=True)
    env.close()
    return buf.arrays()


PROGRESS_EVERY = 25_000


def recent_progress(buf: ReplayBuffer, n: int) -> str:
    """The collector's last n steps: reward per step and violation rows (is it learning?)."""
    rows = np.arange(buf.ptr - n, buf.ptr) % buf.capacity
    rewards, costs = buf.data["rewards"][rows], buf.data["costs"][rows]
    return f"last {n}: reward/step {rewards.mean():.2f}, violation rows {costs.mean():.1%}"


def collector_batch(batch: dict, violation_ends_value: bool) -> dict:
    """The collecting SAC's view of a batch: a violation is terminal if violation_ends_value."""
    if violation_ends_value:
        batch["done"] = torch.maximum(batch["done"], batch["cost"])
    return batch


def random_episodes(name: str, task: dict, n: int, seed: int) -> dict[str, np.ndarray]:
    """n transitions of uniformly random actions over full episodes that go on after a violation."""
    env = envs.make_env(name, task, terminate_on_violation=False)
    env.action_space.seed(seed)
    buf = ReplayBuffer(*DIMS[name], n, seed=seed)
    obs = env.reset(seed=seed)[0]
    for step in range(n):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, info = env.step(action)
        timeout = (truncated or step == n - 1) and not terminated
        buf.add(obs, action, reward, info["cost"], next_obs, terminated, timeout)
        obs = env.reset()[0] if terminated or timeout else next_obs
    env.close()
    return buf.arrays()


def draw_from_replay(replay: dict[str, np.ndarray], n: int, skip: int = 0) -> dict[str, np.ndarray]:
    """n transitions of the test task's SAC replay, in collection order: rows skip .. skip + n of
    one fixed permutation (TEST_DRAW_SEED). D_test takes skip = 0; the held-out set skips D_test's
    rows, so the two never share a transition (where the replay holds both; else it overlaps)."""
    perm = np.random.default_rng(TEST_DRAW_SEED).permutation(len(replay["rewards"]))
    rows = perm[skip:skip + n] if skip + n <= len(perm) else perm[:n]
    return {k: replay[k][np.sort(rows)] for k in FIELDS}


def subsample(data: dict[str, np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    """n transitions drawn uniformly without replacement, kept in collection order."""
    idx = np.sort(np.random.default_rng(seed).choice(len(data["rewards"]), n, replace=False))
    return {k: data[k][idx] for k in FIELDS}


def collect(name: str, task: dict, n: int, seed: int, spec: CollectSpec, kind: str,
            progress: bool = False, variant: str = "mesa") -> dict[str, np.ndarray]:
    """n transitions of one dataset of `kind` for env `name`, collected from scratch.

    Point envs use their generator for every kind ("train", "test", "oracle"). Cartpole, HalfCheetah,
    Ant: SAC replay ("train" in a training task, "replay" in the test task); their D_test and oracle
    data are drawn from the "replay" file (draw_from_replay), and "test" here gives uniformly random
    episodes, the paper's stated generator, kept for comparison (docs/datasets.md).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)             # same arrays on any machine
    try:
        if name in POINT_ENVS:
            return point_rollouts(name, task, n, seed, spec.rollout_len, variant)
        if kind == "test":
            return random_episodes(name, task, n, seed)
        if kind == "oracle":
            return subsample(sac_replay(name, task, max(n, spec.n_train), seed, spec, progress), n, seed)
        return sac_replay(name, task, n, seed, spec, progress)     # "train" and "replay"
    finally:
        torch.set_num_threads(threads)
