"""Offline datasets of the six MESA environments (SPEC section 8; MESA paper Table 5 and B.1).

Each environment gets N_train training datasets (one per training task, envs.train_tasks) and one
test dataset (envs.test_task), generated here from seeds, cached as .npz under `data/` and checked
on every load. This module exists apart from envs.py because collection uses SAC, and envs must
not import sac.

Collection (no dataset episode ends on a violation: terminate_on_violation=False; episodes still end
at the goal and at the time limit):
- Navigation 1/2, Maze (train and test): uniformly random actions in short rollouts (10 steps for
  navigation, 20 for the maze) from varied starts, passed as reset(options={"start": s}).
  Navigation starts are uniform in the obstacles' bounding box grown by a margin (15 for
  Navigation 1, 5 for Navigation 2; chosen so the violation rates come close to the paper's 6.8%
  and 12%), maze starts uniform over the arena; starts in violation are redrawn.
- Cartpole, HalfCheetah, Ant training sets: the replay buffer of an early-stopped SAC run (the run
  stops when the buffer holds the dataset's size): uniformly random actions for start_steps, then
  pi's samples, with `updates_per_step` SAC updates per environment step (fractional values update
  every 1/updates_per_step steps). Test sets: uniformly random actions, full episodes.
  Collection runs torch on one thread (restored afterwards): the arrays then do not depend on the
  machine's thread count, and on 2 shared cores one thread was 4x faster than two.
- The last transition of a dataset that ends mid-episode is marked as a timeout, so every episode
  in a file ends with a terminal or a timeout.

Format (FORMAT_VERSION 1), one .npz per dataset: observations (N, obs_dim), actions (N, act_dim),
rewards (N,), costs (N,) in {0, 1}, next_observations (N, obs_dim) - all float32 - and terminals
(N,), timeouts (N,) bool; then env (str), seed (int64), format_version (int64) and each task
parameter as task_<key> (float64; 0-d for a scalar, 1-d for a tuple). Files are written atomically
(temp file, then os.replace). Each data/<preset>/<env>/ folder holds a manifest.json with every
file's sha256, size in bytes, transitions, violations, seed and task; cached files are verified
against it. Seeds: training file i uses seed 1000 * seed + i, the test file 1000 * seed + 999.

Deviation from the authors' code: they shipped pre-collected data; ours is generated, so counts
differ from Table 5 (README, "Datasets", lists both).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
import zipfile
from dataclasses import asdict, dataclass

import numpy as np
import torch

import envs
from sac import FIELDS, SAC, ReplayBuffer, SACConfig, atomic_write, set_seed

FORMAT_VERSION = 1
PRESETS = ("smoke", "quick", "paper")
DIMS = {"navigation1": (2, 2), "navigation2": (2, 2), "maze": (2, 2), "cartpole": (4, 1),
        "halfcheetah": (17, 6), "ant": (27, 8)}          # (obs_dim, act_dim), checked by a test


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or inconsistent; the message names the file."""


@dataclass(frozen=True)
class CollectSpec:
    """How one environment's datasets are collected under one preset."""
    n_train: int                  # transitions per training task
    n_test: int                   # transitions in the test dataset
    rollout_len: int | None       # random short rollouts from varied starts; None = full episodes
    sac: bool = False             # training sets from an early-stopped SAC run (else random)
    start_steps: int = 0          # SAC: uniformly random actions for the first steps
    updates_per_step: float = 0.0  # SAC: gradient updates per environment step after start_steps


def _specs(nav_train, nav_tests, cart, cheetah, ant):
    return {"navigation1": CollectSpec(nav_train, nav_tests[0], 10),
            "navigation2": CollectSpec(nav_train, nav_tests[1], 10),
            "maze": CollectSpec(nav_train, nav_tests[2], 20),
            "cartpole": CollectSpec(*cart), "halfcheetah": CollectSpec(*cheetah),
            "ant": CollectSpec(*ant)}


# (n_train, n_test, rollout_len, sac, start_steps, updates_per_step)
PRESET_SPECS = {
    "smoke": _specs(200, (100, 200, 200), (200, 200, None, True, 200, 0.0),
                    (1000, 1000, None, True, 1000, 0.0), (1000, 1000, None, True, 1000, 0.0)),
    "quick": _specs(10_000, (100, 200, 200), (4_000, 1_000, None, True, 1_000, 0.25),
                    (50_000, 40_000, None, True, 5_000, 0.25),
                    (50_000, 40_000, None, True, 5_000, 0.25)),
    "paper": _specs(10_000, (100, 200, 200), (20_000, 1_000, None, True, 1_000, 1.0),
                    (400_000, 40_000, None, True, 10_000, 1.0),
                    (400_000, 40_000, None, True, 10_000, 1.0)),
}
NAV_START_MARGIN = {"navigation1": 15.0, "navigation2": 5.0}


# ----------------------------------------------------------------------------- collection
def sample_start(name: str, env, rng: np.random.Generator) -> np.ndarray | None:
    """A varied, violation-free start for the point envs; None = the env's own start."""
    if name in NAV_START_MARGIN:
        boxes, m = np.array(env.boxes), NAV_START_MARGIN[name]
        low = np.array([boxes[:, 0].min(), boxes[:, 2].min()]) - m
        high = np.array([boxes[:, 1].max(), boxes[:, 3].max()]) + m
    elif name == "maze":
        low, high = np.full(2, -envs.MAZE_HALF), np.full(2, envs.MAZE_HALF)
    else:
        return None
    while True:
        s = rng.uniform(low, high)
        if not env.violates(s):
            return s


def collect(name: str, task: dict, n: int, seed: int, spec: CollectSpec, use_sac: bool,
            progress: bool = False) -> dict[str, np.ndarray]:
    """n transitions of env `name` under `task`: random actions, or an early-stopped SAC run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)             # same arrays on any machine, and faster on 2 shared cores
    try:
        return _collect(name, task, n, seed, spec, use_sac, progress)
    finally:
        torch.set_num_threads(threads)


def _collect(name, task, n, seed, spec, use_sac, progress):
    env = envs.make_env(name, task, terminate_on_violation=False)
    obs_dim, act_dim = DIMS[name]
    low, high = env.action_space.low, env.action_space.high
    set_seed(seed)
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(obs_dim, act_dim, n, seed=seed)
    agent = SAC(obs_dim, act_dim, low, high, SACConfig(start_steps=spec.start_steps)) if use_sac else None
    rollout_len = None if use_sac else spec.rollout_len

    def reset(first=False):
        start = sample_start(name, env.unwrapped, rng)
        return env.reset(seed=seed if first else None,
                         options=None if start is None else {"start": start})[0]

    obs, t_episode, credit, t0 = reset(first=True), 0, 0.0, time.time()
    for step in range(n):
        if agent is not None:
            action = agent.explore(obs, step)
        else:
            action = rng.uniform(low, high).astype(np.float32)
        next_obs, reward, terminated, truncated, info = env.step(action)
        t_episode += 1
        cut = (rollout_len is not None and t_episode >= rollout_len) or step == n - 1
        timeout = (truncated or cut) and not terminated
        buf.add(obs, action, reward, info["cost"], next_obs, terminated, timeout)
        obs = next_obs
        if terminated or timeout:
            obs, t_episode = reset(), 0
        if agent is not None and step >= spec.start_steps and len(buf) >= agent.cfg.batch_size:
            credit += spec.updates_per_step
            while credit >= 1.0:
                agent.update(buf.sample(agent.cfg.batch_size))
                credit -= 1.0
        if progress and agent is not None and (step + 1) % 10_000 == 0:
            print(f"  {name}: {step + 1}/{n} steps, {time.time() - t0:.0f} s", file=sys.stderr)
    env.close()
    return buf.arrays()


# ----------------------------------------------------------------------------- file format
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
        _fail(path, f"format version {raw['format_version']}, expected {FORMAT_VERSION}")
    env = str(raw["env"])
    if env not in envs.ENV_NAMES:
        _fail(path, f"unknown env {env!r}")
    validate(raw, path, env)
    out = {key: raw[key] for key in FIELDS}
    out["env"], out["seed"] = env, int(raw["seed"])
    out["task"] = {k[5:]: (float(v) if v.ndim == 0 else tuple(float(x) for x in v))
                   for k, v in raw.items() if k.startswith("task_")}
    return out


# ----------------------------------------------------------------------------- input scaling
def observation_scale(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of a dataset's observations (a constant dimension gets std 1).

    run.py standardises every network input with D_test's statistics, for every method alike
    (README "Design choices": raw navigation coordinates saturate the tanh policies).
    """
    obs = data["observations"].astype(np.float64)
    std = obs.std(0)
    return obs.mean(0).astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def scaled(data: dict, mean: np.ndarray, std: np.ndarray) -> dict:
    """A copy of a dataset whose observations and next observations are (o - mean) / std."""
    return {**data, **{k: ((data[k] - mean) / std).astype(np.float32)
                       for k in ("observations", "next_observations")}}


def head(data: dict, fraction: float) -> dict:
    """The first round(fraction * n) transitions of a dataset, in collection order (Figure 6 ablation)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"test fraction must lie in (0, 1], got {fraction}")
    n = max(1, round(fraction * len(data["rewards"])))
    return {**data, **{k: data[k][:n] for k in FIELDS}}


# ----------------------------------------------------------------------------- cache
def _read_manifest(folder: str) -> dict:
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(path):
        return {"format_version": FORMAT_VERSION, "files": {}}
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, OSError) as e:
        raise DatasetError(f"{path}: unreadable manifest ({e})") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        return {"format_version": FORMAT_VERSION, "files": {}}   # old format: regenerate all
    return manifest


def _write_manifest(folder: str, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write(os.path.join(folder, "manifest.json"), text)


def get_datasets(env: str, preset: str, root: str = "data", test_variant: str = "default",
                 progress: bool = False, seed: int = 0) -> tuple[list[dict], dict]:
    """(training datasets, test dataset) of `env` under `preset`, generating what is missing.

    Cached files listed in data/<preset>/<env>/manifest.json with the same seed, task and
    collection spec are loaded and checked against the manifest's sha256; anything else is
    (re)generated and added to the manifest.
    """
    envs._validate_name(env)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    spec = PRESET_SPECS[preset][env]
    folder = os.path.join(root, preset, env)
    os.makedirs(folder, exist_ok=True)
    jobs = [(f"train_{i:02d}.npz", task, 1000 * seed + i, spec.n_train, spec.sac)
            for i, task in enumerate(envs.train_tasks(env, seed))]
    jobs.append((f"test_{test_variant}.npz", envs.test_task(env, test_variant),
                 1000 * seed + 999, spec.n_test, False))
    loaded = []
    for fname, task, file_seed, n, use_sac in jobs:
        path = os.path.join(folder, fname)
        want = {"seed": file_seed, "task": {k: list(np.atleast_1d(v)) for k, v in task.items()},
                "transitions": n, "spec": asdict(spec)}
        entry = _read_manifest(folder)["files"].get(fname)
        if entry is not None and os.path.exists(path) and all(entry.get(k) == v for k, v in want.items()):
            loaded.append(load_dataset(path, expected_sha256=entry["sha256"]))
            continue
        t0 = time.time()
        data = collect(env, task, n, file_seed, spec, use_sac, progress)
        save_dataset(path, data, env=env, task=task, seed=file_seed)
        manifest = _read_manifest(folder)
        manifest.update(env=env, preset=preset)
        manifest["files"][fname] = {**want, "sha256": sha256(path), "bytes": os.path.getsize(path),
                                    "violations": int(data["costs"].sum()),
                                    "seconds": round(time.time() - t0, 1)}
        _write_manifest(folder, manifest)
        if progress:
            print(f"{env} {fname}: {n} transitions, {int(data['costs'].sum())} violations, "
                  f"{time.time() - t0:.1f} s", file=sys.stderr)
        loaded.append(load_dataset(path, expected_sha256=manifest["files"][fname]["sha256"]))
    return loaded[:-1], loaded[-1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Generate (or verify) the offline datasets.")
    parser.add_argument("--env", default="all", choices=("all",) + envs.ENV_NAMES)
    parser.add_argument("--preset", default="quick", choices=PRESETS)
    parser.add_argument("--root", default="data", help="cache folder")
    parser.add_argument("--test-variant", default="default", help='"partial" for halfcheetah')
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = envs.ENV_NAMES if args.env == "all" else (args.env,)
    print(f"{'env':12s} {'dataset':9s} {'files':>5s} {'transitions':>12s} {'violations':>10s} "
          f"{'rate':>6s} {'seconds':>8s}")
    for name in names:
        train, test = get_datasets(name, args.preset, args.root, args.test_variant,
                                   progress=True, seed=args.seed)
        files = _read_manifest(os.path.join(args.root, args.preset, name))["files"]
        for label, group in (("train", train), ("test", [test])):
            n = sum(len(d["rewards"]) for d in group)
            v = int(sum(d["costs"].sum() for d in group))
            prefix = "train_" if label == "train" else f"test_{args.test_variant}"
            seconds = sum(e["seconds"] for f, e in files.items() if f.startswith(prefix))
            print(f"{name:12s} {label:9s} {len(group):5d} {n:12d} {v:10d} {v / n:6.3f} "
                  f"{seconds:8.1f}", flush=True)


if __name__ == "__main__":
    main()
