"""Tests of datasets.py: collection rules, determinism, the file format, validation and caching."""
import json
import os
import warnings

import numpy as np
import pytest

import datasets
import envs
from datasets import CollectSpec, DatasetError

warnings.filterwarnings("ignore", module="gymnasium")

TINY_SAC = CollectSpec(n_train=300, n_test=100, rollout_len=None, sac=True, start_steps=100,
                       updates_per_step=0.1)


def nav_data(n=60, seed=0):
    spec = datasets.PRESET_SPECS["smoke"]["navigation1"]
    return datasets.collect("navigation1", envs.test_task("navigation1"), n, seed, spec, False)


def test_dims_match_the_envs():
    for name in envs.ENV_NAMES:
        env = envs.make_env(name)
        assert datasets.DIMS[name] == (env.observation_space.shape[0], env.action_space.shape[0])


@pytest.mark.parametrize("name", ["navigation1", "navigation2", "maze"])
def test_point_env_rollouts_short_varied_safe_starts_and_continue_after_violation(name):
    spec = datasets.PRESET_SPECS["quick"][name]
    env = envs.make_env(name, envs.train_tasks(name)[0]).unwrapped
    d = datasets.collect(name, envs.train_tasks(name)[0], 3000, 0, spec, False)
    ends = d["terminals"] | d["timeouts"]
    assert ends[-1] and not np.any(d["terminals"] & d["timeouts"])
    cont = ~ends[:-1]
    np.testing.assert_array_equal(d["next_observations"][:-1][cont], d["observations"][1:][cont])
    lengths = np.diff(np.flatnonzero(np.r_[True, ends]))
    assert lengths.max() <= spec.rollout_len and np.mean(lengths == spec.rollout_len) > 0.5
    starts = d["observations"][np.r_[0, np.flatnonzero(ends[:-1]) + 1]]
    assert not any(env.violates(s) for s in starts)                 # starts are safe
    assert np.std(starts, axis=0).min() > (1.0 if name != "maze" else 0.05)  # and varied
    assert d["costs"].sum() > 0
    assert np.any((d["costs"][:-1] == 1.0) & cont)                   # violations don't end them
    np.testing.assert_array_equal(d["costs"][:-1][cont & (d["costs"][:-1] == 1)],
                                  d["costs"][1:][cont & (d["costs"][:-1] == 1)])  # sticky


def test_same_seed_same_dataset_random_and_sac():
    a, b, c = nav_data(seed=1), nav_data(seed=1), nav_data(seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in datasets.FIELDS)
    assert not np.array_equal(a["observations"], c["observations"])
    task = envs.train_tasks("cartpole")[0]
    s1 = datasets.collect("cartpole", task, 300, 5, TINY_SAC, True)
    s2 = datasets.collect("cartpole", task, 300, 5, TINY_SAC, True)
    assert all(np.array_equal(s1[k], s2[k]) for k in datasets.FIELDS)
    ends = s1["timeouts"] | s1["terminals"]
    assert ends[-1] and s1["costs"].sum() > 0
    # a violation does not end a training episode: cost-1 rows followed by more of the episode
    assert np.any((s1["costs"][:-1] == 1) & ~ends[:-1])


def test_round_trip_is_exact(tmp_path):
    data = nav_data()
    path = tmp_path / "d.npz"
    task = {"b": (1.3, 0.7)}
    datasets.save_dataset(path, data, env="navigation1", task=task, seed=7)
    out = datasets.load_dataset(path, expected_sha256=datasets.sha256(path))
    for key in datasets.FIELDS:
        assert out[key].dtype == data[key].dtype and np.array_equal(out[key], data[key])
    assert out["task"] == task and out["seed"] == 7 and out["env"] == "navigation1"
    datasets.save_dataset(tmp_path / "c.npz", data, env="navigation1", task={"length": 0.5}, seed=0)
    assert datasets.load_dataset(tmp_path / "c.npz")["task"] == {"length": 0.5}
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]      # no temp file left behind


def _write_raw(path, data, **overrides):
    raw = {**{k: data[k] for k in datasets.FIELDS}, "env": np.array("navigation1"),
           "seed": np.array(0, np.int64), "format_version": np.array(datasets.FORMAT_VERSION),
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
    ({"format_version": np.array(datasets.FORMAT_VERSION + 1)}, "format version"),
    ({"env": np.array("pendulum")}, "unknown env"),
])
def test_corrupt_files_raise_dataset_error(tmp_path, override, message):
    path = tmp_path / "bad.npz"
    _write_raw(path, nav_data(), **override)
    with pytest.raises(DatasetError, match=message) as err:
        datasets.load_dataset(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_checksum_mismatch_truncated_file_and_missing_file(tmp_path):
    path = tmp_path / "d.npz"
    datasets.save_dataset(path, nav_data(), env="navigation1", task={"b": (1.0, 1.0)}, seed=0)
    digest = datasets.sha256(path)
    with pytest.raises(DatasetError, match="sha256"):
        datasets.load_dataset(path, expected_sha256="0" * 64)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DatasetError, match="sha256"):
        datasets.load_dataset(path, expected_sha256=digest)
    with pytest.raises(DatasetError, match="not a readable .npz"):
        datasets.load_dataset(path)
    with pytest.raises(DatasetError, match="file not found"):
        datasets.load_dataset(tmp_path / "nope.npz")
    with pytest.raises(DatasetError, match="costs outside"):          # save validates too
        bad = {**nav_data(), "costs": np.full(60, 3.0, np.float32)}
        datasets.save_dataset(path, bad, env="navigation1", task={}, seed=0)


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
    assert entry["sha256"] == datasets.sha256(os.path.join(folder, "train_03.npz"))

    def no_collect(*args, **kwargs):
        raise AssertionError("cached datasets must not be regenerated")
    monkeypatch.setattr(datasets, "collect", no_collect)
    train2, test2 = datasets.get_datasets("navigation2", "smoke", root=root)
    assert np.array_equal(train2[7]["observations"], train[7]["observations"])

    data = {k: train[3][k].copy() for k in datasets.FIELDS}       # a valid but different file
    data["rewards"][0] += 1.0
    datasets.save_dataset(os.path.join(folder, "train_03.npz"), data, env="navigation2",
                          task=train[3]["task"], seed=train[3]["seed"])
    with pytest.raises(DatasetError, match="train_03.npz: sha256"):
        datasets.get_datasets("navigation2", "smoke", root=root)
    with pytest.raises(ValueError, match="smoke, quick, paper"):
        datasets.get_datasets("navigation2", "huge", root=root)


def test_get_datasets_sac_envs_and_cli(tmp_path, capsys):
    root = str(tmp_path)
    train, test = datasets.get_datasets("halfcheetah", "smoke", root=root, test_variant="partial")
    assert len(train) == 4 and test["task"] == envs.test_task("halfcheetah", "partial")
    assert train[0]["observations"].shape == (1000, 17)
    datasets.main(["--env", "navigation1", "--preset", "smoke", "--root", root])
    out = capsys.readouterr().out
    assert "navigation1  train        20         4000" in out
    again1, _ = datasets.get_datasets("navigation1", "smoke", root=root)
    again2, _ = datasets.get_datasets("navigation1", "smoke", root=str(tmp_path / "other"))
    assert all(np.array_equal(a["observations"], b["observations"]) for a, b in zip(again1, again2))
