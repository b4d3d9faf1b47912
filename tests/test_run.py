"""run.py end to end on the smoke preset, its argument checks, and report.py's AUROC and labels."""
import csv
import dataclasses
import itertools
import json
import os

import copy

import numpy as np
import pytest
import torch

import datasets
import experiment
import mesa
import presets
import report
import run
import sac as sac_module
from recovery_rl import RecoveryConfig, Safety

ENVS = ("navigation1", "cartpole")


def smoke(out, data_root, *extra):
    run.main(["--preset", "smoke", "--seeds", "1", "--workers", "1", "--threads", "1", "--no-progress",
              "--out", str(out), "--data-root", str(data_root), *extra])


def config_dir(out, *extra):
    """The configuration folder run.py writes under --out for the smoke preset and these options."""
    return out / run.config_name(run.build_parser().parse_args(["--preset", "smoke", *extra]))


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
            assert os.path.getsize(sweep / "smoke" / env / name) > 0
        summary = (sweep / "smoke" / env / "summary.md").read_text()
        for method in mesa.METHODS:
            folder = sweep / "smoke" / env / method / "seed0"
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
            final = torch.load(folder / "final.pt", weights_only=True)       # the trained agent
            assert final["key"] == config["run_key"] and "actor" in final["sac"]
            assert (final["safety"] is None) == (method == "unconstrained")
            if method == "unconstrained":
                assert not (folder / "phase2.pt").exists() and metrics["critic"] == {}
            else:
                assert (folder / "phase2.pt").exists()
                quality = metrics["critic"]["after_phase2"]
                assert 0 <= quality["loss"] < 1 and quality["transitions"] == experiment.HELDOUT_SIZE["smoke"]
            assert report.LABELS[method] in summary


def test_rerun_skips_finished_runs(sweep, data_root, capsys):
    csv_path = sweep / "smoke" / "navigation1" / "mesa" / "seed0" / "episodes.csv"
    before = os.stat(csv_path).st_mtime_ns
    smoke(sweep, data_root, "--env", "navigation1")
    out = capsys.readouterr().out
    assert out.count("skipped navigation1/") == len(mesa.METHODS) and "done " not in out
    assert os.stat(csv_path).st_mtime_ns == before


def test_changed_config_reruns_and_reuses_cached_phase2(sweep, data_root, capsys):
    """More Phase-3 episodes change the run key (rerun) but not the Phase-2 key (cache hit)."""
    before = (sweep / "smoke" / "navigation1" / "rrl" / "seed0" / "episodes.csv").read_text()
    smoke(sweep, data_root, "--env", "navigation1", "--methods", "rrl", "--episodes", "3")
    assert "done navigation1/rrl/seed0" in capsys.readouterr().out
    folder = config_dir(sweep, "--episodes", "3") / "navigation1" / "rrl" / "seed0"
    assert folder.parent.parent.parent.name == "smoke_episodes-3"
    assert json.loads((folder / "metrics.json").read_text())["phase2_cached"] is True
    assert len((folder / "episodes.csv").read_text().splitlines()) == 1 + 3
    assert (sweep / "smoke" / "navigation1" / "rrl" / "seed0" / "episodes.csv").read_text() == before


def test_same_seed_reproduces_episodes_with_and_without_cache(tmp_path, data_root):
    """Run b is fresh; run a first stops at 3 episodes, then reruns with 4 from its cached Phase 2.

    No random warm-up and a filter that never fires: every action is a sample of the task policy,
    so any change of the random state shows in the returns.
    """
    options = ("--sac-start-steps", "0", "--recovery-eps-risk", "1.0")
    for out, episodes in (("a", "3"), ("a", "4"), ("b", "4")):
        smoke(tmp_path / out, data_root, "--env", "navigation1", "--methods", "mesa", "unconstrained",
              "--episodes", episodes, *options)
    a_dir, b_dir = (config_dir(tmp_path / out, "--episodes", "4", *options) for out in ("a", "b"))
    assert json.loads((a_dir / "navigation1/mesa/seed0/metrics.json").read_text())["phase2_cached"]
    for method in ("mesa", "unconstrained"):
        a, b = (d / "navigation1" / method / "seed0" / "episodes.csv" for d in (a_dir, b_dir))
        assert a.read_text() == b.read_text()


def test_workers_run_jobs_in_parallel_processes(tmp_path, data_root):
    smoke(tmp_path, data_root, "--env", "navigation1", "--methods", "rrl", "--seeds", "0,1",
          "--workers", "2")
    for seed in (0, 1):
        assert (tmp_path / "smoke" / "navigation1" / "rrl" / f"seed{seed}" / "episodes.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["--env", "moon"], "unknown environment 'moon'"),
    (["--methods", "mesa,sarsa"], "unknown method 'sarsa'"),
    (["--recovery-eps-risk", "1.5"], "eps_risk must lie in [0, 1], got 1.5"),
    (["--episodes", "-3"], "--episodes must be >= 1"),
    (["--sac-batch-size", "0"], "SAC batch size must be >= 1"),
    (["--meta-steps", "-1"], "meta steps must be >= 0"),
    (["--seeds", "x"], "--seeds takes integers"),
    (["--test-fraction", "0"], "--test-fraction must lie in (0, 1]"),
    (["--meta-target", "psi"], "meta target must be one of lagged, current"),
    (["--mesa-variant", "theirs"], "invalid choice: 'theirs'"),
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
    hp, episodes = presets.preset_config("halfcheetah", "paper")
    assert (hp.meta.steps, hp.meta.tasks_per_step, hp.meta.inner_lr, hp.meta.outer_lr) == (15000, 5, 1e-3, 1e-5)
    assert hp.sac.hidden == (256, 256) and hp.recovery.pos_fraction == 0.3 and episodes == 500
    assert hp.sac.start_steps == 10000 and hp.rrl.steps == 10000
    hp, episodes = presets.preset_config("navigation2", "paper")
    assert (hp.adapt.steps, hp.adapt.batch_size, hp.rrl.steps, hp.recovery.gamma_risk) == (100, 64, 10000, 0.65)
    assert hp.sac.start_steps == 100 and episodes == 300 and hp.recovery.target_policy == "task"
    hp, episodes = presets.preset_config("maze", "paper")
    assert (hp.recovery.gamma_risk, hp.recovery.eps_risk, hp.recovery.pos_fraction, episodes) == (0.5, 0.15, 0.3, 500)
    hp, episodes = presets.preset_config("ant", "paper")
    assert (hp.rrl.steps, hp.recovery.eps_risk, episodes) == (15000, 0.3, 1000)
    assert presets.preset_config("cartpole", "paper")[1] == 400


def test_composite_target_is_an_option_of_run(tmp_path, data_root):
    parser = run.build_parser()
    args = vars(parser.parse_args(["--recovery-target-policy", "composite"]))
    assert args["recovery.target_policy"] == "composite"


def test_mesa_variant_authors_sets_every_item_and_nothing_else():
    assert run.build_parser().parse_args(["--mesa-variant", "authors"]).mesa_variant == "authors"
    assert run.build_parser().parse_args([]).mesa_variant == "paper"
    paper = {m: presets.job_config("halfcheetah", m, "quick", "paper", {})[0] for m in mesa.METHODS}
    authors = {m: presets.job_config("halfcheetah", m, "quick", "authors", {})[0] for m in mesa.METHODS}
    meta = authors["mesa"].meta
    assert (meta.learn_inner_lr, meta.inner_lr_lr, meta.outer_grad_clip, meta.pi_rec_lr, meta.target) == \
        (True, 1e-3, 40.0, 1e-4, "current")
    assert authors["mesa"].recovery.hidden == (100, 100, 100)                  # MESA's networks only
    assert authors["multitask"].multitask.phase2_with_train
    assert dataclasses.replace(meta, learn_inner_lr=False, outer_grad_clip=0.0, pi_rec_lr=0.0, target="lagged") == paper["mesa"].meta
    assert dataclasses.replace(authors["mesa"], meta=paper["mesa"].meta, recovery=paper["mesa"].recovery) == paper["mesa"]
    assert dataclasses.replace(authors["mesa"].recovery, hidden=(128, 128)) == paper["mesa"].recovery
    assert dataclasses.replace(authors["multitask"].multitask, phase2_with_train=False) == paper["multitask"].multitask
    assert all(authors[m] == paper[m] for m in ("unconstrained", "rrl", "rrl_oracle"))
    assert not presets.job_config("navigation1", "multitask", "quick", "authors", {})[0].multitask.phase2_with_train
    hp, _ = presets.job_config("halfcheetah", "mesa", "quick", "authors", {"recovery.hidden": (64,), "meta.target": "lagged"})
    assert hp.recovery.hidden == (64,) and hp.meta.target == "lagged" and hp.meta.learn_inner_lr  # options win
    key = lambda hp, m: experiment.Job("halfcheetah", m, 0, "quick", hp, 60, "runs", "data", "default", "none").key()  # noqa: E731
    assert key(authors["mesa"], "mesa") != key(paper["mesa"], "mesa")
    assert key(authors["multitask"], "multitask") != key(paper["multitask"], "multitask")
    assert key(authors["rrl"], "rrl") == key(paper["rrl"], "rrl")


def test_default_configurations_keep_their_run_keys():
    """Fields added to the configs later leave the run keys of default configurations as they were
    (so finished runs and cached Phases 1-2 stay valid); the keys below predate those fields. MESA's
    keys changed deliberately with its Phase 2-3 target rate (meta.adapted_tau_risk), which enters
    MESA's key alone."""
    before = {("navigation1", "quick", "mesa"): ("ab4f92e650eea492", "e7296300cbb58a34"),
              ("navigation1", "paper", "multitask"): ("6bea9d50b0e4ac95", "515d42ea1052d85d"),
              ("halfcheetah", "quick", "multitask"): ("609bcc04c5dc3dd5", "5508a4b37ef1c3a2"),
              ("halfcheetah", "paper", "mesa"): ("b4a2647c283442c0", "3116bc73940c25ed"),
              ("halfcheetah", "paper", "rrl"): ("e67188f13a3a7be4", "141e987b7611383a")}
    for (env, preset, method), keys in before.items():
        # the keys predate the comparison's tau_risk = 1 too, a deliberate change of every run
        hp, episodes = presets.job_config(env, method, preset, "paper", {"recovery.tau_risk": 2e-4})
        job = experiment.Job(env, method, 0, preset, hp, episodes, "runs", "data", "default", "none")
        assert (job.key(), job.key(phase3=False)) == keys, (env, preset, method)
        now = experiment.Job(env, method, 0, preset, presets.job_config(env, method, preset, "paper", {})[0], episodes,
                      "runs", "data", "default", "none")
        assert now.key() != job.key()
        lag = presets.job_config(env, method, preset, "paper", {"meta.adapted_tau_risk": 1.0})[0]
        lagged = experiment.Job(env, method, 0, preset, lag, episodes, "runs", "data", "default", "none")
        assert (lagged.key(phase3=False) != now.key(phase3=False)) == (method == "mesa")


def test_mesa_variant_authors_end_to_end(tmp_path, data_root):
    smoke(tmp_path, data_root, "--env", "cartpole", "--methods", "mesa,multitask", "--mesa-variant", "authors")
    for method in ("mesa", "multitask"):
        folder = config_dir(tmp_path, "--mesa-variant", "authors") / "cartpole" / method / "seed0"
        hp = json.loads((folder / "config.json").read_text())["hyperparameters"]
        assert hp["meta"]["learn_inner_lr"] == (method == "mesa") and hp["multitask"]["phase2_with_train"] == (method == "multitask")
        q_risk = torch.load(folder / "final.pt", weights_only=True)["safety"]["q_risk"]
        widths = [w.shape[0] for name, w in q_risk.items() if name.endswith("weight")][:-1]
        assert widths == ([100, 100, 100] if method == "mesa" else [16, 16])


def linear_critic(weight_on_first_coordinate: float) -> Safety:
    """A Safety whose Q_risk = sigmoid(w * obs[0]): monotonic in the first observation coordinate."""
    safety = Safety(2, 1, [-1.0], [1.0], RecoveryConfig(gamma_risk=0.5, hidden=()))
    with torch.no_grad():
        for net in (safety.q_risk, safety.q_risk_targ):
            net.net[0].weight.copy_(torch.tensor([[weight_on_first_coordinate, 0.0, 0.0]]))
            net.net[0].bias.zero_()
    return safety


def constructed_visits(scores):
    """Two episodes; episode 1 (rows 0-5) ends in a violation, episode 2 (rows 6-9) times out."""
    n = len(scores)
    obs = np.stack([scores, np.zeros(n)], 1).astype(np.float32)
    costs = np.zeros(n, np.float32)
    costs[5] = 1.0
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[5], timeouts[9] = True, True
    return {"observations": obs, "actions": np.zeros((n, 1), np.float32), "rewards": np.zeros(n, np.float32),
            "costs": costs, "next_observations": obs, "terminals": terminals, "timeouts": timeouts}


def test_onpolicy_auroc_on_a_constructed_buffer():
    """gamma_risk 0.5 -> horizon 2: rows 3, 4, 5 are dangerous. A score rising towards the violation
    ranks them all first (AUROC 1); the critic Phase 3 started from is scored apart from the final one."""
    start_state = copy.deepcopy(linear_critic(-1.0).state_dict())    # ranks danger last
    safety = linear_critic(+1.0)                                         # ranks danger first
    final = copy.deepcopy(safety.state_dict())
    visits = constructed_visits(np.array([0, .1, .2, .6, .7, .8, .1, .2, .3, .4]))
    policy = lambda obs: torch.zeros(len(obs), 1)                       # noqa: E731
    scores = experiment.onpolicy_quality(safety, start_state, visits, policy)
    assert scores["onpolicy_final"]["auroc"] == 1.0 and scores["onpolicy_start"]["auroc"] == 0.0
    assert scores["onpolicy_final"]["positives"] == 3 and scores["onpolicy_final"]["label_horizon"] == 2.0
    for name, value in safety.q_risk.state_dict().items():               # the final critic is back
        assert torch.equal(value, final["q_risk"][name])


def test_summary_json_has_every_field(sweep):
    summary = json.loads((sweep / "smoke" / "navigation1" / "summary.json").read_text())
    assert summary["env"] == "navigation1" and summary["preset"] == "smoke"
    assert set(summary["methods"]) == set(mesa.METHODS)
    for name, s in summary["methods"].items():
        rows = report.read_episodes(str(sweep / "smoke" / "navigation1" / name / "seed0" / "episodes.csv"))
        assert s["seeds"] == 1 and s["episodes"] == len(rows["episode"]) >= 2
        assert s["cumulative_violations"] == rows["cumulative_violations"][-1]
        for key in ("cumulative_violations", "violation_rate", "final_success", "final_return"):
            assert s[key] is not None and f"{key}_se" in s
        auroc = s["critic_auroc"]
        keys = ("heldout_after_phase1", "heldout_after_phase2", "onpolicy_start", "onpolicy_final")
        assert set(keys) <= set(auroc)
        if name == "unconstrained":
            assert all(auroc[k] is None for k in keys)
        else:
            assert auroc["heldout_after_phase2"] is not None
    assert "oracle" in "rrl_oracle" and "rrl_oracle" in summary["methods"]


def test_rrl_oracle_pretrains_on_its_own_test_environment_data(sweep, data_root):
    metrics = json.loads((sweep / "smoke" / "navigation1" / "rrl_oracle" / "seed0" / "metrics.json").read_text())
    config = json.loads((sweep / "smoke" / "navigation1" / "rrl_oracle" / "seed0" / "config.json").read_text())
    assert config["method"] == "rrl_oracle" and "onpolicy_start" in metrics["critic"]
    oracle = datasets.get_oracle("navigation1", "smoke", str(data_root))
    assert len(oracle["rewards"]) == datasets.PRESET_SPECS["smoke"]["navigation1"].n_oracle


def test_one_torch_thread_per_job_by_default(tmp_path, data_root):
    run.main(["--preset", "smoke", "--seed", "3", "--workers", "1", "--no-progress", "--env", "navigation1",
              "--methods", "unconstrained", "--out", str(tmp_path), "--data-root", str(data_root)])
    config = json.loads((tmp_path / "smoke" / "navigation1" / "unconstrained" / "seed3" / "config.json").read_text())
    assert config["torch_threads"] == 1 and config["seed"] == 3
    assert not (tmp_path / "smoke" / "navigation1" / "unconstrained" / "seed0").exists()


def test_ctrl_c_ends_with_one_line_and_the_rerun_resumes(tmp_path, data_root):
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) during a 2-worker sweep.
    Three seeds: on a loaded machine two could all finish before the signal lands."""
    import signal
    import subprocess
    import sys
    import time
    argv = [sys.executable, "run.py", "--preset", "smoke", "--seeds", "3", "--workers", "2", "--env",
            "navigation1", "--out", str(tmp_path), "--data-root", str(data_root)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    datasets.get_datasets("navigation1", "smoke", str(data_root))     # no collection lines in stderr
    experiment.heldout_set("navigation1", "smoke", str(data_root), "default")
    datasets.get_oracle("navigation1", "smoke", str(data_root))
    # a terminal's default SIGINT, whatever the test process inherited (an ignored one would be kept)
    proc = subprocess.Popen(argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not list(tmp_path.glob("smoke/navigation1/*/seed*/episodes.csv")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    err_lines = [line for line in err.splitlines() if not line.startswith("navigation1/")]  # progress lines
    assert len(err_lines) <= 2 and "interrupted" in err and "Traceback" not in err
    finished = len(list(tmp_path.glob("smoke/navigation1/*/seed*/episodes.csv")))
    assert 1 <= finished < 3 * len(mesa.METHODS)
    rerun = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and rerun.stdout.count("skipped navigation1/") == finished


@pytest.mark.parametrize("method", ["mesa", "unconstrained"])
def test_phase3_resumes_from_its_checkpoint_exactly(tmp_path, data_root, monkeypatch, capsys, method):
    """A run stopped right after its second checkpoint (episode 4 of 7) and rerun continues from it
    and writes the same episodes.csv as an uninterrupted run; the checkpoint is then removed."""
    options = ("--env", "navigation1", "--methods", method, "--episodes", "7", "--checkpoint-every", "2",
               "--sac-start-steps", "5")
    smoke(tmp_path / "whole", data_root, *options)
    saved = []

    def save_then_stop(state, path):
        sac_module.save_checkpoint(state, path)
        saved.append(state.get("episode"))
        if str(path).endswith("phase3.pt") and state["episode"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "save_checkpoint", save_then_stop)
    with pytest.raises(SystemExit):
        smoke(tmp_path / "cut", data_root, *options)
    monkeypatch.undo()
    folder = config_dir(tmp_path / "cut", *options[4:]) / "navigation1" / method / "seed0"
    assert (folder / "phase3.pt").exists() and not (folder / "episodes.csv").exists()
    capsys.readouterr()
    smoke(tmp_path / "cut", data_root, *options)
    assert f"resumed navigation1/{method}/seed0 at episode 4" in capsys.readouterr().out
    whole = config_dir(tmp_path / "whole", *options[4:]) / "navigation1" / method / "seed0"
    assert (folder / "episodes.csv").read_text() == (whole / "episodes.csv").read_text()
    assert not (folder / "phase3.pt").exists()


def test_progress_csv_logs_losses_filter_rate_and_speed(sweep):
    for method, has_risk in (("mesa", True), ("unconstrained", False)):
        rows = list(csv.DictReader(open(sweep / "smoke" / "navigation1" / method / "seed0" / "progress.csv")))
        assert rows and tuple(rows[0]) == report.PROGRESS_COLUMNS
        assert all(float(r["steps_per_second"]) > 0 and 0 <= float(r["filter_rate"]) <= 1 for r in rows)
        assert [int(r["env_step"]) for r in rows] == [20 * (i + 1) for i in range(len(rows))]
        assert (rows[-1]["losses/risk_loss"] != "") == has_risk and rows[-1]["losses/qf_loss"] != ""


def test_tensorboard_needs_its_package_or_writes_events(tmp_path, data_root, capsys):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit) as exit_info:
            smoke(tmp_path, data_root, "--env", "navigation1", "--methods", "unconstrained", "--tensorboard")
        assert exit_info.value.code == 2 and "pip install tensorboard" in capsys.readouterr().err
    else:
        smoke(tmp_path, data_root, "--env", "navigation1", "--methods", "unconstrained", "--tensorboard")
        assert list((tmp_path / "smoke" / "navigation1" / "unconstrained" / "seed0" / "tensorboard").iterdir())


def test_ray_backend_gives_the_process_pools_results(tmp_path, data_root):
    """The smoke sweep as local Ray tasks writes the same episodes.csv files as the process pool."""
    import ray  # noqa: F401  (requirements-ray.txt, which CI installs: missing Ray fails, never skips)
    options = ("--env", "navigation1", "--methods", "rrl,unconstrained", "--seeds", "0,1")
    smoke(tmp_path / "pool", data_root, *options, "--workers", "2")
    smoke(tmp_path / "ray", data_root, *options, "--workers", "2", "--backend", "ray")
    for method in ("rrl", "unconstrained"):
        for seed in (0, 1):
            a, b = (tmp_path / out / "smoke" / "navigation1" / method / f"seed{seed}" / "episodes.csv"
                    for out in ("pool", "ray"))
            assert a.read_text() == b.read_text()


def test_ray_reports_a_failed_job_and_finishes_the_others():
    import ray  # noqa: F401  (requirements-ray.txt, which CI installs: missing Ray fails, never skips)
    import math
    outcome = dict(run.ray_map(math.sqrt, [4.0, -1.0, 9.0], threads=1, local_cpus=2))
    assert outcome[4.0] == 2.0 and outcome[9.0] == 3.0
    assert isinstance(outcome[-1.0], Exception) and "math domain error" in str(outcome[-1.0])


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_workers_show_progress_lines(tmp_path, data_root):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "run.py", "--preset", "smoke", "--seeds", "2", "--workers", "2", "--env",
                           "navigation1", "--methods", "rrl", "--out", str(tmp_path), "--data-root", str(data_root)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0
    for seed in (0, 1):
        for phase in ("phase1", "phase3"):
            assert any(line.startswith(f"navigation1/rrl/seed{seed} {phase} ") and "ETA" in line
                       for line in done.stderr.splitlines()), done.stderr


def test_default_output_leaves_tracked_files_alone():
    """A run with the default --out (runs/, git-ignored) changes nothing git tracks."""
    import shutil
    import subprocess
    import sys
    if shutil.which("git") is None or subprocess.run(["git", "rev-parse"], cwd=ROOT).returncode != 0:
        pytest.fail("this test needs the git checkout (CI runs in one)")
    status = lambda: subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout  # noqa: E731
    before = status()
    done = subprocess.run([sys.executable, "run.py", "--preset", "smoke", "--seed", "0", "--workers", "1", "--env",
                           "navigation1", "--methods", "unconstrained", "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "runs/smoke" in done.stdout
    assert status() == before
