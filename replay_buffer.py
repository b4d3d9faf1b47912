"""The replay buffer every phase samples from: a preallocated numpy ring buffer that also stores
each transition's cost (the constraint violation), under the D4RL/DSRL field names of the offline
datasets (docs/datasets.md).
"""
from __future__ import annotations

import numpy as np
import torch


FIELDS = ("observations", "actions", "rewards", "costs", "next_observations", "terminals", "timeouts")


class ReplayBuffer:
    """Preallocated ring buffer of numpy arrays with the D4RL/DSRL field names (docs/datasets.md).

    `sample` returns torch tensors under short names that mirror the equations:
    obs, act, rew, cost, next_obs, done (1.0 where the episode terminated, not merely timed out).
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, seed: int | None = None):
        if capacity <= 0:
            raise ValueError(f"replay buffer capacity must be positive, got {capacity}")
        self.capacity, self.size, self.ptr = capacity, 0, 0
        self.data = {
            "observations": np.zeros((capacity, obs_dim), np.float32),
            "actions": np.zeros((capacity, act_dim), np.float32),
            "rewards": np.zeros(capacity, np.float32),
            "costs": np.zeros(capacity, np.float32),
            "next_observations": np.zeros((capacity, obs_dim), np.float32),
            "terminals": np.zeros(capacity, bool),
            "timeouts": np.zeros(capacity, bool),
        }
        self.rng = np.random.default_rng(np.random.randint(2**31) if seed is None else seed)
        self._violations: np.ndarray | None = None  # cached indices of rows with cost 1

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward, cost, next_obs, terminal, timeout) -> None:
        """Store one transition, overwriting the oldest once the buffer is full."""
        row = self.ptr
        if cost or self.data["costs"][row]:
            self._violations = None
        for key, value in zip(FIELDS, (obs, action, reward, cost, next_obs, terminal, timeout)):
            self.data[key][row] = value
        self.ptr = (row + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def add_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Append many transitions at once (e.g. an offline dataset); they must fit."""
        n = len(arrays["observations"])
        if self.size + n > self.capacity or self.ptr != self.size:
            raise ValueError(f"cannot append {n} transitions to a buffer holding {self.size} of {self.capacity}")
        for key in FIELDS:
            self.data[key][self.size:self.size + n] = arrays[key]
        self.size += n
        self.ptr = self.size % self.capacity
        self._violations = None

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], extra_capacity: int = 0, seed: int | None = None):
        """A buffer holding `arrays` with room for `extra_capacity` more transitions."""
        obs_dim, act_dim = arrays["observations"].shape[1], arrays["actions"].shape[1]
        buffer = cls(obs_dim, act_dim, len(arrays["observations"]) + extra_capacity, seed)
        buffer.add_arrays(arrays)
        return buffer

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored transitions in insertion order, as a dict of numpy arrays (copies)."""
        order = np.arange(self.ptr - self.size, self.ptr) % self.capacity
        return {key: self.data[key][order] for key in FIELDS}

    def violation_indices(self) -> np.ndarray:
        """Rows whose transition violated the constraint (cost 1); recomputed only when they change."""
        if self._violations is None:
            self._violations = np.flatnonzero(self.data["costs"][: self.size] > 0)
        return self._violations

    def batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        d = self.data
        return {
            "obs": torch.from_numpy(d["observations"][idx]),
            "act": torch.from_numpy(d["actions"][idx]),
            "rew": torch.from_numpy(d["rewards"][idx]),
            "cost": torch.from_numpy(d["costs"][idx]),
            "next_obs": torch.from_numpy(d["next_observations"][idx]),
            "done": torch.from_numpy(d["terminals"][idx].astype(np.float32)),
        }

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """A uniformly random batch (with replacement)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.batch(self.rng.integers(0, self.size, size=batch_size))

    def state_dict(self) -> dict:
        """The stored rows, the write position and the sampling generator (for checkpoints)."""
        return {"data": {k: torch.from_numpy(v[: self.size].copy()) for k, v in self.data.items()},
                "size": self.size, "ptr": self.ptr, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        n = state["size"]
        if n > self.capacity:
            raise ValueError(f"a checkpoint of {n} transitions does not fit a buffer of {self.capacity}")
        for key, value in state["data"].items():
            self.data[key][:n] = value.numpy()
        self.size, self.ptr, self._violations = n, state["ptr"], None
        self.rng.bit_generator.state = state["rng"]
