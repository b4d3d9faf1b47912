"""What every module shares: seeding and the global random states a checkpoint restores, one-line
refusals of bad settings and command lines, and the one way files are written (atomically).
"""
from __future__ import annotations

import argparse
import io
import os
import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch in one place."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def global_rng_state() -> dict:
    """Python's, numpy's global and torch's random states, in types torch.load(weights_only=True) reads."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss)}


def set_global_rng_state(state: dict) -> None:
    """Restore what global_rng_state returned."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit status 2), without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def require(condition: bool, message: str) -> None:
    """Refuse a nonsense setting with a one-line message (config dataclasses call this)."""
    if not condition:
        raise ValueError(message)


def atomic_write(path: str, data: bytes | str) -> None:
    """Write to a temporary file next to `path`, then rename: a crash never leaves half a file.

    The one way every module of the project writes a file (checkpoints, datasets, results).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(state: dict, path: str) -> None:
    """torch.save, written atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(str(path), buffer.getvalue())
