"""Input scaling, the D_test share of Figure 6, and paper.py's Figure-2 experiment on the smoke preset."""
import dataclasses
import json
import os

import numpy as np
import pytest

import datasets
import envs
import paper
import jobspec
import figures
import presets
import studies
from conftest import random_dataset


def test_scaled_env_sees_what_the_scaled_dataset_holds():
    raw = envs.make_env("navigation1")
    mean, std = np.array([-40.0, 1.0], np.float32), np.array([30.0, 4.0], np.float32)
    scaled = envs.scaled_observations(envs.make_env("navigation1"), mean, std)
    o_raw, _ = raw.reset(seed=3)
    o_scaled, _ = scaled.reset(seed=3)
    np.testing.assert_allclose(o_scaled, (o_raw - mean) / std, rtol=1e-6)
    as_dataset = datasets.scaled({"observations": o_raw[None], "next_observations": o_raw[None]}, mean, std)
    np.testing.assert_allclose(as_dataset["observations"][0], o_scaled, rtol=1e-6)
    assert scaled.observation_space.contains(o_scaled)


def test_observation_scale_standardises_and_leaves_constant_dimensions_alone():
    data = random_dataset(500, 3, 2)
    data["observations"][:, 0] = 7.0
    mean, std = datasets.observation_scale(data)
    z = datasets.scaled(data, mean, std)["observations"]
    assert std[0] == 1.0 and np.all(z[:, 0] == 0.0)
    np.testing.assert_allclose(z[:, 1:].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z[:, 1:].std(0), 1.0, atol=1e-4)


def test_head_keeps_the_first_transitions():
    data = random_dataset(100, 3, 2)
    part = datasets.head(data, 1 / 16)
    assert len(part["rewards"]) == 6 and all(len(part[k]) == 6 for k in datasets.FIELDS)
    np.testing.assert_array_equal(part["observations"], data["observations"][:6])
    assert len(datasets.head(data, 1e-9)["rewards"]) == 1
    with pytest.raises(ValueError, match="test fraction must lie in"):
        datasets.head(data, 0.0)


def test_test_fraction_and_scaling_change_the_run_key():
    hp, episodes = presets.preset_config("navigation1", "smoke")
    base = jobspec.Job("navigation1", "mesa", 0, "smoke", hp, episodes, "r", "d", "default", False)
    keys = {base.key(), jobspec.Job(**{**base.__dict__, "test_fraction": 0.5}).key(),
            jobspec.Job(**{**base.__dict__, "scale_inputs": False}).key()}
    assert len(keys) == 3


def test_figure2_records_every_adaptation_step(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "ADAPT_STEPS", (0, 1, 4))
    monkeypatch.setattr(figures, "HEATMAP_STEPS", (0, 4))
    monkeypatch.setattr(figures, "FIGURE2_SEEDS", 1)
    table = figures.figure2(str(tmp_path), "smoke", 1, str(tmp_path / "data"))
    assert "Multi-Task | auroc" in table and "MESA | loss" in table and "MESA (authors' variant) | auroc" in table
    results = json.load(open(tmp_path / "figure2" / "adaptation.json"))
    assert [r["method"] for r in results] == ["multitask", "mesa", "mesa_authors"]
    for r in results:
        assert [p["step"] for p in r["curve"]] == [0, 1, 4]
        assert all(0 <= p["auroc"] <= 1 and p["loss"] >= 0 for p in r["curve"])
        before, after = (np.load(tmp_path / "figure2" / "heatmaps.npz")[f"{r['method']}_{k}_steps"] for k in (0, 4))
        assert before.shape == (61, 61) and np.all((before >= 0) & (before <= 1))
        assert not np.allclose(before, after)       # adaptation moved the critic
    assert (tmp_path / "figure2" / "heatmaps.png").stat().st_size > 0
    assert (tmp_path / "figure2" / "adaptation.png").stat().st_size > 0
    # A rerun reads the finished curves back instead of computing them, and gives the same files;
    # a curve whose file is damaged, or whose run key changed, is computed again.
    maps = dict(np.load(tmp_path / "figure2" / "heatmaps.npz"))
    (tmp_path / "figure2" / "curves" / "mesa_seed0.json").write_text("{trunc")
    computed = []
    original = figures.adaptation_curve
    monkeypatch.setattr(figures, "adaptation_curve", lambda row_job: computed.append(row_job[0]) or original(row_job))
    assert figures.figure2(str(tmp_path), "smoke", 1, str(tmp_path / "data")) == table
    assert computed == ["mesa"]
    assert json.load(open(tmp_path / "figure2" / "adaptation.json")) == results
    for name, q in np.load(tmp_path / "figure2" / "heatmaps.npz").items():
        assert q.dtype == maps[name].dtype and np.array_equal(q, maps[name])


def test_offline_key_ignores_what_only_phase3_uses():
    hp, episodes = presets.preset_config("navigation1", "smoke")
    base = jobspec.Job("navigation1", "mesa", 0, "smoke", hp, episodes, "r", "d", "default", False)
    eps = jobspec.Job(**{**base.__dict__, "hp": presets.apply(hp, {"recovery.eps_risk": 0.7}), "episodes": 9})
    tau = jobspec.Job(**{**base.__dict__, "hp": presets.apply(hp, {"recovery.tau_risk": 0.01})})
    assert eps.key(phase3=False) == base.key(phase3=False) and eps.key() != base.key()
    assert tau.key(phase3=False) != base.key(phase3=False)


def test_corrupt_dataset_ends_paper_py_with_one_line(tmp_path, capsys):
    folder = tmp_path / "data" / "smoke" / "maze"
    folder.mkdir(parents=True)
    datasets.get_datasets("maze", "smoke", str(tmp_path / "data"))
    (folder / "test_default.npz").write_bytes(b"not a zip")
    with pytest.raises(SystemExit) as exit_info:
        paper.main(["--only", "figure2", "--preset", "smoke", "--out", str(tmp_path / "r"),
                    "--data-root", str(tmp_path / "data"), "--workers", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "test_default.npz" in err and "Traceback" not in err


def test_rrl_check_is_recovery_rls_setting(tmp_path):
    """The Recovery RL check (docs/results.md): RRL with 20K / 10K test-environment transitions and Unconstrained SAC, the
    Recovery RL scripts' gamma_risk / eps_risk / pos_fraction, episodes ending within 4 of the goal."""
    jobs = paper.rrl_check_jobs(str(tmp_path), "quick", "data")
    assert {j.preset for j in jobs} == {"paper"} and {j.method for j in jobs} == {"rrl_oracle", "unconstrained"}
    by_env = {j.env: j for j in jobs if j.method == "rrl_oracle" and j.seed == 0}
    expected = {"navigation1": (0.8, 0.3, 0.0, 400), "navigation2": (0.65, 0.2, 0.0, 400), "maze": (0.5, 0.15, 0.3, 500)}
    for env, (gamma, eps, pos, episodes) in expected.items():
        r = by_env[env].hp.recovery
        assert (r.gamma_risk, r.eps_risk, r.pos_fraction, by_env[env].episodes) == (gamma, eps, pos, episodes)
        assert by_env[env].hp.sac.start_steps == 100 and r.target_policy == "task"
        assert r.tau_risk == 2e-4          # Recovery RL's lagged target; the MESA comparison's is 1
    assert by_env["navigation1"].env_kwargs == {"goal_radius": 4.0} and by_env["maze"].env_kwargs == {}
    assert by_env["navigation2"].oracle_variant == "rrl" and by_env["navigation1"].oracle_variant == "mesa"
    oracle_sizes = {env: datasets.PRESET_SPECS["paper"][env].n_oracle for env in expected}
    assert oracle_sizes == {"navigation1": 20_000, "navigation2": 20_000, "maze": 10_000}
    assert len({j.seed for j in jobs}) >= 3


def test_rrl_check_writes_summary_json_shaped_for_readers(tmp_path):
    table = paper.rrl_check(str(tmp_path), "smoke", 1, str(tmp_path / "data"))
    summary = json.load(open(tmp_path / "rrl_check" / "summary.json"))
    assert set(summary) == {"navigation1", "navigation2", "maze"} and "| Navigation 1 | RRL |" in table
    for env, methods in summary.items():
        assert set(methods) == {"rrl", "unconstrained"}
        for s in methods.values():
            assert s["seeds"] == paper.RRL_CHECK_SEEDS and s["episodes"] == 2
            assert 0 <= s["violation_rate"] <= 1 and 0 <= s["success_rate_last100"] <= 1


def test_comparison_writes_summary_json_table_and_paths(tmp_path):
    earlier = tmp_path / "r" / "maze"                    # an environment summarised by an earlier call
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text(json.dumps(
        {"env": "maze", "preset": "smoke", "methods": {"mesa": {"seeds": 3, "episodes": 2, "critic_auroc": {}}}}))
    table = paper.comparison(str(tmp_path / "r"), "smoke", 1, str(tmp_path / "data"), env_names=("navigation1",))
    assert table.count("| maze | MESA | 3 |") == 1          # the table keeps its row
    summary = json.load(open(tmp_path / "r" / "navigation1" / "summary.json"))
    assert summary["env"] == "navigation1" and summary["preset"] == "smoke"
    assert set(summary["methods"]) == set(paper.mesa.METHODS)
    for s in summary["methods"].values():
        assert s["seeds"] == paper.comparison_seeds("smoke") and "cumulative_violations_se" in s
    assert table.split("\n\n")[0].count("| navigation1 |") == len(paper.mesa.METHODS)    # the claims follow
    pictures = list((tmp_path / "r" / "navigation1" / "paths").glob("*.png"))
    assert len(pictures) == len(paper.mesa.METHODS) * paper.comparison_seeds("smoke")
    mesa_mt = summary["comparisons"]["mesa vs multitask"]
    assert mesa_mt["claim"] == "as_few" and mesa_mt["verdict"] in ("reproduced", "refuted", "undecided")
    assert set(summary["comparisons"]) == {f"mesa vs {m}" for m in paper.mesa.METHODS if m != "mesa"} | {
        "rrl vs unconstrained", "rrl_oracle vs unconstrained"}
    assert all(len(s["per_seed"]["cumulative_violations"]) == 3 for s in summary["methods"].values())


def test_quick_runs_ten_seeds_where_runs_are_cheap():
    assert [paper.comparison_seeds("quick", e) for e in ("navigation1", "navigation2", "maze", "halfcheetah")] == [10, 10, 3, 3]
    assert paper.comparison_seeds("paper", "navigation1") == 5 and paper.comparison_seeds("smoke", "navigation1") == 3


def test_summaries_only_rewrites_the_summaries_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(studies, "SUMMARISE_ONLY", False)      # restored after the test: main sets it
    out, data = tmp_path / "r", tmp_path / "data"
    paper.comparison(str(out), "smoke", 1, str(data), env_names=("navigation1",), n_seeds=1)
    first = (out / "navigation1" / "summary.json").read_text()
    (out / "navigation1" / "summary.json").unlink()
    before = sorted(p for p in tmp_path.rglob("*"))
    paper.main(["--summaries-only", "--only", "comparison", "--env", "navigation1", "--seeds", "1",
                "--preset", "smoke", "--out", str(out), "--data-root", str(tmp_path / "empty")])
    assert (out / "navigation1" / "summary.json").read_text() == first
    assert not (tmp_path / "empty").exists()                                  # no dataset made
    after = sorted(p for p in tmp_path.rglob("*") if p.name not in ("summary.json", "RESULTS_comparison.md"))
    assert after == [p for p in before if p.name != "RESULTS_comparison.md"]  # no run started, nothing else written
    config = json.loads((out / "navigation1" / "rrl" / "seed0" / "config.json").read_text())
    config["hyperparameters"]["sac"]["batch_size"] += 1      # a run made with other settings
    config["run_key"] = "of-those-settings"
    (out / "navigation1" / "rrl" / "seed0" / "config.json").write_text(json.dumps(config))
    paper.main(["--summaries-only", "--only", "comparison", "--env", "navigation1", "--seeds", "1",
                "--preset", "smoke", "--out", str(out), "--data-root", str(tmp_path / "empty")])
    assert set(json.loads((out / "navigation1" / "summary.json").read_text())["methods"]) == \
        set(paper.mesa.METHODS) - {"rrl"}                      # left out, not mixed in
    with pytest.raises(SystemExit) as stop:
        paper.main(["--summaries-only", "--only", "figure2", "--out", str(out)])
    assert stop.value.code == 2 and "figure2 computes more" in capsys.readouterr().err


def test_rrl_baselines_runs_the_five_beside_rrl_and_writes_the_ratio(tmp_path):
    paper.rrl_baselines(str(tmp_path), "smoke", 1, str(tmp_path / "data"), seeds=1, env_names=("maze",))
    first = json.load(open(tmp_path / "rrl_baselines" / "summary.json"))
    assert len(first["maze"]) == 7 and not first["navigation1"] and not first["navigation2"]   # maze alone
    table = paper.rrl_baselines(str(tmp_path), "smoke", 1, str(tmp_path / "data"), seeds=1)
    summary = json.load(open(tmp_path / "rrl_baselines" / "summary.json"))
    for env in paper.RRL_CHECK_EPISODES:
        assert set(summary[env]) == {*paper.baselines.BASELINES, "rrl_oracle", "unconstrained"}
        assert all(s["final_success_violation_ratio"] > 0 for s in summary[env].values())
    assert (tmp_path / "rrl_baselines" / "success_violation_ratio.png").stat().st_size > 0
    assert "| Navigation 1 | RCPO |" in table


def test_success_violation_ratio_counts_from_one():
    episodes = {"success": np.array([0, 1, 1, 0.0]), "violation": np.array([1, 0, 0, 1])}
    assert paper.success_violation_ratio(episodes).tolist() == [0.5, 1.0, 1.5, 1.0]


def test_mesa_variants_runs_the_authors_variant_beside_the_comparisons_runs(tmp_path):
    out, data = str(tmp_path / "r"), str(tmp_path / "data")
    table = studies.mesa_variants(out, "smoke", 1, data, env_names=("navigation1", "halfcheetah"), seeds=1)
    summary = json.load(open(tmp_path / "r" / "mesa_variants" / "summary.json"))["envs"]
    # Multi-Task's authors' variant differs only where it adds the training data to Phase 2
    assert set(summary["navigation1"]) == {"mesa", "mesa_authors", "multitask"}
    assert set(summary["halfcheetah"]) == {"mesa", "mesa_authors", "multitask", "multitask_authors"}
    assert (tmp_path / "r" / "halfcheetah" / "mesa" / "seed0" / "episodes.csv").exists()   # the comparison's run
    authors = json.load(open(tmp_path / "r" / "mesa_variants" / "authors" / "halfcheetah" / "mesa" / "seed0"
                             / "config.json"))["hyperparameters"]
    assert authors["meta"]["learn_inner_lr"] and authors["meta"]["target"] == "current"
    assert list(authors["recovery"]["hidden"]) == [100, 100, 100]
    paper_run = json.load(open(tmp_path / "r" / "halfcheetah" / "mesa" / "seed0" / "config.json"))["hyperparameters"]
    assert not paper_run["meta"].get("learn_inner_lr", False)
    for rows in summary.values():
        for s in rows.values():
            assert s["seeds"] == 1 and "heldout_after_phase1" in s["critic_auroc"]
    assert table.count("| halfcheetah |") == 4 and "MESA (authors' variant)" in table
    again = studies.mesa_variants(out, "smoke", 1, data, env_names=("navigation1",), seeds=1)
    assert again.count("| halfcheetah |") == 4                      # a call on one env keeps the others


def test_paper_scale_runs_every_row_over_the_papers_episodes_and_summarises_them(tmp_path):
    out, data = str(tmp_path / "r"), str(tmp_path / "data")
    quick = studies.paper_scale_job("ant", "mesa", "authors", 0, out, "quick", data)
    assert quick.episodes == 1000 and quick.hp.recovery.layers == "wlinear" and quick.hp.sac.hidden == (128, 128)
    assert quick.folder == str(tmp_path / "r" / "paper_scale" / "authors" / "ant" / "mesa" / "seed0")
    assert studies.paper_scale_job("halfcheetah", "rrl", "paper", 0, out, "quick", data).episodes == 500
    # the study is the same on every environment: Navigation 1 keeps the smoke run short
    table = studies.paper_scale(out, "smoke", 1, data, env_names=("navigation1",), seeds=1)
    summary = json.load(open(tmp_path / "r" / "paper_scale" / "navigation1" / "summary.json"))
    assert summary["env"] == "navigation1"
    assert set(summary["methods"]) == {row for row, _, _ in studies.PAPER_SCALE_ROWS}
    for s in summary["methods"].values():
        assert s["seeds"] == 1 and s["episodes"] == 2 and "critic_level" in s and "cumulative_violations_at" in s
    assert summary["methods"]["mesa_authors"]["critic_level"]["d_test_after_phase2"]["safe_above_eps"] is not None
    assert "MESA (authors' variant)" in table
    assert (tmp_path / "r" / "paper_scale" / "navigation1" / "cumulative_violations.png").stat().st_size > 0
    assert "paper_scale" not in paper.DEFAULT_PARTS        # days of compute: only when asked for


def test_paper_scale_runs_the_authors_mesa_after_every_seed_of_the_others(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(studies, "prepare", lambda *args, **kwargs: None)
    monkeypatch.setattr(studies, "run_missing", lambda jobs, workers: ran.extend(jobs))
    studies.paper_scale(str(tmp_path), "quick", 1, str(tmp_path / "data"), env_names=("ant", "halfcheetah"))
    rows = [(j.env, j.method, "authors" in j.folder, j.seed) for j in ran]
    paper_rows = ("unconstrained", "rrl", "multitask", "mesa")
    assert rows[:15] == [("ant", m, False, s) for s in range(3) for m in paper_rows] + [("ant", "mesa", True, s) for s in range(3)]
    assert rows[15:35] == [("halfcheetah", m, False, s) for s in range(5) for m in paper_rows]
    assert rows[35:] == [("halfcheetah", "mesa", True, s) for s in range(5)]



def test_carl_part_adds_its_rows_to_the_comparisons_summary_and_keeps_them(tmp_path, monkeypatch):
    """paper.py --only carl runs CARL and CARL-Offline into the comparison's folders; the summary then
    has the comparison's rows and theirs, rewritten alike by --summaries-only (carl or comparison)."""
    monkeypatch.setattr(studies, "SUMMARISE_ONLY", False)      # restored after the test: main sets it
    out, data = tmp_path / "r", str(tmp_path / "data")
    paper.comparison(str(out), "smoke", 1, data, env_names=("cartpole",), n_seeds=1)
    table = paper.carl_comparison(str(out), "smoke", 1, data, env_names=("cartpole",), n_seeds=1)
    assert "| cartpole | CARL | 1 |" in table and "| cartpole | CARL-Offline | 1 |" in table
    assert all((out / "cartpole" / m / "seed0" / "episodes.csv").exists() for m in paper.carl.CARL_METHODS)
    summary = (out / "cartpole" / "summary.json").read_text()
    assert set(json.loads(summary)["methods"]) == set(paper.mesa.METHODS + paper.carl.CARL_METHODS)
    assert "carl" in paper.SUMMARY_PARTS and "carl" in paper.PARTS and "carl" not in paper.DEFAULT_PARTS
    for part in ("carl", "comparison"):
        (out / "cartpole" / "summary.json").unlink()
        paper.main(["--summaries-only", "--only", part, "--env", "cartpole", "--seeds", "1", "--preset", "smoke",
                    "--out", str(out), "--data-root", str(tmp_path / "empty")])
        assert (out / "cartpole" / "summary.json").read_text() == summary, part
    assert not (tmp_path / "empty").exists()


def test_figure6_summarises_todays_runs_and_decides_each_condition_by_the_rule(tmp_path):
    out = str(tmp_path / "r")
    jobs = figures.figure6_jobs(out, "quick", str(tmp_path / "data"))
    assert list(jobs) == ["D_test x 1", "D_test x 0.5", "D_test x 0.25", "D_test x 0.125", "D_test x 0.0625",
                          "partial power loss"]
    assert {j.folder for j in jobs["D_test x 1"]} == {f"{out}/halfcheetah/{m}/seed{s}" for m in ("mesa", "multitask")
                                                       for s in range(3)}      # shared with the comparison
    violations = {"mesa": [2, 3, 4], "multitask": [20, 30, 40]}

    def finish(j, n):
        rows = [{"episode": e, "env_steps": 1000 * e, "return": 100.0, "length": 1000, "violation": int(e < n),
                 "success": 0.0, "recovery_fraction": 0.0} for e in range(60)]
        critic = {"after_phase2": {"auroc": 0.9, "safe_above_eps": 0.05, "median_safe": 0.02},
                  "d_test_after_phase2": {"safe_above_eps": 0.03, "median_safe": 0.01}}
        os.makedirs(j.folder, exist_ok=True)
        jobspec.write_run(j, {"timings": {}, "critic": critic}, rows)

    for j in jobs["D_test x 0.5"]:
        finish(j, violations[j.method][j.seed])
    for j in jobs["partial power loss"]:
        if j.method == "mesa":                            # Multi-Task not run: no comparison
            finish(j, 1)
    stale = dataclasses.replace(jobs["D_test x 0.25"][0], episodes=61)    # another configuration's run
    finish(stale, 5)
    table = figures.figure6_summary(out, "quick", jobs)
    summary = json.load(open(tmp_path / "r" / "figure6" / "summary.json"))
    assert summary["conditions"]["D_test x 0.5"]["mesa"]["per_seed"]["cumulative_violations"] == [2, 3, 4]
    assert summary["conditions"]["D_test x 0.25"] == {}                   # the stale run is left out
    assert set(summary["comparisons"]) == {"D_test x 0.5"}
    assert summary["comparisons"]["D_test x 0.5"]["verdict"] == "reproduced"
    assert "| D_test x 0.5 | MESA | 3 | 3.0 [" in table and "| 2, 3, 4 | 100 [100, 100] | 0.900 ± 0.000 | 5% / 3% |" in table
    assert "| D_test x 0.5 | 0.10 [" in table and "| reproduced |" in table
    assert (tmp_path / "r" / "figure6" / "violations.png").stat().st_size > 0
