"""Tests of datasets.py: collection rules, determinism, the file format, validation and caching."""
import json
import os
import warnings

import numpy as np
import torch
import pytest

import dataset_files
import datasets
import envs
import generators
import point_envs
from datasets import CollectSpec, DatasetError

warnings.filterwarnings("ignore", module="gymnasium")

TINY_SAC = CollectSpec(n_train=300, n_test=100, n_oracle=50, start_steps=100, updates_per_step=0.1,
                       sac_hidden=(16, 16), sac_batch=16)


def nav_data(n=60, seed=0):
    spec = datasets.PRESET_SPECS["smoke"]["navigation1"]
    return generators.collect("navigation1", envs.test_task("navigation1"), n, seed, spec, "train")


def episode_starts(d):
    ends = d["terminals"] | d["timeouts"]
    return np.r_[0, np.flatnonzero(ends[:-1]) + 1], ends


def test_dims_match_the_envs():
    for name in envs.ENV_NAMES:
        env = envs.make_env(name)
        assert generators.DIMS[name] == (env.observation_space.shape[0], env.action_space.shape[0])


@pytest.mark.parametrize("name", ["navigation1", "navigation2", "maze"])
@pytest.mark.parametrize("kind", ["train", "test"])
def test_point_env_rollouts_end_at_the_first_violation(name, kind):
    spec = datasets.PRESET_SPECS["quick"][name]
    task = envs.train_tasks(name)[0] if kind == "train" else envs.test_task(name)
    env = envs.make_env(name, task).unwrapped
    d = generators.collect(name, task, 3000, 0, spec, kind)
    starts, ends = episode_starts(d)
    assert ends[-1] and not np.any(d["terminals"] & d["timeouts"])
    cont = ~ends[:-1]
    np.testing.assert_array_equal(d["next_observations"][:-1][cont], d["observations"][1:][cont])
    lengths = np.diff(np.r_[starts, len(ends)])
    assert lengths.max() <= spec.rollout_len
    assert not any(env.violates(s) for s in d["observations"])        # no row starts in violation
    assert d["costs"].sum() > 0 and np.all(d["terminals"][d["costs"] == 1])   # a violation ends it
    assert dataset_files.violation_events(d) == d["costs"].sum()             # no stuck repeats
    assert np.std(d["observations"][starts], axis=0).min() > (1.0 if name != "maze" else 0.05)


def test_navigation1_data_lies_in_the_corridor():
    """61% of the authors' Navigation-1 transitions lie in the path corridor (|y| < 5, -80 < x < 0)."""
    d = nav_data(n=10_000)
    share = dataset_files.near_obstacle_share("navigation1", d["observations"])
    assert 0.55 < share < 0.67
    starts, _ = episode_starts(d)
    x, y = d["observations"][starts].T
    assert np.all((x > -80) & (x < 50) & (np.abs(y) > 2) & (np.abs(y) < 5))
    assert 0.02 < d["costs"].mean() < 0.1                                 # paper: 6.8%


def test_navigation2_blocks_aim_at_the_obstacle_and_rrl_variant_adds_uniform_starts():
    spec = datasets.PRESET_SPECS["quick"]["navigation2"]
    task = envs.test_task("navigation2")
    mesa_data = generators.collect("navigation2", task, 8000, 0, spec, "train")
    rrl_data = generators.collect("navigation2", task, 8000, 0, spec, "oracle", variant="rrl")
    assert 0.06 < mesa_data["costs"].mean() < 0.2                         # paper: 12%
    near = [dataset_files.near_obstacle_share("navigation2", d["observations"]) for d in (mesa_data, rrl_data)]
    assert near[0] > 0.8 and near[1] < near[0] - 0.2
    starts, _ = episode_starts(mesa_data)
    x, y = mesa_data["observations"][starts].T
    assert np.all((x >= -35) & (x <= -15) & (np.abs(y) <= 15))


def test_maze_segments_mix_random_and_expert_from_three_bands():
    spec = datasets.PRESET_SPECS["quick"]["maze"]
    d = generators.collect("maze", envs.test_task("maze"), 4000, 0, spec, "train")
    starts, _ = episode_starts(d)
    x = d["observations"][starts, 0]
    bands = [np.mean((x > lo) & (x < hi)) for _, (lo, hi) in generators.MAZE_START_BANDS]
    assert all(abs(b - p) < 0.1 for b, (p, _) in zip(bands, generators.MAZE_START_BANDS))
    largest = np.abs(d["actions"]).max()                  # the original's action units: |a| <= 0.1
    assert 0.09 < largest <= np.float32(point_envs.MAZE_ACTION_BOUND)


def test_sac_replay_goes_on_after_a_violation_and_oracle_is_a_sample():
    task = envs.train_tasks("cartpole")[0]
    s1 = generators.collect("cartpole", task, 300, 5, TINY_SAC, "train")
    s2 = generators.collect("cartpole", task, 300, 5, TINY_SAC, "train")
    assert all(np.array_equal(s1[k], s2[k]) for k in datasets.FIELDS)
    _, ends = episode_starts(s1)
    assert ends[-1] and s1["costs"].sum() > 0
    assert np.any((s1["costs"][:-1] == 1) & ~ends[:-1])          # the episode goes on after a violation
    assert dataset_files.violation_events(s1) < s1["costs"].sum()
    oracle = generators.collect("cartpole", envs.test_task("cartpole"), 50, 5, TINY_SAC, "oracle")
    assert len(oracle["rewards"]) == 50
    with pytest.raises(ValueError, match="unknown dataset kind"):
        generators.collect("cartpole", task, 10, 0, TINY_SAC, "holdout")


def test_collector_learns_as_if_a_violation_ended_the_episode():
    """The collecting SAC's batch marks violations terminal (no value after a flip); the stored
    dataset keeps its own terminals, and the option off leaves the batch alone."""
    batch = {"cost": torch.tensor([0.0, 1.0, 0.0]), "done": torch.tensor([0.0, 0.0, 1.0])}
    assert generators.collector_batch(dict(batch), True)["done"].tolist() == [0.0, 1.0, 1.0]
    assert generators.collector_batch(dict(batch), False)["done"].tolist() == [0.0, 0.0, 1.0]
    assert datasets.PRESET_SPECS["quick"]["halfcheetah"].violation_ends_value


def test_violation_events_count_entries_not_repeats():
    costs = np.array([0, 1, 1, 0, 1, 1, 1], np.float32)
    terminals = np.zeros(7, bool)
    timeouts = np.array([0, 0, 1, 0, 0, 0, 1], bool)                 # two episodes: rows 0-2, 3-6
    d = {"costs": costs, "terminals": terminals, "timeouts": timeouts}
    assert dataset_files.violation_events(d) == 2
    d["timeouts"] = np.array([0, 1, 0, 0, 0, 0, 1], bool)            # row 2 starts a new episode
    assert dataset_files.violation_events(d) == 3


def test_same_seed_same_dataset():
    a, b, c = nav_data(seed=1), nav_data(seed=1), nav_data(seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in datasets.FIELDS)
    assert not np.array_equal(a["observations"], c["observations"])


def test_round_trip_is_exact(tmp_path):
    data = nav_data()
    path = tmp_path / "d.npz"
    task = {"b": (1.3, 0.7)}
    dataset_files.save_dataset(path, data, env="navigation1", task=task, seed=7)
    out = dataset_files.load_dataset(path, expected_sha256=dataset_files.sha256(path))
    for key in datasets.FIELDS:
        assert out[key].dtype == data[key].dtype and np.array_equal(out[key], data[key])
    assert out["task"] == task and out["seed"] == 7 and out["env"] == "navigation1"
    dataset_files.save_dataset(tmp_path / "c.npz", data, env="navigation1", task={"length": 0.5}, seed=0)
    assert dataset_files.load_dataset(tmp_path / "c.npz")["task"] == {"length": 0.5}
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]      # no temp file left behind


def _write_raw(path, data, **overrides):
    raw = {**{k: data[k] for k in datasets.FIELDS}, "env": np.array("navigation1"),
           "seed": np.array(0, np.int64), "format_version": np.array(dataset_files.FORMAT_VERSION),
           "task_b": np.array([1.0, 1.0])}
    raw.update(overrides)
    raw = {k: v for k, v in raw.items() if v is not None}
    with open(path, "wb") as f:
        np.savez(f, **raw)


@pytest.mark.parametrize("override,message", [
    ({"costs": None}, "missing key 'costs'"),
    ({"format_version": None}, "missing key 'format_version'"),
    ({"actions": np.zeros((60, 3), np.float32)}, "actions has shape"),
    ({"rewards": np.zeros(59, np.float32)}, "rewards has shape"),
    ({"observations": np.zeros((60, 2), np.float64)}, "observations has dtype"),
    ({"terminals": np.zeros(60, np.float32)}, "terminals has dtype"),
    ({"rewards": np.r_[np.zeros(59), np.nan].astype(np.float32)}, "rewards has non-finite"),
    ({"next_observations": np.full((60, 2), np.inf, np.float32)}, "next_observations has non-finite"),
    ({"costs": np.r_[np.zeros(59), 3.0].astype(np.float32)}, r"costs outside \{0, 1\}"),
    ({"format_version": np.array(dataset_files.FORMAT_VERSION + 1)}, "format version"),
    ({"env": np.array("pendulum")}, "unknown env"),
])
def test_corrupt_files_raise_dataset_error(tmp_path, override, message):
    path = tmp_path / "bad.npz"
    _write_raw(path, nav_data(), **override)
    with pytest.raises(DatasetError, match=message) as err:
        dataset_files.load_dataset(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_checksum_mismatch_truncated_file_and_missing_file(tmp_path):
    path = tmp_path / "d.npz"
    dataset_files.save_dataset(path, nav_data(), env="navigation1", task={"b": (1.0, 1.0)}, seed=0)
    digest = dataset_files.sha256(path)
    with pytest.raises(DatasetError, match="sha256"):
        dataset_files.load_dataset(path, expected_sha256="0" * 64)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DatasetError, match="sha256"):
        dataset_files.load_dataset(path, expected_sha256=digest)
    with pytest.raises(DatasetError, match="not a readable .npz"):
        dataset_files.load_dataset(path)
    with pytest.raises(DatasetError, match="file not found"):
        dataset_files.load_dataset(tmp_path / "nope.npz")
    with pytest.raises(DatasetError, match="costs outside"):          # save validates too
        bad = {**nav_data(), "costs": np.full(60, 3.0, np.float32)}
        dataset_files.save_dataset(path, bad, env="navigation1", task={}, seed=0)


def test_get_datasets_generates_caches_and_verifies(tmp_path, monkeypatch):
    root = str(tmp_path)
    train, test = datasets.get_datasets("navigation2", "smoke", root=root)
    spec = datasets.PRESET_SPECS["smoke"]["navigation2"]
    assert len(train) == 25 and all(len(d["rewards"]) == spec.n_train for d in train)
    assert len(test["rewards"]) == spec.n_test and test["task"] == envs.test_task("navigation2")
    assert [d["task"] for d in train] == envs.train_tasks("navigation2")
    folder = os.path.join(root, "smoke", "navigation2")
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    entry = manifest["files"]["train_03.npz"]
    assert entry["violations"] == int(train[3]["costs"].sum())
    assert entry["sha256"] == dataset_files.sha256(os.path.join(folder, "train_03.npz"))

    def no_collect(*args, **kwargs):
        raise AssertionError("cached datasets must not be regenerated")
    monkeypatch.setattr(datasets, "collect", no_collect)
    monkeypatch.setattr(datasets, "write_file", no_collect)
    train2, test2 = datasets.get_datasets("navigation2", "smoke", root=root)
    assert np.array_equal(train2[7]["observations"], train[7]["observations"])

    data = {k: train[3][k].copy() for k in datasets.FIELDS}       # a valid but different file
    data["rewards"][0] += 1.0
    dataset_files.save_dataset(os.path.join(folder, "train_03.npz"), data, env="navigation2",
                          task=train[3]["task"], seed=train[3]["seed"])
    with pytest.raises(DatasetError, match="train_03.npz: sha256"):
        datasets.get_datasets("navigation2", "smoke", root=root)
    with pytest.raises(ValueError, match="smoke, quick, paper"):
        datasets.get_datasets("navigation2", "huge", root=root)


def test_old_format_version_is_refused_with_how_to_regenerate(tmp_path):
    root = str(tmp_path)
    datasets.get_datasets("navigation1", "smoke", root=root)
    folder = os.path.join(root, "smoke", "navigation1")
    manifest_path = os.path.join(folder, "manifest.json")
    manifest = json.load(open(manifest_path))
    manifest["format_version"] = 1
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(DatasetError, match="format version 1") as err:
        datasets.get_datasets("navigation1", "smoke", root=root)
    assert f"delete {folder}" in str(err.value) and "\n" not in str(err.value)
    path = tmp_path / "old.npz"
    _write_raw(path, nav_data(), format_version=np.array(1))
    with pytest.raises(DatasetError, match="format version 1, expected 2; delete"):
        dataset_files.load_dataset(path)


def test_get_datasets_sac_envs_oracle_and_cli(tmp_path, capsys):
    root = str(tmp_path)
    train, test = datasets.get_datasets("halfcheetah", "smoke", root=root, test_variant="partial")
    assert len(train) == 4 and test["task"] == envs.test_task("halfcheetah", "partial")
    assert train[0]["observations"].shape == (1000, 17)
    oracle = datasets.get_oracle("navigation2", "smoke", root=root, variant="rrl")
    assert len(oracle["rewards"]) == datasets.PRESET_SPECS["smoke"]["navigation2"].n_oracle
    assert oracle["task"] == envs.test_task("navigation2")
    datasets.main(["--env", "navigation1", "--preset", "smoke", "--root", root, "--workers", "1"])
    out = capsys.readouterr().out
    assert "navigation1  train       20        4000" in out and "oracle" in out
    again1, _ = datasets.get_datasets("navigation1", "smoke", root=root)
    again2, _ = datasets.get_datasets("navigation1", "smoke", root=str(tmp_path / "other"), workers=2)
    assert all(np.array_equal(a["observations"], b["observations"]) for a, b in zip(again1, again2))


def _rows(data: dict) -> list[bytes]:
    return [r.tobytes() for r in np.c_[data["observations"], data["actions"]]]


def test_sac_replay_envs_draw_d_test_heldout_and_oracle_from_the_test_tasks_replay(tmp_path):
    """D_test, the held-out set and the oracle's data are rows of one SAC replay in the test task
    (the paper's D_test counts are a replay's, docs/datasets.md); held-out never repeats D_test,
    and a regenerated replay is noticed."""
    root = str(tmp_path)
    _, test = datasets.get_datasets("cartpole", "smoke", root=root)
    job = datasets.test_replay_job("cartpole", "smoke", root)
    replay = dataset_files.load_dataset(job.path)
    assert replay["task"] == test["task"] == envs.test_task("cartpole") and len(replay["rewards"]) == 400
    heldout = datasets.get_heldout("cartpole", "smoke", root, "default", 200, 998)
    oracle = datasets.get_oracle("cartpole", "smoke", root=root)
    replay_rows = set(_rows(replay))
    assert set(_rows(test)) <= replay_rows and set(_rows(heldout)) <= replay_rows
    assert set(_rows(oracle)) <= replay_rows
    assert not set(_rows(heldout)) & set(_rows(test))
    assert datasets.test_replay_job("navigation1", "smoke", root) is None

    changed = {**replay, "actions": -replay["actions"]}         # as if the replay had been collected again
    dataset_files.save_dataset(job.path, changed, env="cartpole", task=replay["task"], seed=replay["seed"])
    entry = json.load(open(os.path.join(job.folder, "manifest.json")))["files"][job.fname]
    datasets._record(job, "smoke", {**entry, "sha256": dataset_files.sha256(job.path)})
    test_job = datasets.file_jobs("cartpole", "smoke", root)[-1]
    assert not test_job.is_cached()
    _, test_again = datasets.get_datasets("cartpole", "smoke", root=root)
    assert set(_rows(test_again)) <= set(_rows(changed))
    assert not set(_rows(datasets.get_heldout("cartpole", "smoke", root, "default", 200, 998))) & set(_rows(heldout))
