"""One offline dataset as a file: what it holds, its format, its validation and its checksum
(docs/datasets.md). datasets.py decides which files each preset has and caches them.

Format (FORMAT_VERSION 2), one .npz per dataset: observations (N, obs_dim), actions (N, act_dim),
rewards (N,), costs (N,) in {0, 1}, next_observations (N, obs_dim) - all float32 - and terminals
(N,), timeouts (N,) bool; then env (str), seed (int64), format_version (int64) and each task
parameter as task_<key> (float64; 0-d for a scalar, 1-d for a tuple). Files are written atomically
(temp file, then os.replace). Version 1 (the generators before the authors' were followed) is
refused with a message that says how to regenerate.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile

import numpy as np

import envs
import point_envs
from common import atomic_write
from generators import DIMS
from replay_buffer import FIELDS

FORMAT_VERSION = 2


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or inconsistent; the message names the file."""


# ----------------------------------------------------------------------------- what a dataset holds

def violation_events(data: dict) -> int:
    """Violation rows whose state was not already in violation (a new entry into an obstacle)."""
    costs = data["costs"] > 0
    continues = ~(data["terminals"] | data["timeouts"])
    repeated = np.r_[False, costs[:-1] & continues[:-1]]       # previous row, same episode, violated
    return int(np.sum(costs & ~repeated))


def near_obstacle_share(name: str, observations: np.ndarray) -> float:
    """Share of states where the agent travels: Navigation 1's path corridor (|y| < 5, -80 < x < 0);
    within 5 of Navigation 2's obstacle; nan elsewhere."""
    x, y = observations[:, 0], observations[:, 1]
    if name == "navigation1":
        return float(np.mean((np.abs(y) < 5) & (x > -80) & (x < 0)))
    if name == "navigation2":
        (x0, x1, y0, y1), = point_envs.NAV_OBSTACLES[2]
        dx = np.maximum(np.maximum(x0 - x, x - x1), 0.0)     # distance to the box along each axis
        dy = np.maximum(np.maximum(y0 - y, y - y1), 0.0)
        return float(np.mean(np.hypot(dx, dy) <= 5.0))
    return float("nan")


def describe(name: str, data: dict) -> dict:
    """The counts docs/datasets.md reports for one or more datasets of env `name`."""
    return {"transitions": len(data["rewards"]), "violations": int(data["costs"].sum()),
            "events": violation_events(data),
            "near_obstacle": near_obstacle_share(name, data["observations"])}


# ----------------------------------------------------------------------------- file format

def regenerate_hint(folder: str) -> str:
    return f"delete {folder} and rerun to regenerate it (python3 datasets.py --env ENV --preset PRESET)"


def _fail(path, problem: str):
    raise DatasetError(f"{path}: {problem}")


def validate(data: dict, path: str = "<memory>", env: str | None = None) -> None:
    """Check keys, dtypes, shapes, finiteness and costs of a dataset's arrays."""
    for key in FIELDS:
        if key not in data:
            _fail(path, f"missing key {key!r}")
    n = len(data["observations"])
    if n == 0:
        _fail(path, "empty dataset")
    obs_dim, act_dim = DIMS[env] if env in DIMS else (data["observations"].shape[-1],
                                                      data["actions"].shape[-1])
    shapes = {"observations": (n, obs_dim), "actions": (n, act_dim), "rewards": (n,),
              "costs": (n,), "next_observations": (n, obs_dim), "terminals": (n,),
              "timeouts": (n,)}
    for key, shape in shapes.items():
        dtype = np.bool_ if key in ("terminals", "timeouts") else np.float32
        if data[key].dtype != dtype:
            _fail(path, f"{key} has dtype {data[key].dtype}, expected {np.dtype(dtype)}")
        if data[key].shape != shape:
            _fail(path, f"{key} has shape {data[key].shape}, expected {shape}")
        if dtype is np.float32 and not np.all(np.isfinite(data[key])):
            _fail(path, f"{key} has non-finite values")
    if not np.all((data["costs"] == 0.0) | (data["costs"] == 1.0)):
        _fail(path, f"costs outside {{0, 1}}: {np.unique(data['costs'])[:5]}")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_dataset(path, data: dict[str, np.ndarray], *, env: str, task: dict, seed: int) -> None:
    """Validate, then write one dataset .npz atomically."""
    arrays = {key: np.asarray(data[key]) for key in FIELDS if key in data}
    validate(arrays, str(path), env)
    meta = {"env": np.array(env), "seed": np.array(seed, np.int64),
            "format_version": np.array(FORMAT_VERSION, np.int64)}
    meta.update({f"task_{k}": np.asarray(v, np.float64) for k, v in task.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **meta)
    atomic_write(str(path), buffer.getvalue())


def load_dataset(path, expected_sha256: str | None = None) -> dict:
    """Load and validate one dataset; raises DatasetError naming the file and the problem."""
    path = str(path)
    if not os.path.exists(path):
        _fail(path, "file not found")
    if expected_sha256 is not None and sha256(path) != expected_sha256:
        _fail(path, "sha256 does not match the manifest (file changed or corrupt)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        _fail(path, f"not a readable .npz file ({type(e).__name__}: {e})")
    for key in ("format_version", "env", "seed"):
        if key not in raw:
            _fail(path, f"missing key {key!r}")
    if raw["format_version"].shape != () or int(raw["format_version"]) != FORMAT_VERSION:
        _fail(path, f"format version {raw['format_version']}, expected {FORMAT_VERSION}; "
                    f"{regenerate_hint(os.path.dirname(path) or '.')}")
    env = str(raw["env"])
    if env not in envs.ENV_NAMES:
        _fail(path, f"unknown env {env!r}")
    validate(raw, path, env)
    out = {key: raw[key] for key in FIELDS}
    out["env"], out["seed"] = env, int(raw["seed"])
    out["task"] = {k[5:]: (float(v) if v.ndim == 0 else tuple(float(x) for x in v))
                   for k, v in raw.items() if k.startswith("task_")}
    return out
