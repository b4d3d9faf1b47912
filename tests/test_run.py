"""run.py end to end on the smoke preset, its argument checks, and report.py's AUROC and labels."""
import csv
import itertools
import json
import os

import numpy as np
import pytest

import report
import run

ENVS = ("navigation1", "cartpole")


def smoke(out, data_root, *extra):
    run.main(["--preset", "smoke", "--seeds", "1", "--workers", "1", "--threads", "1", "--no-progress",
              "--out", str(out), "--data-root", str(data_root), *extra])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("results")
    smoke(out, data_root, "--env", ",".join(ENVS))
    return out


def test_smoke_sweep_writes_every_file(sweep):
    for env in ENVS:
        for name in ("summary.md", "cumulative_violations.png", "learning_curve.png"):
            assert os.path.getsize(sweep / env / name) > 0
        summary = (sweep / env / "summary.md").read_text()
        for method in run.METHODS:
            folder = sweep / env / method / "seed0"
            with open(folder / "episodes.csv") as f:
                rows = list(csv.DictReader(f))
            assert tuple(rows[0]) == report.COLUMNS
            assert len(rows) == 2                                   # smoke: 2 Phase-3 episodes
            violations = np.array([int(r["violation"]) for r in rows])
            assert [int(r["cumulative_violations"]) for r in rows] == np.cumsum(violations).tolist()
            steps = [int(r["env_steps"]) for r in rows]
            assert steps == np.cumsum([int(r["length"]) for r in rows]).tolist()
            config = json.loads((folder / "config.json").read_text())
            assert config["method"] == method and config["hyperparameters"]["sac"]["hidden"] == [16, 16]
            assert {"torch", "numpy", "gymnasium", "mujoco", "python", "git_commit"} <= set(config["versions"])
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["timings"]["phase3"] > 0
            if method == "unconstrained":
                assert not (folder / "phase2.pt").exists() and metrics["critic"] == {}
            else:
                assert (folder / "phase2.pt").exists()
                quality = metrics["critic"]["after_phase2"]
                assert 0 <= quality["loss"] < 1 and quality["transitions"] == run.HELDOUT_SIZE["smoke"]
            assert report.LABELS[method] in summary


def test_rerun_skips_finished_runs(sweep, data_root, capsys):
    csv_path = sweep / "navigation1" / "mesa" / "seed0" / "episodes.csv"
    before = os.stat(csv_path).st_mtime_ns
    smoke(sweep, data_root, "--env", "navigation1")
    out = capsys.readouterr().out
    assert out.count("skipped navigation1/") == len(run.METHODS) and "done " not in out
    assert os.stat(csv_path).st_mtime_ns == before


def test_changed_config_reruns_and_reuses_cached_phase2(sweep, data_root, capsys):
    """More Phase-3 episodes change the run key (rerun) but not the Phase-2 key (cache hit)."""
    smoke(sweep, data_root, "--env", "navigation1", "--methods", "rrl", "--episodes", "3")
    assert "done navigation1/rrl/seed0" in capsys.readouterr().out
    folder = sweep / "navigation1" / "rrl" / "seed0"
    assert json.loads((folder / "metrics.json").read_text())["phase2_cached"] is True
    assert len((folder / "episodes.csv").read_text().splitlines()) == 1 + 3


def test_same_seed_reproduces_episodes_with_and_without_cache(tmp_path, data_root):
    """Run b is fresh; run a first stops at 3 episodes, then reruns with 4 from its cached Phase 2.

    No random warm-up and a filter that never fires: every action is a sample of the task policy,
    so any change of the random state shows in the returns.
    """
    for out, episodes in (("a", "3"), ("a", "4"), ("b", "4")):
        smoke(tmp_path / out, data_root, "--env", "navigation1", "--methods", "mesa", "unconstrained",
              "--episodes", episodes, "--sac-start-steps", "0", "--recovery-eps-risk", "1.0")
    assert json.loads((tmp_path / "a/navigation1/mesa/seed0/metrics.json").read_text())["phase2_cached"]
    for method in ("mesa", "unconstrained"):
        a, b = (tmp_path / out / "navigation1" / method / "seed0" / "episodes.csv" for out in ("a", "b"))
        assert a.read_text() == b.read_text()


def test_workers_run_jobs_in_parallel_processes(tmp_path, data_root):
    smoke(tmp_path, data_root, "--env", "navigation1", "--methods", "rrl", "--seeds", "0,1",
          "--workers", "2")
    for seed in (0, 1):
        assert (tmp_path / "navigation1" / "rrl" / f"seed{seed}" / "episodes.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["--env", "moon"], "unknown environment 'moon'"),
    (["--methods", "mesa,sqrl"], "unknown method 'sqrl'"),
    (["--recovery-eps-risk", "1.5"], "eps_risk must lie in [0, 1], got 1.5"),
    (["--episodes", "-3"], "--episodes must be >= 1"),
    (["--sac-batch-size", "0"], "SAC batch size must be >= 1"),
    (["--meta-steps", "-1"], "meta steps must be >= 0"),
    (["--seeds", "x"], "--seeds takes integers"),
    (["--test-fraction", "0"], "--test-fraction must lie in (0, 1]"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_corrupt_dataset_exits_2(tmp_path, capsys):
    smoke(tmp_path / "r", tmp_path / "d", "--env", "navigation1", "--methods", "unconstrained")
    test_file = tmp_path / "d" / "smoke" / "navigation1" / "test_default.npz"
    test_file.write_bytes(b"not a zip file")
    with pytest.raises(SystemExit) as exit_info:
        smoke(tmp_path / "r2", tmp_path / "d", "--env", "navigation1")
    assert exit_info.value.code == 2
    assert "test_default.npz" in capsys.readouterr().err


def test_bool_options_parse_both_ways():
    parser = run.build_parser()
    assert vars(parser.parse_args(["--no-meta-second-order"]))["meta.second_order"] is False
    assert vars(parser.parse_args(["--sac-autotune"]))["sac.autotune"] is True
    assert "meta.second_order" not in vars(parser.parse_args([]))     # unset: the preset's value


# ----------------------------------------------------------------------------- report.py

def test_auroc_hand_computed_with_ties():
    # positives {0.5, 0.9}, negatives {0.5, 0.2}: pairs 0.5~0.5 -> 1/2, the other three -> 1.
    assert report.auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(3.5 / 4)
    assert report.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert report.auroc([0.3, 0.3, 0.3], [1, 0, 0]) == pytest.approx(0.5)
    assert np.isnan(report.auroc([0.1, 0.2], [0, 0]))


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.3   # many ties
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0)
             for p, n in itertools.product(scores[labels], scores[~labels])]
    assert report.auroc(scores, labels) == pytest.approx(np.mean(pairs))


def test_danger_labels_stay_within_rollouts():
    costs = np.array([0, 0, 0, 1, 0, 0, 0, 0, 1], np.float32)
    ends = np.array([0, 0, 0, 0, 0, 1, 0, 0, 0], bool)        # rollout 1: rows 0-5, rollout 2: rows 6-8
    labels = report.danger_labels(costs, ends, np.zeros(9, bool), horizon=2)
    # row 0 is 3 steps before the violation (> 2); rows 4-5 come after it; row 5 ends the rollout
    assert labels.tolist() == [False, True, True, True, False, False, True, True, True]
    timeout_labels = report.danger_labels(costs, np.zeros(9, bool), ends, horizon=2)
    assert timeout_labels.tolist() == labels.tolist()


def test_paper_preset_is_the_paper():
    hp, episodes = run.preset_config("halfcheetah", "paper")
    assert (hp.meta.steps, hp.meta.tasks_per_step, hp.meta.inner_lr, hp.meta.outer_lr) == (15000, 5, 1e-3, 1e-5)
    assert hp.sac.hidden == (256, 256) and hp.recovery.pos_fraction == 0.3 and episodes == run.PAPER_EPISODES["halfcheetah"]
    hp, _ = run.preset_config("navigation2", "paper")
    assert (hp.adapt.steps, hp.adapt.batch_size, hp.rrl.steps, hp.recovery.gamma_risk) == (100, 64, 2000, 0.65)
