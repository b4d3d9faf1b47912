"""The six MESA environments (docs/environments.md) as gymnasium.Env classes, plus their tasks.

Every env returns the 5-tuple API, puts info["cost"] in {0.0, 1.0} on every step (and in the reset
info), and takes a `terminate_on_violation` switch: True ends the episode on a violation
(terminated=True, used for learning); False lets it go on (data collection). Task parameters go in
through the constructor and never appear in the observation. `info["success"]` exists where the
paper defines success (navigation, maze, cartpole); its value on an episode's last step is the
episode's success. The registered ids (ENV_IDS) and make_env(name) build the paper's TEST task;
train_tasks(name) gives the training tasks' constructor keywords.

| name        | class                | task keyword (floats)                         | s per step | horizon |
|-------------|----------------------|-----------------------------------------------|------------|---------|
| navigation1 | Navigation(layout=1) | b = (b1, b2), B = diag(b)                     | -          | 100     |
| navigation2 | Navigation(layout=2) | b                                             | -          | 100     |
| maze        | Maze                 | w = (w1, w2), the two walls' gap offsets      | -          | 100     |
| cartpole    | CartpoleLength       | length = L (metres)                           | 0.04       | 200     |
| halfcheetah | HalfCheetahDisabled  | torque_scale, 6 values in [0, 1]              | 0.01       | 1000    |
| ant         | AntDisabled          | leg = 0., 1., 2. or 3. (the authors' numbers) | 0.02       | 1000    |

The classes live in point_envs.py (Navigation, Maze) and mujoco_envs.py (CartpoleLength,
HalfCheetahDisabled, AntDisabled); their docstrings say what follows the authors' code and where we
deviate. This module names the six, draws their tasks and registers them.
"""
from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces

from mujoco_envs import ANT_TEST_LEG, ANT_TRAIN_LEGS, AntDisabled, CartpoleLength, HalfCheetahDisabled
from point_envs import MAZE_TEST_W, Maze, Navigation

ENV_NAMES = ("navigation1", "navigation2", "maze", "cartpole", "halfcheetah", "ant")
ENV_IDS = {
    "navigation1": "mesa/Navigation1-v0", "navigation2": "mesa/Navigation2-v0",
    "maze": "mesa/Maze-v0", "cartpole": "mesa/CartpoleLength-v0",
    "halfcheetah": "mesa/HalfCheetahDisabled-v0", "ant": "mesa/AntDisabled-v0",
}
HORIZON = {"navigation1": 100, "navigation2": 100, "maze": 100, "cartpole": 200,
           "halfcheetah": 1000, "ant": 1000}
HAS_SUCCESS = {"navigation1": True, "navigation2": True, "maze": True, "cartpole": True,
               "halfcheetah": False, "ant": False}

# HalfCheetah partial power loss (paper 6.2): k ~ U(0.5, 0.95) per joint, drawn once with
# np.random.default_rng(2021).uniform(0.5, 0.95, 6), rounded to 3 decimals (checked by a test).
PARTIAL_POWER_SEED = 2021
PARTIAL_POWER_SCALE = (0.841, 0.924, 0.767, 0.643, 0.782, 0.516)


def _validate_name(name: str) -> None:
    if name not in ENV_NAMES:
        raise ValueError(f"unknown environment {name!r}; valid names: {', '.join(ENV_NAMES)}")


def disabled(joints, n: int) -> tuple[float, ...]:
    """Torque-scale vector of n actuators with the given actuator indices set to 0."""
    return tuple(0.0 if i in joints else 1.0 for i in range(n))


# ============================================================================= tasks
N_TRAIN_TASKS = {"navigation1": 20, "navigation2": 25, "maze": 20, "cartpole": 20,
                 "halfcheetah": 4, "ant": 3}
HALFCHEETAH_TRAIN_JOINTS = (1, 2, 3, 4)     # bshin, bfoot, fthigh, fshin; test: 5 (ffoot)
HALFCHEETAH_TEST_JOINT = 5

TEST_TASKS = {
    ("navigation1", "default"): {"b": (1.3, 0.7)},
    ("navigation2", "default"): {"b": (0.7, 1.3)},
    ("maze", "default"): {"w": MAZE_TEST_W},
    ("cartpole", "default"): {"length": 1.0},
    ("halfcheetah", "default"): {"torque_scale": disabled({HALFCHEETAH_TEST_JOINT}, 6)},
    ("halfcheetah", "partial"): {"torque_scale": PARTIAL_POWER_SCALE},
    ("ant", "default"): {"leg": float(ANT_TEST_LEG)},
}


def _floats(values) -> tuple[float, ...]:
    """Plain Python floats rounded to 6 decimals (readable in manifests and logs)."""
    return tuple(round(float(v), 6) for v in values)


def train_tasks(name: str, seed: int = 0) -> list[dict]:
    """The training tasks' constructor keywords, drawn from a generator seeded with `seed`."""
    _validate_name(name)
    rng = np.random.default_rng(seed)
    n = N_TRAIN_TASKS[name]
    if name in ("navigation1", "navigation2"):
        return [{"b": _floats(rng.uniform(0.5, 1.5, 2))} for _ in range(n)]
    if name == "maze":
        return [{"w": _floats(rng.uniform(-0.1, 0.1, 2))} for _ in range(n)]
    if name == "cartpole":
        return [{"length": _floats(rng.uniform(0.4, 0.8, 1))[0]} for _ in range(n)]
    if name == "halfcheetah":
        return [{"torque_scale": disabled({j}, 6)} for j in HALFCHEETAH_TRAIN_JOINTS]
    return [{"leg": float(leg)} for leg in ANT_TRAIN_LEGS]


def test_task(name: str, variant: str = "default") -> dict:
    """The fixed, held-out test task (see TEST_TASKS); halfcheetah also has variant "partial"."""
    _validate_name(name)
    if (name, variant) not in TEST_TASKS:
        raise ValueError(f"no test variant {variant!r} for {name!r}")
    return dict(TEST_TASKS[(name, variant)])


test_task.__test__ = False                  # not a pytest test, even when imported into one


# ============================================================================= registry
_ENTRY_POINTS = {
    "navigation1": (Navigation, {"layout": 1}), "navigation2": (Navigation, {"layout": 2}),
    "maze": (Maze, {}), "cartpole": (CartpoleLength, {}),
    "halfcheetah": (HalfCheetahDisabled, {}), "ant": (AntDisabled, {}),
}


def register_envs() -> None:
    """Register the six ids with gymnasium, each building its test task by default (runs at
    import; calling it again is a no-op)."""
    for name, (cls, kwargs) in _ENTRY_POINTS.items():
        if ENV_IDS[name] not in gymnasium.registry:
            gymnasium.register(ENV_IDS[name], entry_point=cls, kwargs={**kwargs, **test_task(name)},
                               max_episode_steps=HORIZON[name])


register_envs()


def make_env(name: str, task: dict | None = None, terminate_on_violation: bool = True,
             **kwargs) -> gymnasium.Env:
    """gymnasium.make of the named env with a task (None = the default test task), time-limited.
    Extra keywords go to the constructor (e.g. goal_radius=4.0 for the navigation envs)."""
    _validate_name(name)
    task = test_task(name) if task is None else task
    return gymnasium.make(ENV_IDS[name], terminate_on_violation=terminate_on_violation,
                          **task, **kwargs)


def scaled_observations(env: gymnasium.Env, mean: np.ndarray, std: np.ndarray) -> gymnasium.Env:
    """env whose observations are (o - mean) / std, the scaling the datasets got (datasets.scaled)."""
    space = spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
    return gymnasium.wrappers.TransformObservation(env, lambda o: ((o - mean) / std).astype(np.float32), space)
