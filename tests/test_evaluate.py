"""evaluate.py on saved smoke runs: the measures it prints, the picture, the video or its message."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import critic_scores
import evaluate
import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out, data = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("data")
    run.main(["--preset", "smoke", "--seed", "0", "--workers", "1", "--no-progress", "--env", "navigation1,cartpole",
              "--methods", "mesa,unconstrained", "--out", str(out), "--data-root", str(data)])
    return out / "smoke"


def test_evaluate_prints_both_modes_and_draws_the_paths(runs, tmp_path, capsys):
    picture = tmp_path / "paths.png"
    evaluate.main([str(runs / "navigation1" / "mesa" / "seed0"), "--episodes", "2", "--picture", str(picture)])
    out = capsys.readouterr().out
    assert "filter on" in out and "filter off" in out and "violating episodes" in out
    assert picture.stat().st_size > 10_000


def test_unconstrained_has_only_its_task_policy(runs, capsys):
    evaluate.main([str(runs / "navigation1" / "unconstrained" / "seed0"), "--episodes", "1"])
    out = capsys.readouterr().out
    assert "task policy" in out and "filter on" not in out


def test_filter_off_never_lets_pi_rec_act(runs):
    saved = evaluate.SavedAgent(str(runs / "navigation1" / "mesa" / "seed0"))
    saved.safety.cfg.eps_risk = 0.0          # the filter would fire on every step
    assert evaluate.run_episodes(saved, 1, False, 0)["recovery_fraction"] == 0.0
    assert evaluate.run_episodes(saved, 1, True, 0)["recovery_fraction"] > 0.9


def test_risk_at_finds_the_grid_action_of_least_risk(runs, capsys):
    saved = evaluate.SavedAgent(str(runs / "navigation1" / "mesa" / "seed0"))
    saved.safety.q_risk = lambda obs, act: 0.5 + act[:, 1] - 0.1 * act[:, 0]   # least risk at a = (1, -1)
    r = saved.risk_at((-20.0, 3.0))
    assert r["grid_min"][0].tolist() == [1.0, -1.0] and r["grid_min"][1] == pytest.approx(-0.6)
    assert r["grid_max"][0].tolist() == [-1.0, 1.0] and r["grid_max"][1] == pytest.approx(1.6)
    a_rec, q_rec = r["pi_rec"]
    assert q_rec == pytest.approx(0.5 + a_rec[1] - 0.1 * a_rec[0], abs=1e-6)
    evaluate.main([str(runs / "navigation1" / "mesa" / "seed0"), "--risk-at", "-20", "3"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("task", "pi_rec", "grid_min", "grid_max")) and "return" not in out


def test_critic_levels_measure_q_risk_against_eps_risk_on_d_test(runs, capsys):
    saved = evaluate.SavedAgent(str(runs / "navigation1" / "mesa" / "seed0"))
    test, eps = saved.d_test(), saved.safety.cfg.eps_risk
    critic, logit = saved.safety.q_risk, float(np.log((eps + 0.01) / (1 - eps - 0.01)))
    critic.head_logits = lambda obs, act: torch.full((1, len(obs)), logit)      # above eps_risk everywhere
    high = saved.critic_levels(test)
    assert high["median_safe"] == pytest.approx(eps + 0.01) and high["safe_above"] == high["pi_rec_safe_above"] == 1.0
    assert high["saturated"] == 0.0 and high["logits"] == pytest.approx([logit] * 3)
    labels = torch.from_numpy(critic_scores.danger_labels(test["costs"], test["terminals"], test["timeouts"],
                                                          round(1 / (1 - saved.safety.cfg.gamma_risk))))
    critic.head_logits = lambda obs, act: torch.where(labels, 60.0, -31.0)[None]     # a perfect, saturated critic
    exact = saved.critic_levels(test)
    assert exact["safe_above"] == 0.0 and exact["unsafe_above"] == 1.0 and exact["median_safe"] < 1e-13
    assert exact["saturated"] == 1.0 and list(exact["logits"]) == [-31.0, -31.0, 60.0]
    del critic.head_logits
    evaluate.main([str(runs / "navigation1" / "mesa" / "seed0"), "--levels"])
    out = capsys.readouterr().out
    assert "after Phase 2" in out and "final" in out and "saturated" in out and "return" not in out


@pytest.mark.parametrize("argv, message", [
    (["{uncon}", "--risk-at", "0", "0"], "--risk-at needs a point environment's run with a critic"),
    (["{uncon}", "--levels"], "--levels needs a run with a critic"),
    (["nowhere"], "config.json not found"),
    (["{nav}", "--video", "x.gif"], "--video films the MuJoCo environments"),
    (["{nav}", "--episodes", "0"], "--episodes must be >= 1"),
])
def test_bad_input_is_one_line(runs, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([a.format(nav=runs / "navigation1" / "mesa" / "seed0",
                                uncon=runs / "navigation1" / "unconstrained" / "seed0") for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name, argv", [("final.pt", []), ("config.json", []), ("phase2.pt", ["--levels"])])
def test_a_damaged_file_is_one_line_naming_it(runs, tmp_path, capsys, name, argv):
    import shutil
    folder = tmp_path / "seed0"
    shutil.copytree(runs / "navigation1" / "mesa" / "seed0", folder)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[:len(data) // 2])                  # truncated
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(folder), "--episodes", "1", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{folder / name} is damaged" in err


def test_video_is_written_or_the_missing_backend_named_in_one_line(runs, tmp_path):
    """A GIF where MuJoCo's offscreen renderer works; else exit 2 with one line naming MUJOCO_GL."""
    video = tmp_path / "cartpole.gif"
    argv = [sys.executable, "evaluate.py", str(runs / "cartpole" / "mesa" / "seed0"), "--episodes", "1",
            "--video", str(video)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    if done.returncode == 0:
        assert video.stat().st_size > 1000 and "frames" in done.stdout
    else:
        assert done.returncode == 2 and "MUJOCO_GL" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    no_display = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    broken = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**no_display, "MUJOCO_GL": "glfw"})     # a window system, and no display
    assert broken.returncode == 2 and "MUJOCO_GL" in broken.stderr and len(broken.stderr.strip().splitlines()) == 1


def test_steps_before_violation_show_who_acted_up_to_the_violation():
    fired = [False, False, True, False, True, True, True, False]
    assert evaluate.steps_before_violation(fired, 7, 5) == "#.###"         # steps 3-7; step 7 violated
    assert evaluate.steps_before_violation(fired, 2, 5) == ".."            # fewer steps than k
    assert evaluate.steps_before_violation(fired, None, 5) is None         # no violation
    assert evaluate.warning_steps(".#.###") == 3 and evaluate.warning_steps("##.") == 0


def test_before_violation_prints_each_violating_episode(runs, capsys):
    saved = evaluate.SavedAgent(str(runs / "navigation1" / "mesa" / "seed0"))
    timelines = evaluate.run_episodes(saved, 2, True, 0)["timelines"]
    for fired_log, first_violation in timelines:
        assert first_violation is None or 1 <= first_violation <= len(fired_log)
    evaluate.main([str(runs / "navigation1" / "mesa" / "seed0"), "--episodes", "2", "--before-violation", "4"])
    out = capsys.readouterr().out
    violating = sum(at is not None for _, at in timelines)
    assert f"{violating} of 2 episodes violate" in out and "return" not in out
    assert sum("pi_rec acting for the last" in line for line in out.splitlines()) == violating
    with pytest.raises(SystemExit):
        evaluate.main([str(runs / "navigation1" / "unconstrained" / "seed0"), "--before-violation", "4"])
