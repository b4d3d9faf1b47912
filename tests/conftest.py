"""Shared test fixtures: a tiny constrained environment for the core algorithm's tests."""
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
