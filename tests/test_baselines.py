"""Recovery RL's comparison methods (baselines.py): the term that makes each what it is."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import baselines
import plots
import run
from recovery_rl import RecoveryConfig, Safety
from sac import SACConfig

LOW, HIGH = np.array([-1.0, -1.0]), np.array([1.0, 1.0])


def agent(method, **changes):
    cfg = baselines.BaselineConfig(**changes)
    safety = Safety(2, 2, LOW, HIGH, RecoveryConfig(eps_risk=0.3, hidden=(16, 16)), recovery=False) \
        if method in baselines.USES_CRITIC else None
    return baselines.ConstrainedSAC(method, 2, 2, LOW, HIGH, SACConfig(hidden=(16, 16), start_steps=0), cfg, safety, 10)


@pytest.mark.parametrize("risk, direction", [(0.9, 1), (0.05, -1)])
def test_the_multiplier_rises_when_violated_and_falls_when_slack(risk, direction):
    lr = agent("lr", nu=10.0, dual_lr=0.01)
    for _ in range(20):
        lr.dual_step(torch.full((8,), risk))
    assert np.sign(lr.multiplier - 10.0) == direction


def test_rspo_schedule_falls_linearly_to_zero():
    values = [baselines.rspo_multiplier(200.0, t, 10) for t in range(12)]
    assert values[0] == 200.0 and values[5] == 100.0 and values[10] == 0.0 == values[11]
    assert all(a >= b for a, b in zip(values, values[1:]))
    rspo = agent("rspo", nu_start=200.0)
    rspo.begin_episode(5)
    assert rspo.nu_now == 100.0


def test_rp_trains_on_r_minus_p_only_at_a_violation():
    rp = agent("rp", penalty=50.0)
    assert rp.training_reward(-3.0, 1.0) == -53.0 and rp.training_reward(-3.0, 0.0) == -3.0
    assert agent("lr").training_reward(-3.0, 1.0) == -3.0


def test_rcpo_shapes_the_target_by_lambda_q_risk_of_the_taken_action():
    rcpo = agent("rcpo", rcpo_lambda=7.0, dual_lr=0.0)
    batch = {"obs": torch.randn(5, 2), "act": torch.rand(5, 2) * 2 - 1}
    with torch.no_grad():
        expected = -7.0 * rcpo.safety.q_risk(batch["obs"], batch["act"])
        shaped = rcpo.target_shaping(batch)
    assert torch.allclose(shaped, expected, rtol=1e-5)
    assert agent("lr").target_shaping(batch) == 0.0


def test_lagrangian_penalty_moves_the_actor_not_q_risk():
    lr = agent("lr", nu=3.0, dual_lr=0.0)
    obs = torch.randn(6, 2)
    action, _ = lr.actor(obs)
    penalty = lr.actor_penalty(obs, action)
    assert torch.isclose(penalty, 3.0 * (lr.safety.q_risk(obs, action).mean() - 0.3))
    penalty.backward()
    assert all(p.grad is None for p in lr.safety.q_risk.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lr.actor.parameters())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.floats(0, 1), st.integers(0, 2**31))
def test_sqrl_never_picks_an_unsafe_action_when_a_safe_one_exists(risks, eps, seed):
    risks_t = torch.tensor(risks)
    index = baselines.sqrl_choice(torch.zeros(len(risks)), risks_t, eps, np.random.default_rng(seed))
    if (risks_t <= eps).any():
        assert risks_t[index] <= eps
    else:
        assert risks_t[index] == risks_t.min()


def test_sqrl_acts_with_a_sampled_action_below_eps(monkeypatch):
    sqrl = agent("sqrl")
    monkeypatch.setattr(sqrl, "risk", lambda obs, act: act[:, 0].abs())   # safe: |a_x| <= 0.3
    actions = np.stack([sqrl.explore(np.zeros(2, np.float32), 10) for _ in range(30)])
    assert np.all(np.abs(actions[:, 0]) <= 0.3)


def test_checkpoint_keeps_the_multiplier():
    a, b = agent("rcpo", rcpo_lambda=5.0, dual_lr=0.1), agent("rcpo", rcpo_lambda=1.0)
    a.dual_step(torch.full((4,), 0.9))
    b.load_state_dict(a.state_dict())
    assert b.multiplier == a.multiplier != 5.0


def test_every_baseline_runs_end_to_end_on_the_smoke_preset(tmp_path, capsys):
    run.main(["--preset", "smoke", "--env", "navigation1", "--methods", ",".join(baselines.BASELINES), "--seed", "0",
              "--workers", "1", "--no-progress", "--out", str(tmp_path / "r"), "--data-root", str(tmp_path / "d")])
    out = capsys.readouterr().out
    for method in baselines.BASELINES:
        assert f"done navigation1/{method}/seed0" in out and plots.LABELS[method] in out
    assert "| MESA |" not in out           # "all" stays the paper's comparison; baselines by name
