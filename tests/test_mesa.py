"""MESA: the hand-written MAML meta-gradient against finite differences, its limits, the phases and
the hyperparameter defaults."""
import numpy as np
import pytest
import torch

from conftest import random_dataset
from mesa import (METHODS, FitConfig, Hyperparameters, MetaConfig, MultiTaskConfig, adapted_params, meta_loss,
                  meta_step, paper_hyperparameters, phase1, phase2, risk_loss)
from recovery_rl import RecoveryConfig, Safety, SafetyCritic
from sac import SAC, ReplayBuffer, set_seed


def tiny_problem(n_tasks=2, seed=0):
    """A float64 2x8 Q_risk and K tasks of (B_in, y_in, B_out, y_out) with fixed targets."""
    torch.manual_seed(seed)
    q_risk = SafetyCritic(3, 2, hidden=(8, 8)).double()
    def batch(n):
        return {"obs": torch.randn(n, 3, dtype=torch.float64), "act": torch.rand(n, 2, dtype=torch.float64) * 2 - 1}
    tasks = [(batch(16), torch.rand(16, dtype=torch.float64), batch(16), torch.rand(16, dtype=torch.float64))
             for _ in range(n_tasks)]
    return q_risk, tasks


def meta_gradient(q_risk, tasks, cfg):
    q_risk.zero_grad()
    meta_loss(q_risk, tasks, cfg).backward()
    return torch.cat([p.grad.flatten() for p in q_risk.parameters()])


def test_second_order_meta_gradient_matches_finite_differences():
    q_risk, tasks = tiny_problem()
    cfg = MetaConfig(inner_lr=0.5, inner_steps=2, second_order=True)
    analytic = meta_gradient(q_risk, tasks, cfg)
    numeric, h = [], 1e-6
    with torch.no_grad():
        for p in q_risk.parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                flat[i] += h
                with torch.enable_grad():
                    plus = meta_loss(q_risk, tasks, cfg).item()
                flat[i] -= 2 * h
                with torch.enable_grad():
                    minus = meta_loss(q_risk, tasks, cfg).item()
                flat[i] += h
                numeric.append((plus - minus) / (2 * h))
    numeric = torch.tensor(numeric, dtype=torch.float64)
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-8), (analytic - numeric).abs().max()


def test_with_inner_lr_zero_the_meta_gradient_is_the_plain_outer_gradient():
    q_risk, tasks = tiny_problem()
    maml = meta_gradient(q_risk, tasks, MetaConfig(inner_lr=0.0, second_order=True))
    q_risk.zero_grad()
    params = dict(q_risk.named_parameters())
    sum(risk_loss(q_risk, params, b_out, y_out) for _, _, b_out, y_out in tasks).backward()
    plain = torch.cat([p.grad.flatten() for p in q_risk.parameters()])
    assert torch.allclose(maml, plain, atol=1e-12)


def test_first_order_is_the_outer_gradient_at_the_adapted_parameters_and_differs_from_second_order():
    q_risk, tasks = tiny_problem(n_tasks=1)
    cfg = MetaConfig(inner_lr=0.5, second_order=False)
    first = meta_gradient(q_risk, tasks, cfg)
    second = meta_gradient(q_risk, tasks, MetaConfig(inner_lr=0.5, second_order=True))
    b_in, y_in, b_out, y_out = tasks[0]
    fast = {k: v.detach().requires_grad_() for k, v in
            adapted_params(q_risk, dict(q_risk.named_parameters()), b_in, y_in, cfg).items()}
    grads = torch.autograd.grad(risk_loss(q_risk, fast, b_out, y_out), list(fast.values()))
    assert torch.allclose(first, torch.cat([g.flatten() for g in grads]), atol=1e-12)
    assert not torch.allclose(first, second, atol=1e-6)


def test_meta_loss_is_the_sum_over_tasks():
    q_risk, tasks = tiny_problem(n_tasks=3)
    cfg = MetaConfig(inner_lr=0.1)
    each = [meta_loss(q_risk, [task], cfg).item() for task in tasks]
    assert meta_loss(q_risk, tasks, cfg).item() == pytest.approx(sum(each), rel=1e-12)


def make_setup(seed=0):
    set_seed(seed)
    train = [ReplayBuffer.from_arrays(random_dataset(200, 3, 2, seed=j), seed=j) for j in range(3)]
    test = ReplayBuffer.from_arrays(random_dataset(50, 3, 2, seed=9), seed=9)
    agent = SAC(3, 2, -np.ones(2), np.ones(2))
    safety = Safety(3, 2, -np.ones(2), np.ones(2), RecoveryConfig(hidden=(16, 16)))
    hp = Hyperparameters(meta=MetaConfig(steps=3, tasks_per_step=2, batch_size=16),
                         multitask=MultiTaskConfig(steps=3, batch_size=16), rrl=FitConfig(steps=3, batch_size=16),
                         adapt=FitConfig(steps=3, batch_size=16))
    return train, test, agent, safety, hp


def test_meta_step_moves_the_critic_and_its_target():
    train, test, agent, safety, hp = make_setup()
    before = [p.clone() for p in safety.q_risk.parameters()]
    target_before = [p.clone() for p in safety.q_risk_targ.parameters()]
    optimizer = torch.optim.Adam(safety.q_risk.parameters(), lr=1e-3)
    meta_step(safety, train, agent.policy, hp.meta, optimizer, np.random.default_rng(0))
    assert all(not torch.equal(a, b) for a, b in zip(before, safety.q_risk.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(target_before, safety.q_risk_targ.parameters()))
    assert all(p.grad is None for p in safety.q_risk_targ.parameters())


@pytest.mark.parametrize("method", ["rrl", "multitask", "mesa"])
def test_phase1_and_phase2_train_the_safety_critic_and_recovery_policy(method):
    train, test, agent, safety, hp = make_setup()
    q0, pi0 = [p.clone() for p in safety.q_risk.parameters()], [p.clone() for p in safety.pi_rec.parameters()]
    steps = []
    phase1(method, safety, train, test, agent.policy, hp, callback=lambda step, info: steps.append(step))
    assert steps == [0, 1, 2]
    assert any(not torch.equal(a, b) for a, b in zip(q0, safety.q_risk.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(pi0, safety.pi_rec.parameters()))
    phase2(method, safety, test, agent.policy, hp)
    assert safety.q_optim.param_groups[0]["lr"] == hp.phase2_lr(method)


def test_unknown_method_is_refused():
    train, test, agent, safety, hp = make_setup()
    with pytest.raises(ValueError, match="unknown method 'maml'"):
        phase1("maml", safety, train, test, agent.policy, hp)


def test_paper_hyperparameters_follow_the_spec():
    assert "mesa" in METHODS
    hc, nav1, nav2, ant = (paper_hyperparameters(e) for e in ("halfcheetah", "navigation1", "navigation2", "ant"))
    assert (hc.meta.steps, hc.multitask.steps, hc.recovery.pos_fraction, hc.recovery.eps_risk) == (15000, 15000, 0.3, 0.1)
    assert (nav1.recovery.eps_risk, nav1.adapt.steps, nav1.adapt.batch_size, nav1.rrl.steps) == (0.3, 100, 64, 10000)
    assert (nav2.recovery.gamma_risk, nav2.recovery.eps_risk) == (0.65, 0.1)
    assert (ant.recovery.eps_risk, ant.meta.steps, ant.adapt.steps) == (0.3, 15000, 500)
    assert (hc.meta.inner_lr, hc.meta.outer_lr, hc.meta.tasks_per_step, hc.meta.second_order) == (1e-3, 1e-5, 5, True)
    assert hc.phase2_lr("mesa") == 1e-3 and hc.phase2_lr("multitask") == 3e-4 and hc.phase2_lr("rrl") == 3e-4


@pytest.mark.parametrize("make, message", [
    (lambda: Hyperparameters(recovery=RecoveryConfig(eps_risk=1.5)), "eps_risk must lie in"),
    (lambda: Hyperparameters(recovery=RecoveryConfig(gamma_risk=-0.1)), "gamma_risk must lie in"),
    (lambda: MetaConfig(steps=-1), "meta steps must be >= 0"),
    (lambda: MetaConfig(outer_lr=0.0), "learning rates must be positive"),
    (lambda: FitConfig(batch_size=0), "batch size must be >= 1"),
])
def test_nonsense_hyperparameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
