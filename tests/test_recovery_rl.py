"""Recovery RL: the safety Bellman target, Q_risk learning the truth on a Markov chain, the recovery
filter, class-balanced sampling, action relabelling and the Phase-3 loop."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from common import set_seed
from conftest import random_dataset
from mesa import FitConfig, fit
from recovery_rl import (RecoveryConfig, Safety, SafetyCritic, learn_online, phase3_safety_buffer, phase3_step,
                         recovery_filter, safety_bellman_target, safety_critic_loss, sample_class_balanced)
from replay_buffer import ReplayBuffer
from sac import SAC, SACConfig, WLinear

unit = st.floats(0, 1, allow_nan=False, width=32)


@settings(max_examples=200)
@given(data=st.data(), n=st.integers(1, 32), gamma=unit)
def test_safety_bellman_target_properties(data, n, gamma):
    cost = torch.tensor(data.draw(arrays(np.float32, n, elements=st.sampled_from([0.0, 1.0]))))
    next_q = torch.tensor(data.draw(arrays(np.float32, n, elements=unit)))
    y = safety_bellman_target(cost, next_q, gamma)
    assert ((y >= 0) & (y <= 1)).all()
    assert (y[cost == 1] == 1).all()
    assert torch.allclose(y[cost == 0], gamma * next_q[cost == 0])
    bumped = safety_bellman_target(cost, torch.clamp(next_q + 0.1, max=1.0), gamma)
    assert (bumped >= y).all(), "the target must be monotone in Q_risk(s', a')"


# ---------------------------------------------------------------------------- a chain with known risk

N_STATES, GAMMA_RISK, MOVE = 5, 0.8, 0.8  # state 4 is the violating state


def chain_next_state_probs(s: int, a: float) -> np.ndarray:
    """Action +1 moves right, -1 moves left, each with probability MOVE, else the state stays."""
    probs = np.zeros(N_STATES)
    probs[int(np.clip(s + a, 0, N_STATES - 1))] += MOVE
    probs[s] += 1 - MOVE
    return probs


def true_chain_risk() -> np.ndarray:
    """Solve Q(s,a) = sum_s' P(s'|s,a) [c(s') + (1 - c(s')) gamma_risk 0.5 sum_a' Q(s',a')] exactly."""
    pairs = [(s, a) for s in range(N_STATES - 1) for a in (-1.0, 1.0)]
    index = {pair: i for i, pair in enumerate(pairs)}
    A, b = np.eye(len(pairs)), np.zeros(len(pairs))
    for (s, a), i in index.items():
        for s_next, p in enumerate(chain_next_state_probs(s, a)):
            if s_next == N_STATES - 1:
                b[i] += p
            elif p:
                for a_next in (-1.0, 1.0):  # the evaluated policy picks -1 or +1 with probability 1/2
                    A[i, index[(s_next, a_next)]] -= p * GAMMA_RISK * 0.5
    return np.linalg.solve(A, b).reshape(N_STATES - 1, 2)


def chain_dataset(n: int, rng) -> dict:
    s = rng.integers(0, N_STATES - 1, n)
    a = rng.choice([-1.0, 1.0], n)
    s_next = np.array([rng.choice(N_STATES, p=chain_next_state_probs(si, ai)) for si, ai in zip(s, a)])
    one_hot = np.eye(N_STATES, dtype=np.float32)
    return {"observations": one_hot[s], "actions": a[:, None].astype(np.float32), "rewards": np.zeros(n, np.float32),
            "costs": (s_next == N_STATES - 1).astype(np.float32), "next_observations": one_hot[s_next],
            "terminals": s_next == N_STATES - 1, "timeouts": np.zeros(n, bool)}


def test_q_risk_learns_the_discounted_violation_probability_of_a_markov_chain():
    set_seed(0)
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer.from_arrays(chain_dataset(4000, rng), seed=0)
    safety = Safety(N_STATES, 1, [-1.0], [1.0], RecoveryConfig(gamma_risk=GAMMA_RISK, tau_risk=0.02, hidden=(64, 64)))
    coin_flip_policy = lambda obs: torch.randint(0, 2, (len(obs), 1)).float() * 2 - 1
    fit(safety, buffer, coin_flip_policy, FitConfig(steps=2500, lr=1e-3, batch_size=256))
    obs = torch.eye(N_STATES)[: N_STATES - 1].repeat_interleave(2, 0)
    act = torch.tensor([[-1.0], [1.0]]).repeat(N_STATES - 1, 1)
    with torch.no_grad():
        learned = safety.q_risk(obs, act).numpy().reshape(N_STATES - 1, 2)
    truth = true_chain_risk()
    assert truth[3, 1] > 0.8 and truth[0, 0] < 0.1  # the chain is not trivial
    assert np.abs(learned - truth).max() < 0.05, (learned, truth)


def test_a_lagged_target_leaves_far_states_risky_after_pretraining_and_the_current_network_does_not():
    """Why the MESA comparison bootstraps from the current network (mesa.paper_hyperparameters):
    with Recovery RL's tau_risk = 2e-4, 2500 steps settle under one Bellman backup, so states far
    from the violation keep about gamma_risk * 0.5 (the sigmoid's start) instead of their risk."""
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer.from_arrays(chain_dataset(4000, rng), seed=0)
    coin_flip_policy = lambda obs: torch.randint(0, 2, (len(obs), 1)).float() * 2 - 1
    obs = torch.eye(N_STATES)[: N_STATES - 1].repeat_interleave(2, 0)
    act = torch.tensor([[-1.0], [1.0]]).repeat(N_STATES - 1, 1)
    learned = {}
    for tau in (2e-4, 1.0):
        set_seed(0)
        safety = Safety(N_STATES, 1, [-1.0], [1.0], RecoveryConfig(gamma_risk=GAMMA_RISK, tau_risk=tau, hidden=(64, 64)))
        fit(safety, buffer, coin_flip_policy, FitConfig(steps=2500, lr=1e-3, batch_size=256))
        with torch.no_grad():
            learned[tau] = safety.q_risk(obs, act).numpy().reshape(N_STATES - 1, 2)
    truth = true_chain_risk()
    assert np.abs(learned[1.0] - truth).max() < 0.05, (learned[1.0], truth)
    assert learned[2e-4][0, 0] > truth[0, 0] + 0.15, (learned[2e-4], truth)     # the far state looks risky


# ---------------------------------------------------------------------------- the filter

@given(data=st.data(), n=st.integers(1, 16), act_dim=st.integers(1, 4), eps=unit)
def test_recovery_filter_executes_task_action_exactly_where_risk_is_at_most_eps(data, n, act_dim, eps):
    risk = torch.tensor(data.draw(arrays(np.float32, n, elements=unit)))
    a_task = torch.tensor(data.draw(arrays(np.float32, (n, act_dim), elements=st.floats(-1, 1, width=32))))
    a_rec = torch.tensor(data.draw(arrays(np.float32, (n, act_dim), elements=st.floats(-1, 1, width=32))))
    executed, fired = recovery_filter(risk, eps, a_task, a_rec)
    safe = risk <= eps
    assert torch.equal(fired, ~safe)
    assert torch.equal(executed[safe], a_task[safe]) and torch.equal(executed[~safe], a_rec[~safe])


@given(pos_fraction=unit, n_violations=st.integers(0, 5))
@settings(max_examples=40, deadline=None)
def test_class_balanced_sampling(pos_fraction, n_violations):
    data = random_dataset(100, 2, 1, violation_rate=0.0)
    data["costs"][:n_violations] = 1.0
    buffer = ReplayBuffer.from_arrays(data, seed=0)
    batch = sample_class_balanced(buffer, 64, pos_fraction)
    assert len(batch["cost"]) == 64
    n_pos = int(batch["cost"].sum())
    if n_violations == 0:
        assert n_pos == 0
    else:  # at least the requested share; uniform draws may add a few more
        assert n_pos >= round(pos_fraction * 64)


# ---------------------------------------------------------------------------- relabelling and Phase 3

def filtering_safety(fires: bool) -> Safety:
    """A Safety whose Q_risk is ~1 everywhere; eps 0.5 makes the filter always fire, eps 1 never."""
    safety = Safety(2, 1, [-1.0], [1.0], RecoveryConfig(eps_risk=0.5 if fires else 1.0, batch_size=8, hidden=(8,)))
    with torch.no_grad():
        safety.q_risk.net[-1].bias.fill_(5.0)
        safety.pi_rec.net[-1].bias.fill_(-5.0)  # pi_rec(s) ~ -1, far from the proposal below
    return safety


@pytest.mark.parametrize("fires", [True, False])
def test_relabelling_task_buffer_gets_proposed_and_safety_buffer_executed_action(line_env, fires):
    set_seed(0)
    agent = SAC(2, 1, [-1.0], [1.0], SACConfig(batch_size=8, hidden=(8,)))
    proposal = np.array([0.7], np.float32)
    agent.explore = lambda obs, step: proposal
    safety = filtering_safety(fires)
    task_buffer, safety_buffer = ReplayBuffer(2, 1, 10), ReplayBuffer(2, 1, 10)
    obs, _ = line_env.reset(seed=0)
    with torch.no_grad():
        a_rec = safety.pi_rec(torch.from_numpy(obs[None]))[0].numpy()
    *_, fired = phase3_step(line_env, obs, agent, safety, task_buffer, safety_buffer, env_step=0)
    executed = line_env.unwrapped.received[-1]
    assert fired == fires
    assert np.array_equal(task_buffer.arrays()["actions"][0], proposal)
    assert np.array_equal(safety_buffer.arrays()["actions"][0], executed)
    assert np.allclose(executed, a_rec if fires else proposal)
    assert not np.allclose(a_rec, proposal)


def test_phase3_loop_reports_metrics_and_updates_networks(line_env):
    set_seed(0)
    agent = SAC(2, 1, [-1.0], [1.0], SACConfig(batch_size=8, hidden=(8,), start_steps=5))
    safety = filtering_safety(fires=True)
    q_before = [p.clone() for p in safety.q_risk.parameters()]
    episodes = list(learn_online(line_env, agent, safety, n_episodes=3, seed=0, offline=random_dataset(20, 2, 1)))
    assert [e["episode"] for e in episodes] == [0, 1, 2]
    assert episodes[-1]["env_steps"] == sum(e["length"] for e in episodes)
    assert all(e["violation"] in (0, 1) and 0 <= e["recovery_fraction"] <= 1 for e in episodes)
    assert any(not torch.equal(a, b) for a, b in zip(q_before, safety.q_risk.parameters()))


def test_unconstrained_loop_never_filters_and_counts_violations(line_env):
    set_seed(0)
    agent = SAC(2, 1, [-1.0], [1.0], SACConfig(batch_size=8, hidden=(8,), start_steps=10_000))
    agent.explore = lambda obs, step: np.array([1.0], np.float32)  # drive straight into the wall
    episodes = list(learn_online(line_env, agent, None, n_episodes=2, seed=0))
    assert all(e["violation"] == 1 and e["recovery_fraction"] == 0 and e["length"] < 20 for e in episodes)


@pytest.mark.parametrize("target_policy", ["task", "composite"])
def test_phase3_bellman_target_uses_the_task_policy_unless_composite_is_chosen(line_env, target_policy):
    """Filter always fires: the composite policy's next action is pi_rec's (~ -1), the task's is +0.7."""
    set_seed(0)
    agent = SAC(2, 1, [-1.0], [1.0], SACConfig(batch_size=8, hidden=(8,)))
    agent.policy = lambda obs: torch.full((len(obs), 1), 0.7)
    safety = filtering_safety(fires=True)
    safety.cfg.target_policy = target_policy
    seen = []
    safety.update_critic = lambda batch, policy: seen.append(policy(batch["next_obs"]))
    task_buffer, safety_buffer = ReplayBuffer(2, 1, 10), ReplayBuffer(2, 1, 10)
    safety_buffer.add_arrays(random_dataset(8, 2, 1))
    obs, _ = line_env.reset(seed=0)
    phase3_step(line_env, obs, agent, safety, task_buffer, safety_buffer, env_step=0)
    next_actions = seen[0].numpy()
    if target_policy == "task":
        assert np.allclose(next_actions, 0.7)
    else:
        assert np.all(next_actions < -0.9)


def test_target_policy_default_is_task_and_nonsense_is_refused():
    assert RecoveryConfig().target_policy == "task"
    with pytest.raises(ValueError, match="target_policy must be one of task, composite"):
        RecoveryConfig(target_policy="recovery")


def test_visited_buffer_records_every_executed_transition(line_env):
    """The safety buffer's rows after the offline data are every transition Phase 3 executed."""
    set_seed(0)
    agent = SAC(2, 1, [-1.0], [1.0], SACConfig(batch_size=8, hidden=(8,), start_steps=5))
    offline = random_dataset(20, 2, 1)
    safety_buffer = phase3_safety_buffer(line_env, 2, 0, offline)
    episodes = list(learn_online(line_env, agent, filtering_safety(fires=True), n_episodes=2, seed=0,
                                 safety_buffer=safety_buffer))
    visited = ReplayBuffer.from_arrays({k: v[20:] for k, v in safety_buffer.arrays().items()})
    assert len(visited) == episodes[-1]["env_steps"]
    ends = visited.arrays()["terminals"] | visited.arrays()["timeouts"]
    assert ends.sum() == 2 and ends[-1]


def test_wlinear_forward_is_x_times_w_plus_b_with_w_and_b_generated_from_the_code():
    torch.manual_seed(0)
    layer = WLinear(5, 3, code_dim=7)
    x = torch.randn(4, 5)
    theta = layer.fc.weight @ layer.z + layer.fc.bias            # fc(z), written out
    w, b = theta[:15].view(5, 3), theta[15:]
    expected = torch.stack([torch.stack([sum(x[n, i] * w[i, j] for i in range(5)) + b[j] for j in range(3)])
                            for n in range(4)])
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert layer.z.shape == (7,) and layer.fc.weight.shape == (18, 7)
    assert {n for n, _ in layer.named_parameters()} == {"z", "fc.weight", "fc.bias"}


def test_wlinear_code_starts_with_std_one_over_out_features():
    torch.manual_seed(0)
    codes = torch.stack([WLinear(4, 50).z for _ in range(40)])
    assert codes.std().item() == pytest.approx(1 / 50, rel=0.05)


def test_wlinear_first_adam_step_moves_each_weight_by_lr_times_one_plus_the_codes_l1_norm():
    """The docstring's claim behind Figure 2's first adaptation step: with fc.weight at 0 (so z
    gets no gradient), Adam's first step moves each generated weight by lr (1 + |z|_1) against
    the sign of its gradient; a plain weight moves by lr."""
    torch.manual_seed(0)
    layer, lr = WLinear(4, 3, code_dim=50), 1e-3
    torch.nn.init.zeros_(layer.fc.weight)
    x, c = torch.randn(8, 4), torch.randn(8, 3)
    theta = lambda: layer.fc(layer.z).detach().clone()        # noqa: E731
    before = theta()
    grad_theta = torch.autograd.grad((layer(x) * c).sum(), layer.fc.bias)[0]   # d loss / d theta
    optim = torch.optim.Adam(layer.parameters(), lr=lr)
    optim.zero_grad()
    (layer(x) * c).sum().backward()
    optim.step()
    expected = -lr * torch.sign(grad_theta) * (1 + layer.z.abs().sum())
    assert torch.allclose(theta() - before, expected, rtol=1e-4, atol=1e-9)
    assert layer.z.abs().sum() > 5      # the move is several times a plain weight's lr


def test_twin_head_critic_is_the_max_of_its_heads_and_trains_each_head():
    torch.manual_seed(0)
    critic = SafetyCritic(3, 2, hidden=(8,), heads=2)
    obs, act = torch.randn(6, 3), torch.rand(6, 2)
    heads = critic(obs, act, all_heads=True)
    assert heads.shape == (2, 6) and not torch.equal(heads[0], heads[1])
    assert torch.equal(critic(obs, act), torch.maximum(heads[0], heads[1]))
    y = torch.rand(6)
    expected = ((heads[0] - y) ** 2).mean() + ((heads[1] - y) ** 2).mean()
    assert safety_critic_loss(heads, y).item() == pytest.approx(expected.item(), rel=1e-6)
    single = SafetyCritic(3, 2, hidden=(8,))
    assert single(obs, act, all_heads=True).shape == (1, 6) and not hasattr(single, "twin")


def test_twin_head_safety_targets_and_filter_use_the_larger_head():
    cfg = RecoveryConfig(hidden=(8,), heads=2, eps_risk=0.5)
    safety = Safety(3, 2, -np.ones(2), np.ones(2), cfg)
    with torch.no_grad():     # head 1 says 0.9 everywhere (sigmoid(2.2)), head 0 about 0.1
        safety.q_risk.twin[-1].weight.zero_()
        safety.q_risk.twin[-1].bias.fill_(2.2)
        safety.q_risk.net[-1].weight.zero_()
        safety.q_risk.net[-1].bias.fill_(-2.2)
    safety.q_risk_targ.load_state_dict(safety.q_risk.state_dict())
    obs, act = torch.randn(4, 3), torch.zeros(4, 2)
    batch = {"obs": obs, "act": act, "next_obs": obs, "cost": torch.zeros(4)}
    targets = safety.targets(batch, lambda o: torch.zeros(len(o), 2))
    assert torch.allclose(targets, torch.full((4,), 0.8 * torch.sigmoid(torch.tensor(2.2)).item()))
    assert safety.filtered(obs, act)[1].all()
    with pytest.raises(ValueError, match="heads"):
        RecoveryConfig(heads=3)
