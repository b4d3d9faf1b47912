"""run.py end to end on the smoke preset, its argument checks, and report.py's AUROC and labels."""
import csv
import dataclasses
import glob
import itertools
import json
import os
import pathlib
import sys

import copy

import numpy as np
import pytest
import torch

import claims
import common
import critic_scores
import datasets
import experiment
import jobspec
import mesa
import plots
import presets
import report
import run
import timing
import worker_pool
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
            assert plots.LABELS[method] in summary


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
    (["--seeds", "1,-2"], "--seeds takes seeds >= 0, got -2"),
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
    assert critic_scores.auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(3.5 / 4)
    assert critic_scores.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert critic_scores.auroc([0.3, 0.3, 0.3], [1, 0, 0]) == pytest.approx(0.5)
    assert np.isnan(critic_scores.auroc([0.1, 0.2], [0, 0]))


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.3   # many ties
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0)
             for p, n in itertools.product(scores[labels], scores[~labels])]
    assert critic_scores.auroc(scores, labels) == pytest.approx(np.mean(pairs))


def test_danger_labels_stay_within_rollouts():
    costs = np.array([0, 0, 0, 1, 0, 0, 0, 0, 1], np.float32)
    ends = np.array([0, 0, 0, 0, 0, 1, 0, 0, 0], bool)        # rollout 1: rows 0-5, rollout 2: rows 6-8
    labels = critic_scores.danger_labels(costs, ends, np.zeros(9, bool), horizon=2)
    # row 0 is 3 steps before the violation (> 2); rows 4-5 come after it; row 5 ends the rollout
    assert labels.tolist() == [False, True, True, True, False, False, True, True, True]
    timeout_labels = critic_scores.danger_labels(costs, np.zeros(9, bool), ends, horizon=2)
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


def test_quick_keeps_every_methods_phase1_steps():
    """No preset but smoke gives one method fewer Phase-1 or Phase-2 steps than the paper does."""
    for env in ("navigation1", "cartpole", "halfcheetah", "ant"):
        paper, quick = presets.preset_config(env, "paper")[0], presets.preset_config(env, "quick")[0]
        for group in ("meta", "multitask", "rrl", "adapt"):
            assert getattr(quick, group).steps == getattr(paper, group).steps, (env, group)
    hc = presets.preset_config("halfcheetah", "quick")[0]
    assert hc.meta.steps == hc.multitask.steps == 15000


def test_critic_layers_and_heads_are_options_of_run():
    args = vars(run.build_parser().parse_args(["--recovery-layers", "wlinear", "--recovery-heads", "2"]))
    assert (args["recovery.layers"], args["recovery.heads"]) == ("wlinear", 2)
    hp, _ = presets.job_config("navigation1", "rrl", "quick", "paper", {"recovery.heads": 2})
    assert hp.recovery.heads == 2
    with pytest.raises(ValueError, match="critic layers"):
        presets.job_config("navigation1", "rrl", "quick", "paper", {"recovery.layers": "conv"})


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
    assert authors["mesa"].recovery.layers == "wlinear" and authors["multitask"].recovery.layers == "linear"
    assert authors["multitask"].multitask.phase2_with_train
    assert dataclasses.replace(meta, learn_inner_lr=False, outer_grad_clip=0.0, pi_rec_lr=0.0, target="lagged") == paper["mesa"].meta
    assert dataclasses.replace(authors["mesa"], meta=paper["mesa"].meta, recovery=paper["mesa"].recovery) == paper["mesa"]
    assert dataclasses.replace(authors["mesa"].recovery, hidden=(128, 128), layers="linear") == paper["mesa"].recovery
    assert dataclasses.replace(authors["multitask"].multitask, phase2_with_train=False) == paper["multitask"].multitask
    assert all(authors[m] == paper[m] for m in ("unconstrained", "rrl", "rrl_oracle"))
    assert not presets.job_config("navigation1", "multitask", "quick", "authors", {})[0].multitask.phase2_with_train
    hp, _ = presets.job_config("halfcheetah", "mesa", "quick", "authors", {"recovery.hidden": (64,), "meta.target": "lagged"})
    assert hp.recovery.hidden == (64,) and hp.meta.target == "lagged" and hp.meta.learn_inner_lr  # options win
    key = lambda hp, m: jobspec.Job("halfcheetah", m, 0, "quick", hp, 60, "runs", "data", "default", "none").key()  # noqa: E731
    assert key(authors["mesa"], "mesa") != key(paper["mesa"], "mesa")
    assert key(authors["multitask"], "multitask") != key(paper["multitask"], "multitask")
    assert key(authors["rrl"], "rrl") == key(paper["rrl"], "rrl")


def test_default_configurations_keep_their_run_keys(monkeypatch):
    """Fields added to the configs later leave the run keys of default configurations as they were
    (so finished runs and cached Phases 1-2 stay valid); the keys below predate those fields. MESA's
    keys changed deliberately with its Phase 2-3 target rate (meta.adapted_tau_risk), which enters
    MESA's key alone; quick's Multi-Task keys on HalfCheetah and Ant with the paper's Phase-1 steps
    (15000, no longer 3000). The keys predate UNREAD_GROUPS too (finished() finds such runs through
    their config.json: test_finished_runs_are_found_by_what_they_ran_with)."""
    monkeypatch.setattr(jobspec, "UNREAD_GROUPS", {})
    before = {("navigation1", "quick", "mesa"): ("ab4f92e650eea492", "e7296300cbb58a34"),
              ("navigation1", "paper", "multitask"): ("6bea9d50b0e4ac95", "515d42ea1052d85d"),
              ("halfcheetah", "quick", "multitask"): ("5ea8fcf24f25115c", "3d24fd527773adb0"),
              ("halfcheetah", "paper", "mesa"): ("b4a2647c283442c0", "3116bc73940c25ed"),
              ("halfcheetah", "paper", "rrl"): ("e67188f13a3a7be4", "141e987b7611383a")}
    for (env, preset, method), keys in before.items():
        # the keys predate the comparison's tau_risk = 1 too, a deliberate change of every run
        hp, episodes = presets.job_config(env, method, preset, "paper", {"recovery.tau_risk": 2e-4})
        job = jobspec.Job(env, method, 0, preset, hp, episodes, "runs", "data", "default", "none")
        assert (job.key(), job.key(phase3=False)) == keys, (env, preset, method)
        now = jobspec.Job(env, method, 0, preset, presets.job_config(env, method, preset, "paper", {})[0], episodes,
                      "runs", "data", "default", "none")
        assert now.key() != job.key()
        lag = presets.job_config(env, method, preset, "paper", {"meta.adapted_tau_risk": 1.0})[0]
        lagged = jobspec.Job(env, method, 0, preset, lag, episodes, "runs", "data", "default", "none")
        assert (lagged.key(phase3=False) != now.key(phase3=False)) == (method == "mesa")


def test_a_methods_run_key_ignores_the_settings_it_never_reads():
    hp, episodes = presets.job_config("halfcheetah", "mesa", "quick", "paper", {})
    changes = {"meta": {"steps": 1500}, "multitask": {"steps": 3000}, "rrl": {"steps": 2000},
               "adapt": {"steps": 100}, "recovery": {"eps_risk": 0.5}}
    readers = {"meta": {"mesa"}, "multitask": {"multitask"}, "rrl": {"rrl", "rrl_oracle"},
               "adapt": {"mesa", "multitask", "rrl", "rrl_oracle"}, "recovery": {"mesa", "multitask", "rrl", "rrl_oracle"}}
    for group, change in changes.items():
        other = dataclasses.replace(hp, **{group: dataclasses.replace(getattr(hp, group), **change)})
        for method in mesa.METHODS:
            jobs = [jobspec.Job("halfcheetah", method, 0, "quick", h, episodes, "runs", "data", "default", "none")
                    for h in (hp, other)]
            assert (jobs[0].key() != jobs[1].key()) == (method in readers[group]), (group, method)
    sac = dataclasses.replace(hp, sac=dataclasses.replace(hp.sac, lr=1e-4))
    assert all(jobspec.Job("halfcheetah", m, 0, "quick", sac, episodes, "runs", "data", "default", "none").key() !=
               jobspec.Job("halfcheetah", m, 0, "quick", hp, episodes, "runs", "data", "default", "none").key()
               for m in mesa.METHODS)


def test_finished_runs_are_found_by_what_they_ran_with(tmp_path):
    """A finished run whose config.json records an older run key is still found where the
    configuration it records hashes to today's key, and not where a setting its method reads differs."""
    hp, episodes = presets.job_config("halfcheetah", "unconstrained", "quick", "paper", {})
    job = jobspec.Job("halfcheetah", "unconstrained", 0, "quick", hp, episodes, str(tmp_path), "data", "default", "none")
    jobspec.write_run(job, {}, [{c: 0 for c in report.COLUMNS}])
    path = pathlib.Path(job.folder) / "config.json"
    config = json.loads(path.read_text())
    config["run_key"] = "recorded-by-older-code"
    config["hyperparameters"]["meta"]["steps"] = 1500          # read by MESA only
    path.write_text(json.dumps(config))
    assert jobspec.finished(job)
    config["hyperparameters"]["sac"]["batch_size"] = 64        # read by every method
    path.write_text(json.dumps(config))
    assert not jobspec.finished(job)


def test_mesa_variant_authors_end_to_end(tmp_path, data_root):
    smoke(tmp_path, data_root, "--env", "cartpole", "--methods", "mesa,multitask", "--mesa-variant", "authors")
    for method in ("mesa", "multitask"):
        folder = config_dir(tmp_path, "--mesa-variant", "authors") / "cartpole" / method / "seed0"
        hp = json.loads((folder / "config.json").read_text())["hyperparameters"]
        assert hp["meta"]["learn_inner_lr"] == (method == "mesa") and hp["multitask"]["phase2_with_train"] == (method == "multitask")
        q_risk = torch.load(folder / "final.pt", weights_only=True)["safety"]["q_risk"]
        if method == "mesa":   # WLinear layers: fc generates in * out + out numbers per layer
            generated = [w.shape[0] for name, w in q_risk.items() if name.endswith("fc.weight")]
            assert generated == [(5 + 1) * 100, (100 + 1) * 100, (100 + 1) * 100, 100 + 1]   # cartpole: 4 + 1 inputs
            assert sum(name.endswith(".z") for name in q_risk) == 4
        else:
            widths = [w.shape[0] for name, w in q_risk.items() if name.endswith("weight")][:-1]
            assert widths == [16, 16]


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
    scores = critic_scores.onpolicy_quality(safety, start_state, visits, policy)
    assert scores["onpolicy_final"]["auroc"] == 1.0 and scores["onpolicy_start"]["auroc"] == 0.0
    assert scores["onpolicy_final"]["positives"] == 3 and scores["onpolicy_final"]["label_horizon"] == 2.0
    for name, value in safety.q_risk.state_dict().items():               # the final critic is back
        assert torch.equal(value, final["q_risk"][name])


def test_summary_json_has_every_field(sweep):
    text = (sweep / "smoke" / "navigation1" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda name: pytest.fail(f"summary.json is not strict JSON: {name}"))
    assert summary["env"] == "navigation1" and summary["preset"] == "smoke"
    assert set(summary["methods"]) == set(mesa.METHODS)
    for name, s in summary["methods"].items():
        rows = report.read_episodes(str(sweep / "smoke" / "navigation1" / name / "seed0" / "episodes.csv"))
        assert s["seeds"] == 1 and s["episodes"] == len(rows["episode"]) >= 2
        assert s["cumulative_violations"] == rows["cumulative_violations"][-1]
        for key in ("cumulative_violations", "violation_rate", "final_success", "final_return"):
            assert s[key] is not None and f"{key}_se" in s
            assert s["per_seed"][key] == [s[key]] and s["ci95"][key] is None     # one seed: no interval
        auroc = s["critic_auroc"]
        keys = ("heldout_after_phase1", "heldout_after_phase2", "onpolicy_start", "onpolicy_final")
        assert set(keys) <= set(auroc)
        level = s["critic_level"]
        assert {"d_test_after_phase1", "d_test_after_phase2", "d_test_final"} <= set(level)
        if name == "unconstrained":
            assert all(auroc[k] is None for k in keys)
            assert level["d_test_after_phase2"]["safe_above_eps"] is None
        else:
            assert auroc["heldout_after_phase2"] is not None
            metrics = json.loads((sweep / "smoke" / "navigation1" / name / "seed0" / "metrics.json").read_text())
            for place in ("d_test_after_phase1", "d_test_after_phase2", "d_test_final", "after_phase2", "onpolicy_final"):
                assert 0 <= metrics["critic"][place]["safe_above_eps"] <= 1, (name, place)
            assert level["d_test_after_phase2"]["safe_above_eps"] == metrics["critic"]["d_test_after_phase2"]["safe_above_eps"]
            assert level["d_test_final"]["median_safe"] == metrics["critic"]["d_test_final"]["median_safe"]
    assert "oracle" in "rrl_oracle" and "rrl_oracle" in summary["methods"]


def test_critic_level_on_a_constructed_buffer():
    """Rows 3-5 are dangerous (horizon 2); Q_risk = sigmoid(obs[0]): the safe rows' scores are
    sigmoid(0, .1, .2, .1, .2, .3, .4), of which those above eps_risk = 0.55 are sigmoid(.3), sigmoid(.4)."""
    safety = linear_critic(+1.0)
    safety.cfg.eps_risk = 0.55
    visits = constructed_visits(np.array([0, .1, .2, .6, .7, .8, .1, .2, .3, .4]))
    scores = critic_scores.critic_quality(safety, visits, lambda obs: torch.zeros(len(obs), 1))
    assert scores["safe_above_eps"] == pytest.approx(2 / 7) and scores["unsafe_above_eps"] == 1.0
    assert scores["median_safe"] == pytest.approx(torch.sigmoid(torch.tensor(0.2)).item())


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
        common.save_checkpoint(state, path)
        saved.append(state.get("episode"))
        if str(path).endswith("phase3.pt") and state["episode"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "save_checkpoint", save_then_stop)
    with pytest.raises(SystemExit):
        smoke(tmp_path / "cut", data_root, *options)
    monkeypatch.undo()
    folder = config_dir(tmp_path / "cut", *options[4:]) / "navigation1" / method / "seed0"
    assert (folder / "phase3.pt").exists() and not (folder / "episodes.csv").exists()
    state = torch.load(folder / "phase3.pt", weights_only=True)
    state["seconds"] = 1000.0                    # as if the first process had run Phase 3 for 1000 s
    common.save_checkpoint(state, folder / "phase3.pt")
    capsys.readouterr()
    smoke(tmp_path / "cut", data_root, *options)
    assert f"resumed navigation1/{method}/seed0 at episode 4" in capsys.readouterr().out
    whole = config_dir(tmp_path / "whole", *options[4:]) / "navigation1" / method / "seed0"
    assert (folder / "episodes.csv").read_text() == (whole / "episodes.csv").read_text()
    assert not (folder / "phase3.pt").exists()
    timings = json.loads((folder / "metrics.json").read_text())["timings"]
    assert timings["phase3"] >= 1000 and timings["total"] >= timings["phase3"]   # the time before the stop counts in both


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_mesa_phase1_resumes_from_its_checkpoint_exactly(tmp_path, data_root, monkeypatch, capsys, variant):
    """A MESA run stopped right after its Phase-1 checkpoint at meta-step 2 of 3 and rerun continues
    from it: the same critic after Phases 1-2 and the same episodes.csv as an uninterrupted run (with
    the authors' variant: its learned inner rates and WLinear critic too); the checkpoint is then removed."""
    options = ("--env", "navigation1", "--methods", "mesa", "--episodes", "3", "--mesa-variant", variant)
    smoke(tmp_path / "whole", data_root, *options)
    monkeypatch.setattr(experiment, "META_CHECKPOINT_EVERY", 1)

    def save_then_stop(state, path):
        common.save_checkpoint(state, path)
        if str(path).endswith("pretraining.pt") and state["meta_learning"]["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "save_checkpoint", save_then_stop)
    with pytest.raises(SystemExit):
        smoke(tmp_path / "cut", data_root, *options)
    monkeypatch.setattr(experiment, "save_checkpoint", common.save_checkpoint)
    folder = config_dir(tmp_path / "cut", *options[4:]) / "navigation1" / "mesa" / "seed0"
    assert (folder / "pretraining.pt").exists() and not (folder / "phase2.pt").exists()
    state = torch.load(folder / "pretraining.pt", weights_only=True)
    state["meta_learning"]["seconds"] = 1000.0      # as if the first process had meta-learned for 1000 s
    common.save_checkpoint(state, folder / "pretraining.pt")
    capsys.readouterr()
    smoke(tmp_path / "cut", data_root, *options)
    assert "resumed navigation1/mesa/seed0 Phase 1 at meta-step 2" in capsys.readouterr().out
    whole = config_dir(tmp_path / "whole", *options[4:]) / "navigation1" / "mesa" / "seed0"
    cut_critic, whole_critic = (torch.load(f / "phase2.pt", weights_only=True)["safety"] for f in (folder, whole))
    for network in ("q_risk", "pi_rec"):
        for name, tensor in whole_critic[network].items():
            assert torch.equal(cut_critic[network][name], tensor), f"{network}.{name}"
    assert (folder / "episodes.csv").read_text() == (whole / "episodes.csv").read_text()
    assert not (folder / "pretraining.pt").exists()
    timings = json.loads((folder / "metrics.json").read_text())["timings"]
    assert 1000 <= timings["phase1"] < 1100      # the 1000 s before the stop counted once, not once per checkpoint
    assert timings["total"] >= timings["phase1"] + timings["phase3"]


def test_progress_csv_logs_losses_filter_rate_and_speed(sweep):
    for method, has_risk in (("mesa", True), ("unconstrained", False)):
        rows = list(csv.DictReader(open(sweep / "smoke" / "navigation1" / method / "seed0" / "progress.csv")))
        assert rows and tuple(rows[0]) == report.PROGRESS_COLUMNS
        assert all(float(r["steps_per_second"]) > 0 and 0 <= float(r["filter_rate"]) <= 1 for r in rows)
        assert [int(r["env_step"]) for r in rows] == [20 * (i + 1) for i in range(len(rows))]
        assert (rows[-1]["losses/risk_loss"] != "") == has_risk and rows[-1]["losses/qf_loss"] != ""


def test_tensorboard_without_its_package_is_one_line(tmp_path, data_root, capsys, monkeypatch):
    real = run.importlib.util.find_spec
    monkeypatch.setattr(run.importlib.util, "find_spec", lambda name: None if name == "tensorboard" else real(name))
    with pytest.raises(SystemExit) as exit_info:
        smoke(tmp_path, data_root, "--env", "navigation1", "--methods", "unconstrained", "--tensorboard")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "pip install tensorboard" in err and len(err.strip().splitlines()) == 1


def test_tensorboard_writes_events(tmp_path, data_root, require_extra):
    require_extra("tensorboard")
    smoke(tmp_path, data_root, "--env", "navigation1", "--methods", "unconstrained", "--tensorboard")
    assert list((tmp_path / "smoke" / "navigation1" / "unconstrained" / "seed0" / "tensorboard").iterdir())


def test_a_missing_extra_skips_or_fails_as_mesa_require_extras_says(monkeypatch, require_extra):
    monkeypatch.setitem(sys.modules, "ray", None)                   # import ray raises ImportError
    monkeypatch.delenv("MESA_REQUIRE_EXTRAS", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"ray is not installed \(pip install -r requirements-ray.txt\)"):
        require_extra("ray")
    for wanted in ("1", "ray", "tensorboard,ray", "all"):
        monkeypatch.setenv("MESA_REQUIRE_EXTRAS", wanted)
        with pytest.raises(pytest.fail.Exception, match="MESA_REQUIRE_EXTRAS"):
            require_extra("ray")
    monkeypatch.setenv("MESA_REQUIRE_EXTRAS", "tensorboard")       # names another extra: Ray's tests skip
    with pytest.raises(pytest.skip.Exception):
        require_extra("ray")


def test_ray_backend_gives_the_process_pools_results(tmp_path, data_root, require_extra):
    """The smoke sweep as local Ray tasks writes the same episodes.csv files as the process pool."""
    require_extra("ray")      # skipped without Ray, failed where MESA_REQUIRE_EXTRAS asks for it (CI)
    options = ("--env", "navigation1", "--methods", "rrl,unconstrained", "--seeds", "0,1")
    smoke(tmp_path / "pool", data_root, *options, "--workers", "2")
    smoke(tmp_path / "ray", data_root, *options, "--workers", "2", "--backend", "ray")
    for method in ("rrl", "unconstrained"):
        for seed in (0, 1):
            a, b = (tmp_path / out / "smoke" / "navigation1" / method / f"seed{seed}" / "episodes.csv"
                    for out in ("pool", "ray"))
            assert a.read_text() == b.read_text()


def test_ray_reports_a_failed_job_and_finishes_the_others(require_extra):
    require_extra("ray")
    import math
    outcome = dict(worker_pool.ray_map(math.sqrt, [4.0, -1.0, 9.0], threads=1, local_cpus=2))
    assert outcome[4.0] == 2.0 and outcome[9.0] == 3.0
    assert isinstance(outcome[-1.0], Exception) and "math domain error" in str(outcome[-1.0])


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_resumed_phase_reports_the_speed_of_this_process_only(monkeypatch, capsys):
    """A run resumed at episode 135 of 500 that then does 2 episodes in 10 s: 0.20/s and an ETA of
    363 / 0.2 s = 30.2 min, not a speed that counts the 135 episodes of an earlier process."""
    clock = iter([0.0, 10.0, 10.0])
    monkeypatch.setattr(experiment.time, "perf_counter", lambda: next(clock))
    lines = experiment.ProgressLines("halfcheetah/mesa/seed0 phase3", 500, every=5.0, initial=135)
    lines.update(2)
    line = capsys.readouterr().err
    assert "137/500, 0.20/s" in line and "ETA 30.2 min" in line, line


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


# ----------------------------------------------------------------------------- the first hour (issue 32)

def test_no_sweep_option_runs_the_short_comparison():
    """`python3 run.py` alone: Navigation 1, MESA against Multi-Task, RRL and Unconstrained SAC,
    seed 0, 100 episodes, about 10 minutes by the measured times; any sweep option: the full defaults."""
    parser = run.build_parser()
    args = parser.parse_args(["--workers", "2"])
    assert run.apply_defaults(args, parser)
    assert (args.env, args.methods, args.seeds, args.episodes, args.preset) == \
        (["navigation1"], ["mesa,multitask,rrl,unconstrained"], ["1"], 100, "quick")
    assert run.config_name(args) == "quick_episodes-100"
    jobs = [jobspec.Job("navigation1", m, 0, "quick", presets.job_config("navigation1", m, "quick", "paper", {})[0],
                           100, "/nonexistent/quick_episodes-100", "data", "default", "none")
            for m in ("mesa", "multitask", "rrl", "unconstrained")]
    ordered = timing.longest_first(jobs)
    assert ordered[0].method == "mesa" and ordered[-1].method == "unconstrained"
    assert 8 * 60 < timing.schedule_seconds([timing.estimate_seconds(j) for j in ordered], 2) < 13 * 60
    assert timing.schedule_seconds([650, 200, 100, 10], 2) == 650 and timing.schedule_seconds([10, 100, 200, 650], 2) == 750
    args = parser.parse_args(["--seeds", "3"])
    assert not run.apply_defaults(args, parser)
    assert (args.env, args.methods, args.seeds, args.episodes, args.preset) == \
        (["navigation1"], ["all"], ["3"], None, "quick")


def test_the_sweep_says_how_many_runs_how_long_and_which_run(tmp_path, data_root, capsys):
    smoke(tmp_path, data_root, "--env", "navigation1", "--methods", "rrl,unconstrained")
    out = capsys.readouterr().out
    assert "2 runs to do, 1 at a time; no estimate" in out
    assert "done navigation1/rrl/seed0 (1 of 2):" in out and "done navigation1/unconstrained/seed0 (2 of 2):" in out
    assert out.count("success (last 10%)") == 2 and "last 10% of episodes" in out
    hp = presets.job_config("navigation1", "rrl", "smoke", "paper", {})[0]
    job = jobspec.Job("navigation1", "rrl", 1, "smoke", hp, 2, str(tmp_path / "smoke"), str(data_root), "default", "none")
    assert timing.estimate_seconds(job) > 0             # from the finished runs' metrics.json
    smoke(tmp_path, data_root, "--env", "navigation1", "--methods", "rrl,unconstrained", "--seeds", "0,1")
    out = capsys.readouterr().out
    assert "2 runs to do (2 finished, skipped), 1 at a time: under a minute" in out


def test_an_unwritable_out_is_one_line(data_root, capsys):
    with pytest.raises(SystemExit) as exit_info:
        smoke("/proc/mesa-out", data_root, "--env", "navigation1", "--methods", "unconstrained")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--out /proc/mesa-out" in err and len(err.strip().splitlines()) == 1


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_damaged_files_stop_with_one_line_and_lose_nothing(tmp_path, data_root, capsys):
    """A truncated phase3.pt, phase2.pt or finished run's config.json: exit 2 with one line naming
    the file and what to do, nothing overwritten; doing what it says lets the same command go on."""
    options = ("--env", "navigation1", "--methods", "mesa", "--episodes", "3", "--checkpoint-every", "1",
               "--keep-checkpoints")
    smoke(tmp_path, data_root, *options)
    folder = config_dir(tmp_path, *options[4:]) / "navigation1" / "mesa" / "seed0"
    episodes = (folder / "episodes.csv").read_text()

    def fails(name, *words):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            smoke(tmp_path, data_root, *options)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert str(folder / name) in err and all(w in err for w in words), err

    truncate(folder / "config.json")
    fails("config.json", "move", "away")
    assert (folder / "episodes.csv").read_text() == episodes              # the finished run is kept
    (folder / "episodes.csv").unlink()                                     # an interrupted run: phase3.pt at episode 2
    truncate(folder / "phase3.pt")
    fails("phase3.pt", "delete it")
    (folder / "phase3.pt").unlink()
    truncate(folder / "phase2.pt")
    fails("phase2.pt", "delete it")
    (folder / "phase2.pt").unlink()
    smoke(tmp_path, data_root, *options)
    assert "done navigation1/mesa/seed0" in capsys.readouterr().out
    assert (folder / "episodes.csv").read_text() == episodes              # the same run again
    truncate(folder / "phase2.pt")                                         # inside a worker: the same line
    with pytest.raises(jobspec.DamagedFile, match="phase2.pt is damaged"):
        jobspec.load_checkpoint(str(folder / "phase2.pt"), jobspec.PHASE2_ADVICE)


def process_children(pid):
    """The ids of the live processes whose parent is pid (Linux /proc)."""
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.split("/")[2]))
    return kids


def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs Linux's /proc to find the workers")
@pytest.mark.parametrize("command", ["run.py", "paper.py"])
def test_sigterm_ends_the_workers_as_ctrl_c_does(tmp_path, data_root, command):
    """SIGTERM to run.py or paper.py alone (kill PID) while two workers run jobs: one line, exit
    status 143, and no worker left running its job (paper.py once orphaned them)."""
    import signal
    import subprocess
    import time
    datasets.get_datasets("navigation1", "smoke", str(data_root))
    experiment.heldout_set("navigation1", "smoke", str(data_root), "default")
    if command == "run.py":
        argv = [sys.executable, "run.py", "--preset", "smoke", "--seeds", "2", "--workers", "2", "--env", "navigation1",
                "--methods", "unconstrained", "--episodes", "100000", "--no-progress", "--out", str(tmp_path),
                "--data-root", str(data_root)]
        folder = tmp_path / "smoke_episodes-100000" / "navigation1" / "unconstrained"
    else:   # the long-Phase-3 study, made endless on Navigation 1: its first two jobs are Unconstrained SAC's
        script = ("import sys, paper, studies; studies.LONG_EPISODES = {'navigation1': 100000}; "
                  "paper.main(sys.argv[1:])")
        argv = [sys.executable, "-c", script, "--only", "long", "--preset", "smoke", "--workers", "2",
                "--out", str(tmp_path), "--data-root", str(data_root)]
        folder = tmp_path / "long" / "navigation1" / "unconstrained"
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    logs = [folder / f"seed{s}" / "progress.csv" for s in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline and not all(p.exists() for p in logs):    # both workers in Phase 3
        time.sleep(0.2)
    kids = process_children(proc.pid)
    assert len(kids) >= 2
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err and len(err.strip().splitlines()) == 1, err
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(k) for k in kids):
        time.sleep(0.2)
    assert not any(alive(k) for k in kids)


@pytest.mark.parametrize("script", ["run.py", "paper.py"])
def test_a_spawned_worker_ignores_ctrl_c_from_its_first_import(script):
    """A pool worker imports the parent's script as __mp_main__, torch with it, before the pool's
    initializer runs: the script ignores SIGINT first, so a Ctrl-C in that window (a new worker per
    job) cannot print a worker's traceback."""
    import subprocess
    code = (f"import runpy, signal; runpy.run_path({script!r}, run_name='__mp_main__'); "
            "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


def test_figures_tell_lines_at_zero_apart_and_keep_the_legend_off_the_data():
    runs = {m: [{"cumulative_violations": np.zeros(40), "success": np.zeros(40)}]
            for m in ("mesa", "multitask", "rrl_oracle")}
    runs["unconstrained"] = [{"cumulative_violations": np.arange(1.0, 41), "success": np.zeros(40)}]
    fig = plots.draw_figure(runs, [("cumulative_violations", "Cumulative violations"),
                                    ("success", "Success rate (running mean)")], "test", window=4)
    fig.canvas.draw()
    lines = fig.axes[0].get_lines()
    assert len({line.get_marker() for line in lines}) == len(runs)
    at_zero = [line for line in lines if not line.get_ydata().any()]
    assert len({line.get_markevery()[0] for line in at_zero}) == len(at_zero) == 3    # markers never coincide
    assert fig.axes[1].get_ylabel() == "Success rate (running mean over 4 episodes)"
    legend = fig.legends[0].get_window_extent()
    assert not any(legend.overlaps(ax.get_window_extent()) for ax in fig.axes)
    import matplotlib.pyplot as plt
    plt.close(fig)



def test_the_papers_claims_and_the_pairs_every_summary_compares():
    assert claims.paper_claim("halfcheetah", "mesa", "multitask") == ("fewer", 0.5)
    assert claims.paper_claim("ant", "mesa_authors", "rrl") == ("fewer", 0.5)        # MESA's rows carry its claim
    assert claims.paper_claim("navigation1", "mesa", "multitask") == ("as_few", 1.0)
    assert claims.paper_claim("cartpole", "mesa", "unconstrained") == ("fewer", 1.0)
    assert claims.paper_claim("maze", "mesa", "rrl") is None                          # the paper shows no Maze comparison
    assert claims.paper_claim("halfcheetah", "mesa", "rrl_oracle") is None
    assert claims.paper_claim("maze", "rrl", "unconstrained") == ("fewer", 1.0)       # Recovery RL's own claim
    pairs = claims.comparison_pairs(["unconstrained", "rrl", "mesa", "mesa_authors", "multitask"])
    assert pairs == [("mesa", "unconstrained"), ("mesa", "rrl"), ("mesa", "multitask"), ("mesa_authors", "unconstrained"),
                     ("mesa_authors", "rrl"), ("mesa_authors", "multitask"), ("rrl", "unconstrained")]
    per_seed = lambda v: {"per_seed": {"cumulative_violations": v, "final_return": [1.0, 2.0, 3.0]}}  # noqa: E731
    found = claims.comparisons("halfcheetah", {"mesa": per_seed([5, 6, 7]), "rrl": per_seed([50, 60, 70]),
                                               "multitask": per_seed([4, 8, 9])})
    assert set(found) == {"mesa vs rrl", "mesa vs multitask"}
    assert found["mesa vs rrl"]["verdict"] == "reproduced" and found["mesa vs multitask"]["verdict"] == "undecided"
    table = claims.comparisons_table(found)
    assert "| MESA vs RRL | 3 / 3 | 0.10 [" in table and "fewer (x0.5) | reproduced |" in table


def test_long_runs_report_cumulative_violations_at_quicks_marks():
    def run(violating_episodes, n):
        violation = np.isin(np.arange(n), violating_episodes).astype(float)
        return {"episode": np.arange(n, dtype=float), "violation": violation, "cumulative_violations": np.cumsum(violation),
                "return": np.zeros(n), "success": np.zeros(n), "recovery_fraction": np.zeros(n)}
    runs = [run([0, 59, 60, 99, 100, 299], 300), run([10, 200], 300)]
    s = report.method_summary(runs, [{"critic": {}}, {"critic": {}}], has_success=False)
    at = s["cumulative_violations_at"]
    assert (at["60"], at["100"], at["250"]) == (1.5, 2.5, 3.5) and s["cumulative_violations"] == 4.0
    table = report.marks_table({"mesa": s})
    assert "| MESA | 1.5 ± 0.5 | 2.5 ± 1.5 | 3.5 ± 1.5 | 4.0 ± 2.0 (300) |" in table
    short = report.method_summary([run([3], 60)], [{"critic": {}}], has_success=False)
    assert report.marks_table({"mesa": short}) == ""          # quick's own length: nothing to add
