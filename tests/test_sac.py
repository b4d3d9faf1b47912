"""SAC: the squashed log-prob against torch.distributions, target networks, the soft target,
the replay buffer, checkpoints and seeding."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

from common import set_seed
from conftest import random_dataset
from replay_buffer import ReplayBuffer
from sac import SAC, SACConfig, critic_loss, learn_gym_task, soft_q_target, squashed_gaussian_log_prob

floats = st.floats(-3, 3, allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(mean=arrays(np.float64, 3, elements=floats), log_std=arrays(np.float64, 3, elements=st.floats(-2, 1)),
       noise=arrays(np.float64, 3, elements=floats), scale=st.floats(0.1, 5.0), bias=st.floats(-2, 2))
def test_squashed_log_prob_matches_torch_distributions(mean, log_std, noise, scale, bias):
    mean, log_std, noise = map(torch.from_numpy, (mean, log_std, noise))
    u = mean + log_std.exp() * noise
    scale_t = torch.full_like(u, scale)
    action = torch.tanh(u) * scale + bias
    reference = TransformedDistribution(Normal(mean, log_std.exp()),
                                        [TanhTransform(cache_size=1), AffineTransform(bias, scale_t)])
    # cache_size=1 lets the reference invert tanh exactly for the u we sampled
    expected = reference.log_prob(reference.transforms[1](reference.transforms[0](u))).sum(-1)
    ours = squashed_gaussian_log_prob(u, mean, log_std, scale_t)
    assert torch.allclose(ours, expected, atol=1e-6), (ours, expected)
    assert torch.allclose(action, reference.transforms[1](torch.tanh(u)))


def test_actor_samples_within_bounds_and_log_prob_is_consistent():
    set_seed(0)
    agent = SAC(3, 2, np.array([-2.0, 0.0]), np.array([2.0, 1.0]))
    obs = torch.randn(512, 3) * 5
    action, log_pi = agent.actor(obs)
    assert (action[:, 0].abs() <= 2).all() and (action[:, 1] >= 0).all() and (action[:, 1] <= 1).all()
    assert log_pi.shape == (512,) and torch.isfinite(log_pi).all()


def test_acting_without_log_prob_draws_the_same_action():
    agent = SAC(3, 2, np.array([-2.0, 0.0]), np.array([2.0, 1.0]))
    obs = torch.randn(64, 3)
    torch.manual_seed(1)
    with_log_prob, _ = agent.actor(obs)
    torch.manual_seed(1)
    without, log_pi = agent.actor(obs, with_log_prob=False)
    assert log_pi is None and torch.equal(with_log_prob, without)


@given(rew=st.floats(-10, 10), q1=st.floats(-10, 10), q2=st.floats(-10, 10), logp=st.floats(-5, 5),
       done=st.sampled_from([0.0, 1.0]))
def test_soft_q_target(rew, q1, q2, logp, done):
    t = lambda x: torch.tensor([x], dtype=torch.float64)
    y = soft_q_target(t(rew), t(done), t(q1), t(q2), t(logp), 0.99, 0.2).item()
    expected = rew if done else rew + 0.99 * (min(q1, q2) - 0.2 * logp)
    assert y == pytest.approx(expected, abs=1e-9)


def make_agent_and_buffer(autotune=False):
    set_seed(1)
    agent = SAC(4, 2, -np.ones(2), np.ones(2), SACConfig(batch_size=32, autotune=autotune, hidden=(32, 32)))
    return agent, ReplayBuffer.from_arrays(random_dataset(200, 4, 2), seed=0)


def test_no_gradient_reaches_target_networks_and_targets_move_by_polyak():
    agent, buffer = make_agent_and_buffer()
    before = [p.clone() for p in agent.q1_targ.parameters()]
    agent.update(buffer.sample(32))
    for target, old, online in zip(agent.q1_targ.parameters(), before, agent.q1.parameters()):
        assert target.grad is None and not target.requires_grad
        assert torch.allclose(target, old + agent.cfg.tau * (online - old), atol=1e-7)
    assert all(p.requires_grad for p in agent.q1.parameters()), "critics must be unfrozen after the actor step"


def test_actor_step_leaves_the_critics_to_the_critic_loss():
    """The critics after an update equal a lone Adam step on the critic loss: the actor loss adds nothing."""
    agent, buffer = make_agent_and_buffer()
    twin, _ = make_agent_and_buffer()
    batch = buffer.sample(32)
    torch.manual_seed(5)
    agent.update(batch)
    torch.manual_seed(5)
    with torch.no_grad():
        next_act, next_logp = twin.actor(batch["next_obs"])
        y = soft_q_target(batch["rew"], batch["done"], twin.q1_targ(batch["next_obs"], next_act),
                          twin.q2_targ(batch["next_obs"], next_act), next_logp, 0.99, twin.alpha)
    loss = critic_loss(twin.q1(batch["obs"], batch["act"]), twin.q2(batch["obs"], batch["act"]), y)
    twin.critic_optim.zero_grad()
    loss.backward()
    twin.critic_optim.step()
    for a, b in zip(agent.q1.parameters(), twin.q1.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_autotuned_alpha_moves_and_fixed_alpha_does_not():
    agent, buffer = make_agent_and_buffer(autotune=True)
    fixed, _ = make_agent_and_buffer(autotune=False)
    for _ in range(5):
        batch = buffer.sample(32)
        agent.update(batch)
        fixed.update(batch)
    assert agent.alpha != pytest.approx(0.2) and fixed.alpha == pytest.approx(0.2)


def test_checkpoint_round_trip_restores_everything(tmp_path):
    agent, buffer = make_agent_and_buffer(autotune=True)
    for _ in range(3):
        agent.update(buffer.sample(32))
    agent.save(tmp_path / "agent.pt")
    restored, _ = make_agent_and_buffer(autotune=True)
    restored.load(tmp_path / "agent.pt")
    batch = buffer.sample(32)
    torch.manual_seed(0); info_a = agent.update(batch)
    torch.manual_seed(0); info_b = restored.update(batch)
    assert info_a == info_b
    for a, b in zip(agent.q2_targ.parameters(), restored.q2_targ.parameters()):
        assert torch.equal(a, b)


def test_replay_buffer_ring_order_and_violation_index():
    buffer = ReplayBuffer(1, 1, capacity=4, seed=0)
    for i in range(6):
        buffer.add([i], [0.0], float(i), float(i == 2 or i == 5), [i + 1], False, i == 5)
    arrays = buffer.arrays()
    assert len(buffer) == 4 and arrays["rewards"].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert sorted(buffer.data["rewards"][buffer.violation_indices()].tolist()) == [2.0, 5.0]
    buffer.add([6], [0.0], 6.0, 0.0, [7], False, False)  # overwrites the violating row 2
    assert buffer.data["rewards"][buffer.violation_indices()].tolist() == [5.0]
    batch = buffer.sample(64)
    assert set(batch["rew"].tolist()) <= {3.0, 4.0, 5.0, 6.0}
    assert torch.equal(batch["next_obs"][:, 0], batch["obs"][:, 0] + 1)


def test_buffer_from_arrays_round_trip():
    data = random_dataset(50, 3, 2)
    buffer = ReplayBuffer.from_arrays(data, extra_capacity=10)
    out = buffer.arrays()
    assert all(np.array_equal(out[k], data[k]) for k in data)
    with pytest.raises(ValueError, match="cannot append"):
        buffer.add_arrays(random_dataset(11, 3, 2))


def test_set_seed_makes_actions_reproducible():
    acts = []
    for _ in range(2):
        set_seed(3)
        agent = SAC(3, 1, -np.ones(1), np.ones(1))
        acts.append(np.stack([agent.explore(np.zeros(3, np.float32), step) for step in (0, 5000)]))
    assert np.array_equal(acts[0], acts[1])


def test_sac_learns_pendulum():
    """A random policy scores about -1200 on Pendulum-v1; 5000 steps of SAC reach better than -800.

    (The full-size check, `python sac.py`, is reported in docs/testing.md.)"""
    score = learn_gym_task("Pendulum-v1", steps=5000, seed=0,
                           cfg=SACConfig(hidden=(64, 64), batch_size=128), eval_episodes=5)
    assert score > -800, score
