"""Shared test fixtures: a tiny constrained environment for the core algorithm's tests, and the
optional extras' switch (require_extra)."""
import importlib
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

# The test networks are tiny: one thread is as fast and immune to oversubscription.
torch.set_num_threads(1)


class LineEnv(gym.Env):
    """A point on a line, x' = x + 0.1 a; reaching |x| >= 1 violates the constraint and ends the episode."""

    observation_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-0.5, 0.5))
        self.received = []
        return self._obs(), {"cost": 0.0}

    def _obs(self):
        return np.array([self.x, 0.0], np.float32)

    def step(self, action):
        self.received.append(np.array(action, np.float32))
        self.x = float(np.clip(self.x + 0.1 * float(action[0]), -1.5, 1.5))
        cost = float(abs(self.x) >= 1.0)
        return self._obs(), -abs(self.x), bool(cost), False, {"cost": cost}


gym.register("tests/Line-v0", entry_point=LineEnv, max_episode_steps=20)


@pytest.fixture
def line_env():
    return gym.make("tests/Line-v0", disable_env_checker=True)


def random_dataset(n, obs_dim, act_dim, violation_rate=0.1, seed=0):
    """Arrays in the dataset format (docs/datasets.md) with random content."""
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "costs": (rng.random(n) < violation_rate).astype(np.float32),
        "next_observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }


# The optional extras: what a test of each imports, and how to install it.
EXTRAS = {"ray": ("ray", "pip install -r requirements-ray.txt"),
          "tensorboard": ("torch.utils.tensorboard", "pip install tensorboard")}


@pytest.fixture
def require_extra():
    """require_extra(name) imports an optional extra (EXTRAS) for a test of it. Where it is missing
    the test is skipped with the reason, unless MESA_REQUIRE_EXTRAS names it ("ray,tensorboard") or
    is 1 / all: then it fails, so that a machine that installed the extras (CI) proves their path."""
    def require(name: str):
        module, install = EXTRAS[name]
        try:
            return importlib.import_module(module)
        except ImportError as e:
            wanted = os.environ.get("MESA_REQUIRE_EXTRAS", "").replace(",", " ").split()
            why = f"the optional extra {name} is not installed ({install}): {e}"
            if name in wanted or "1" in wanted or "all" in wanted:
                pytest.fail(f"{why}; MESA_REQUIRE_EXTRAS={os.environ['MESA_REQUIRE_EXTRAS']} requires it")
            pytest.skip(why)
    return require
