"""Offline datasets of the six MESA environments (MESA paper Table 5 and appendix A.3; docs/datasets.md).

Each environment gets N_train training datasets (one per training task, envs.train_tasks), one
test dataset D_test (envs.test_task) and one RRL-oracle dataset (test task, the training data's
kind), generated from seeds by generators.py (which says how), cached as .npz under `data/` and
checked on every load. Cartpole, HalfCheetah and Ant draw D_test, the held-out set and the oracle's
data from one SAC replay in the test task (replay_<variant>.npz), recorded with its sha256.

Each file is one .npz (dataset_files.py: its format, validation and checksum). Each
data/<preset>/<env>/ folder holds a manifest.json with every file's sha256, size in bytes,
transitions, violations, seed and task; cached files are verified against it. Seeds: training
file i uses seed 1000 * seed + i, the oracle (point envs) and the test task's replay
1000 * seed + 997, D_test (point envs) 1000 * seed + 999.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass

import numpy as np

import envs
import point_envs
from common import OneLineParser, atomic_write
from dataset_files import FORMAT_VERSION, DatasetError, describe, load_dataset, regenerate_hint, save_dataset, sha256
from generators import POINT_ENVS, CollectSpec, collect, draw_from_replay, subsample
from replay_buffer import FIELDS

PRESETS = ("smoke", "quick", "paper")
REPLAY_ENVS = ("cartpole", "halfcheetah", "ant")   # SAC-replay data: D_test drawn from the test task's replay


def _point_specs(n_train, tests, oracles):
    return {name: CollectSpec(n_train, n_test, n_oracle, rollout_len=20 if name == "maze" else 10)
            for name, n_test, n_oracle in zip(POINT_ENVS, tests, oracles)}


# Point envs: the paper's sizes in every preset but smoke; RRL-oracle 20K navigation, 10K maze
# (Recovery RL's num_unsafe_transitions). SAC replay: docs/datasets.md gives the measured times.
PRESET_SPECS = {
    "smoke": {**_point_specs(200, (100, 200, 200), (400, 400, 400)),
              "cartpole": CollectSpec(400, 200, 100, 0, 100, 0.25, (16, 16), 16),
              "halfcheetah": CollectSpec(1000, 1000, 100, 0, 200, 0.0, (16, 16), 16),
              "ant": CollectSpec(1000, 1000, 100, 0, 200, 0.0, (16, 16), 16)},
    "quick": {**_point_specs(10_000, (100, 200, 200), (20_000, 20_000, 10_000)),
              "cartpole": CollectSpec(20_000, 1_000, 10_000, 0, 100, 1.0, (64, 64), 64),
              "halfcheetah": CollectSpec(400_000, 40_000, 10_000, 0, 10_000, 0.5, (128, 128), 128),
              "ant": CollectSpec(400_000, 40_000, 10_000, 0, 10_000, 0.5, (128, 128), 128)},
    "paper": {**_point_specs(10_000, (100, 200, 200), (20_000, 20_000, 10_000)),
              "cartpole": CollectSpec(20_000, 1_000, 10_000, 0, 100, 1.0),
              "halfcheetah": CollectSpec(400_000, 40_000, 10_000, 0, 10_000, 1.0),
              "ant": CollectSpec(400_000, 40_000, 10_000, 0, 10_000, 1.0)},
}


# ----------------------------------------------------------------------------- input scaling
def observation_scale(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of a dataset's observations (a constant dimension gets std 1).

    experiment.py standardises every network input with D_test's statistics, for every method alike
    (docs/design.md: raw navigation coordinates saturate the tanh policies).
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
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(f"{path}: datasets of format version {version}, this code reads version "
                           f"{FORMAT_VERSION} (new generators); {regenerate_hint(folder)}")
    return manifest


def _write_manifest(folder: str, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write(os.path.join(folder, "manifest.json"), text)


def _spec_folder(env: str, preset: str, root: str) -> tuple[CollectSpec, str]:
    envs._validate_name(env)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    folder = os.path.join(root, preset, env)
    os.makedirs(folder, exist_ok=True)
    return PRESET_SPECS[preset][env], folder


@dataclass(frozen=True)
class FileJob:
    """One dataset file of one environment: where it goes and how it is collected."""
    folder: str
    fname: str
    env: str
    task: dict
    seed: int
    n: int
    spec: CollectSpec
    kind: str
    variant: str = "mesa"
    source: FileJob | None = None   # the file this one is drawn from (the test task's SAC replay)

    @property
    def path(self) -> str:
        return os.path.join(self.folder, self.fname)

    def recipe(self) -> dict:
        """What the file depends on; stored in the manifest beside its sha256."""
        spec = asdict(self.spec)
        if self.spec.rollout_len:      # the point generators never read it: their files stay valid
            del spec["violation_ends_value"]
        recipe = {"seed": self.seed, "task": {k: list(np.atleast_1d(v)) for k, v in self.task.items()},
                  "transitions": self.n, "kind": self.kind, "variant": self.variant,
                  "spec": json.loads(json.dumps(spec))}
        if self.source is not None:    # absent otherwise: the files without a source stay valid
            recipe["source"] = self.source.fname
        if self.env == "maze":         # files from before the maze took the original's action units are stale
            recipe["action_bound"] = point_envs.MAZE_ACTION_BOUND
        return recipe

    def is_cached(self) -> bool:
        files = _read_manifest(self.folder)["files"]
        entry = files.get(self.fname)
        if entry is None or not os.path.exists(self.path) or any(entry.get(k) != v for k, v in self.recipe().items()):
            return False
        return self.source is None or (self.source.is_cached()
                                       and entry.get("source_sha256") == files[self.source.fname]["sha256"])


def derive(job: FileJob) -> dict[str, np.ndarray]:
    """D_test (the first rows of draw_from_replay) or the oracle's data (a seeded subsample),
    drawn from the job's source, the test task's SAC replay."""
    replay = load_dataset(job.source.path)
    return draw_from_replay(replay, job.n) if job.kind == "test" else subsample(replay, job.n, job.seed)


def write_file(job: FileJob, progress: bool = False) -> dict:
    """Collect one dataset and write its .npz; returns its manifest entry (the caller records it)."""
    t0 = time.time()
    if job.source is None:
        data = collect(job.env, job.task, job.n, job.seed, job.spec, job.kind, progress, job.variant)
    else:
        data = derive(job)
    save_dataset(job.path, data, env=job.env, task=job.task, seed=job.seed)
    if progress:
        print(f"{job.env} {job.fname}: {job.n} transitions, {int(data['costs'].sum())} violations, "
              f"{time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    entry = {**job.recipe(), "sha256": sha256(job.path), "bytes": os.path.getsize(job.path),
             "violations": int(data["costs"].sum()), "seconds": round(time.time() - t0, 1)}
    if job.source is not None:
        entry["source_sha256"] = sha256(job.source.path)
    return entry


def _record(job: FileJob, preset: str, entry: dict) -> None:
    manifest = _read_manifest(job.folder)
    manifest.update(env=job.env, preset=preset)
    manifest["files"][job.fname] = entry
    _write_manifest(job.folder, manifest)


def load_or_collect(jobs: list[FileJob], preset: str, progress: bool = False, workers: int = 1) -> list[dict]:
    """The jobs' datasets: loaded and verified where the manifest lists the same recipe, else
    collected (in `workers` processes, one torch thread each) and recorded in the manifest."""
    missing = [j for j in jobs if not j.is_cached()]
    collected = {j.path: j for j in missing if j.source is None}
    collected.update({j.source.path: j.source for j in missing if j.source is not None and not j.source.is_cached()})
    collected = sorted(collected.values(), key=lambda j: -j.n)   # longest first: the pool finishes sooner
    if workers > 1 and len(collected) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(collected)), mp_context=context) as pool:
            futures = {pool.submit(write_file, j, progress): j for j in collected}
            for future in as_completed(futures):       # the manifest is written by this process only
                _record(futures[future], preset, future.result())
    else:
        for j in collected:
            _record(j, preset, write_file(j, progress))
    for j in missing:                                  # drawn from a source collected above: seconds
        if j.source is not None:
            _record(j, preset, write_file(j, progress))
    entries = {j.folder: _read_manifest(j.folder)["files"] for j in jobs}
    return [load_dataset(j.path, expected_sha256=entries[j.folder][j.fname]["sha256"]) for j in jobs]


def file_jobs(env: str, preset: str, root: str = "data", test_variant: str = "default", seed: int = 0,
              oracle: bool = False, variant: str = "mesa") -> list[FileJob]:
    """The training files, then D_test, then (with oracle) the RRL-oracle's file of env under preset."""
    spec, folder = _spec_folder(env, preset, root)
    jobs = [FileJob(folder, f"train_{i:02d}.npz", env, task, 1000 * seed + i, spec.n_train, spec, "train")
            for i, task in enumerate(envs.train_tasks(env, seed))]
    test_task = envs.test_task(env, test_variant)
    replay = test_replay_job(env, preset, root, test_variant, seed)
    jobs.append(FileJob(folder, f"test_{test_variant}.npz", env, test_task, 1000 * seed + 999, spec.n_test,
                        spec, "test", source=replay))
    if oracle:
        suffix = "" if variant == "mesa" else f"_{variant}"
        jobs.append(FileJob(folder, f"oracle_{test_variant}{suffix}.npz", env, test_task, 1000 * seed + 997,
                            spec.n_oracle, spec, "oracle", variant, source=replay))
    return jobs


def test_replay_job(env: str, preset: str, root: str = "data", test_variant: str = "default",
                    seed: int = 0) -> FileJob | None:
    """The SAC replay in the test task that D_test and the oracle's data of a SAC-replay env are
    drawn from (None for the point envs, whose generator makes them directly)."""
    if env not in REPLAY_ENVS:
        return None
    spec, folder = _spec_folder(env, preset, root)
    return FileJob(folder, f"replay_{test_variant}.npz", env, envs.test_task(env, test_variant),
                   1000 * seed + 997, spec.n_train, spec, "replay")


test_replay_job.__test__ = False                  # not a pytest test, even when imported into one


def get_datasets(env: str, preset: str, root: str = "data", test_variant: str = "default",
                 progress: bool = False, seed: int = 0, workers: int = 1) -> tuple[list[dict], dict]:
    """(training datasets, D_test) of `env` under `preset`, generating what is missing."""
    loaded = load_or_collect(file_jobs(env, preset, root, test_variant, seed), preset, progress, workers)
    return loaded[:-1], loaded[-1]


def get_oracle(env: str, preset: str, root: str = "data", test_variant: str = "default",
               progress: bool = False, seed: int = 0, variant: str = "mesa") -> dict:
    """The RRL-oracle's data: n_oracle test-environment transitions of the training data's kind
    (a subsample of the test task's SAC replay on Cartpole, HalfCheetah and Ant).

    variant "rrl" is Recovery RL's Navigation-2 generator (the Recovery RL check only).
    """
    job = file_jobs(env, preset, root, test_variant, seed, oracle=True, variant=variant)[-1]
    return load_or_collect([job], preset, progress)[0]


def get_heldout(env: str, preset: str, root: str, test_variant: str, n: int, seed: int, data_seed: int = 0) -> dict:
    """n transitions from D_test's generator in the test task that D_test does not hold; cached.

    Point envs: the generator again, with its own seed. Cartpole, HalfCheetah, Ant: rows of the
    test task's SAC replay past D_test's (draw_from_replay), in a file named after that replay's
    checksum, so a regenerated replay never meets a stale held-out set.
    """
    replay = test_replay_job(env, preset, root, test_variant, data_seed)
    folder = _spec_folder(env, preset, root)[1]
    if replay is None:
        path = os.path.join(folder, f"heldout_{test_variant}.npz")
    else:
        source = load_or_collect([replay], preset)[0]
        checksum = _read_manifest(folder)["files"][replay.fname]["sha256"][:10]
        path = os.path.join(folder, f"heldout_{test_variant}_{checksum}.npz")
    if os.path.exists(path):
        data = load_dataset(path)
        if data["seed"] == seed and len(data["rewards"]) == n:
            return data
    task = envs.test_task(env, test_variant)
    spec = PRESET_SPECS[preset][env]
    data = (collect(env, task, n, seed, spec, "test") if replay is None
            else draw_from_replay(source, n, skip=spec.n_test))
    save_dataset(path, data, env=env, task=task, seed=seed)
    return load_dataset(path)


def _row(name: str, label: str, group: list[dict], seconds: float) -> str:
    counts = [describe(name, d) for d in group]
    n, v, e = (sum(c[k] for c in counts) for k in ("transitions", "violations", "events"))
    near = sum(c["near_obstacle"] * c["transitions"] for c in counts) / n
    near_text = "-" if np.isnan(near) else f"{near:.3f}"
    return (f"{name:12s} {label:8s} {len(group):5d} {n:11d} {v:10d} {v / n:6.3f} {e:7d} "
            f"{near_text:>7s} {seconds:8.1f}")


def main(argv=None) -> None:
    parser = OneLineParser(
        description="Generate (or load and verify) the offline datasets and print what they hold. "
                    "The locomotion environments run an SAC per task: docs/datasets.md gives the times.")
    parser.add_argument("--env", required=True, choices=("all",) + envs.ENV_NAMES,
                        help="which environment, or all (the SAC-replay environments take an hour or more each)")
    parser.add_argument("--preset", default="quick", choices=PRESETS,
                        help="dataset sizes (default: %(default)s)")
    parser.add_argument("--root", default="data", help="cache folder (default: %(default)s)")
    parser.add_argument("--test-variant", default="default", help='test task: "partial" for halfcheetah')
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="files collected in parallel processes (default: the number of cores, %(default)s)")
    args = parser.parse_args(argv)
    names = envs.ENV_NAMES if args.env == "all" else (args.env,)
    print(f"{'env':12s} {'dataset':8s} {'files':>5s} {'transitions':>11s} {'violations':>10s} "
          f"{'rate':>6s} {'events':>7s} {'near':>7s} {'seconds':>8s}")
    for name in names:
        try:
            jobs = file_jobs(name, args.preset, args.root, args.test_variant, args.seed, oracle=True)
            *train, test, oracle = load_or_collect(jobs, args.preset, True, args.workers)
        except (DatasetError, ValueError) as e:
            parser.exit(2, f"datasets.py: error: {e}\n")
        files = _read_manifest(os.path.join(args.root, args.preset, name))["files"]
        groups = [("train", train, "train_"), ("test", [test], "test_"), ("oracle", [oracle], "oracle_")]
        replay = test_replay_job(name, args.preset, args.root, args.test_variant, args.seed)
        if replay is not None:
            groups.insert(1, ("replay", load_or_collect([replay], args.preset), "replay_"))
        for label, group, prefix in groups:
            seconds = sum(e["seconds"] for f, e in files.items() if f.startswith(prefix))
            print(_row(name, label, group, seconds), flush=True)
    print("events: violations that entered the constraint set (not a repeat of the state before); "
          "near: share of states in Navigation 1's path corridor or within 5 of Navigation 2's obstacle")


if __name__ == "__main__":
    main()
