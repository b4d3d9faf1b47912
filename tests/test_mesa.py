"""MESA: the hand-written MAML meta-gradient against finite differences, its limits, the phases,
the authors' variant (learned inner rates, outer clip, targets from psi, pi_rec lr, Multi-Task's
Phase-2 data), the paper algorithm bit for bit at the defaults, and the hyperparameter defaults."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mesa
from common import set_seed
from conftest import random_dataset
from mesa import (METHODS, FitConfig, Hyperparameters, MetaConfig, MultiTaskConfig, adapted_params,
                  initial_inner_rates, meta_learn, meta_loss, meta_step, paper_hyperparameters, phase1, phase2,
                  risk_loss, sample_meta_batch)
from recovery_rl import RecoveryConfig, Safety, SafetyCritic, safety_bellman_target
from replay_buffer import ReplayBuffer
from sac import SAC, polyak_update


def tiny_problem(n_tasks=2, seed=0):
    """A float64 2x8 Q_risk and K tasks of (B_in, y_in, B_out, y_out) with fixed targets."""
    torch.manual_seed(seed)
    q_risk = SafetyCritic(3, 2, hidden=(8, 8)).double()
    def batch(n):
        return {"obs": torch.randn(n, 3, dtype=torch.float64), "act": torch.rand(n, 2, dtype=torch.float64) * 2 - 1}
    tasks = [(batch(16), torch.rand(16, dtype=torch.float64), batch(16), torch.rand(16, dtype=torch.float64))
             for _ in range(n_tasks)]
    return q_risk, tasks


def meta_gradient(q_risk, tasks, cfg, rho=None):
    q_risk.zero_grad()
    meta_loss(q_risk, tasks, cfg, rho).backward()
    return torch.cat([p.grad.flatten() for p in q_risk.parameters()])


def central_differences(loss, tensors, h=1e-6):
    """d loss() / d every entry of the float64 tensors, by central differences."""
    numeric = []
    with torch.no_grad():
        for t in tensors:
            flat = t.view(-1)
            for i in range(flat.numel()):
                flat[i] += h
                with torch.enable_grad():
                    plus = loss().item()
                flat[i] -= 2 * h
                with torch.enable_grad():
                    minus = loss().item()
                flat[i] += h
                numeric.append((plus - minus) / (2 * h))
    return torch.tensor(numeric, dtype=torch.float64)


def distinct_rates(q_risk):
    """rho per parameter tensor with rates 0.2, 0.3, ...: a rate applied to the wrong tensor shows."""
    return {name: torch.nn.Parameter(torch.tensor(math.log(math.expm1(0.2 + 0.1 * k)), dtype=torch.float64))
            for k, (name, _) in enumerate(q_risk.named_parameters())}


@pytest.mark.parametrize("learned_rates", [False, True])
def test_second_order_meta_gradient_matches_finite_differences(learned_rates):
    """Fixed alpha1, or learned rates softplus(rho_k): the gradient w.r.t. psi, and w.r.t. rho."""
    q_risk, tasks = tiny_problem()
    cfg = MetaConfig(inner_lr=0.5, inner_steps=2, second_order=True)
    rho = distinct_rates(q_risk) if learned_rates else None
    wrt = list(q_risk.parameters()) + (list(rho.values()) if learned_rates else [])
    loss = lambda: meta_loss(q_risk, tasks, cfg, rho)  # noqa: E731
    analytic = torch.cat([g.flatten() for g in torch.autograd.grad(loss(), wrt)])
    numeric = central_differences(loss, wrt)
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-8), (analytic - numeric).abs().max()
    if learned_rates:
        assert analytic[-len(rho):].abs().min() > 1e-6      # every rate gets a gradient


@pytest.mark.parametrize("heads", [1, 2])
def test_meta_gradient_through_wlinear_layers_matches_finite_differences(heads):
    """The authors' critic (sac.WLinear layers, optionally twin-headed): the second-order
    meta-gradient w.r.t. z, fc.weight and fc.bias, checked at 60 random entries (there are ~13K)."""
    torch.manual_seed(0)
    q_risk = SafetyCritic(3, 2, hidden=(8, 8), layers="wlinear", heads=heads).double()
    _, tasks = tiny_problem()
    cfg = MetaConfig(inner_lr=0.05, inner_steps=2, second_order=True)
    loss = lambda: meta_loss(q_risk, tasks, cfg)  # noqa: E731
    params = list(q_risk.parameters())
    analytic = torch.autograd.grad(loss(), params)
    rng = np.random.default_rng(0)
    names = [n for n, _ in q_risk.named_parameters()]
    assert any(n.endswith(".z") for n in names) and any(n.endswith("fc.weight") for n in names)
    for _ in range(60):
        k = int(rng.integers(len(params)))
        i = int(rng.integers(params[k].numel()))
        flat, h = params[k].data.view(-1), 1e-6
        flat[i] += h
        plus = loss().item()
        flat[i] -= 2 * h
        minus = loss().item()
        flat[i] += h
        numeric = (plus - minus) / (2 * h)
        assert analytic[k].view(-1)[i].item() == pytest.approx(numeric, rel=1e-4, abs=1e-9), (names[k], i)


def test_inner_step_adapts_every_wlinear_parameter():
    """functional_call's inner step moves z, fc.weight and fc.bias of every layer, and the adapted
    critic's output is the one computed from the adapted parameters."""
    torch.manual_seed(1)
    q_risk = SafetyCritic(3, 2, hidden=(8, 8), layers="wlinear").double()
    _, tasks = tiny_problem(n_tasks=1)
    b_in, y_in, b_out, _ = tasks[0]
    params = dict(q_risk.named_parameters())
    fast = adapted_params(q_risk, params, b_in, y_in, MetaConfig(inner_lr=0.1))
    assert fast.keys() == params.keys() and len(params) == 9      # 3 layers x (z, fc.weight, fc.bias)
    assert all(not torch.equal(fast[n], params[n]) for n in params), [n for n in params if torch.equal(fast[n], params[n])]
    adapted = SafetyCritic(3, 2, hidden=(8, 8), layers="wlinear").double()
    adapted.load_state_dict({n: t.detach() for n, t in fast.items()})
    expected = torch.func.functional_call(q_risk, fast, (b_out["obs"], b_out["act"]))
    assert torch.allclose(adapted(b_out["obs"], b_out["act"]), expected, atol=1e-12)


def test_learned_rates_start_at_alpha1_and_then_equal_the_fixed_inner_step():
    q_risk, tasks = tiny_problem()
    cfg = MetaConfig(inner_lr=0.3, inner_steps=2)
    rho = initial_inner_rates(q_risk, cfg.inner_lr)
    assert rho.keys() == dict(q_risk.named_parameters()).keys()
    assert all(F.softplus(r).item() == pytest.approx(0.3, rel=1e-12) for r in rho.values())
    assert meta_loss(q_risk, tasks, cfg, rho).item() == pytest.approx(meta_loss(q_risk, tasks, cfg).item(), rel=1e-12)
    assert torch.allclose(meta_gradient(q_risk, tasks, cfg, rho), meta_gradient(q_risk, tasks, cfg), atol=1e-12)


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


def reference_mesa_phase1(safety, train, test, policy, cfg, seed=0):
    """MESA Phase 1 as the paper describes it, written out without options: fixed alpha1, one
    second-order inner step, targets from the Polyak target network, no clip, pi_rec at alpha1."""
    safety.set_lr(cfg.inner_lr)
    optimizer = torch.optim.Adam(safety.q_risk.parameters(), lr=cfg.outer_lr)
    rng = np.random.default_rng(seed)
    for _ in range(cfg.steps):
        chosen = rng.choice(len(train), cfg.tasks_per_step, replace=cfg.tasks_per_step > len(train))
        batches = []
        for j in chosen:
            b_in, b_out = safety.sample(train[j], cfg.batch_size), safety.sample(train[j], cfg.batch_size)
            batches.append((b_in, safety.targets(b_in, policy), b_out, safety.targets(b_out, policy)))
        psi, loss = dict(safety.q_risk.named_parameters()), 0
        for b_in, y_in, b_out, y_out in batches:
            grads = torch.autograd.grad(risk_loss(safety.q_risk, psi, b_in, y_in), list(psi.values()), create_graph=True)
            adapted = {name: p - cfg.inner_lr * g for (name, p), g in zip(psi.items(), grads)}
            loss = loss + risk_loss(safety.q_risk, adapted, b_out, y_out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        polyak_update(safety.q_risk_targ, safety.q_risk, safety.cfg.tau_risk)
        safety.update_recovery(safety.sample(test)["obs"])


def test_default_mesa_phase1_is_the_paper_algorithm_bit_for_bit():
    """The authors' options, all off (the defaults), leave the paper's MESA and its random streams."""
    train, test, agent, safety, hp = make_setup()
    phase1("mesa", safety, train, test, agent.policy, hp)
    after = torch.rand(1)
    train, test, agent, reference, hp = make_setup()
    reference_mesa_phase1(reference, train, test, agent.policy, hp.meta)
    assert torch.equal(torch.rand(1), after)
    for name in ("q_risk", "q_risk_targ", "pi_rec"):
        ours, theirs = getattr(safety, name).state_dict(), getattr(reference, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_meta_learn_trains_the_inner_rates_at_their_own_lr():
    train, test, agent, safety, hp = make_setup()
    psi0 = [p.clone() for p in safety.q_risk.parameters()]
    cfg = dataclasses.replace(hp.meta, steps=1, learn_inner_lr=True, inner_lr_lr=0.01)
    rates = meta_learn(safety, train, test, agent.policy, cfg)
    assert rates.keys() == dict(safety.q_risk.named_parameters()).keys()
    # Adam's first step moves an element by at most its lr, by about its lr where |grad| >> eps:
    # rho at inner_lr_lr, psi at alpha2
    rho_moved = [abs(math.log(math.expm1(r)) - math.log(math.expm1(cfg.inner_lr))) for r in rates.values()]
    assert all(0 < m <= 0.01 * (1 + 1e-4) for m in rho_moved) and max(rho_moved) > 0.009
    psi_moved = max((p - p0).abs().max().item() for p, p0 in zip(safety.q_risk.parameters(), psi0))
    assert psi_moved == pytest.approx(cfg.outer_lr, rel=1e-2)
    train, test, agent, safety, hp = make_setup()
    assert meta_learn(safety, train, test, agent.policy, hp.meta) is None     # fixed alpha1: no rates


def meta_step_gradients(cfg):
    """(psi's, rho's) gradients as one meta-step leaves them, from the same setup each call."""
    train, test, agent, safety, hp = make_setup()
    optimizer = torch.optim.Adam(safety.q_risk.parameters(), lr=1e-3)
    rho = initial_inner_rates(safety.q_risk, cfg.inner_lr)
    optimizer.add_param_group({"params": list(rho.values()), "lr": cfg.inner_lr_lr})
    meta_step(safety, train, agent.policy, cfg, optimizer, np.random.default_rng(0), rho)
    return [p.grad.clone() for p in safety.q_risk.parameters()], [r.grad.clone() for r in rho.values()]


def test_outer_grad_clip_bounds_psi_gradient_and_leaves_small_ones_and_rho_alone():
    base = MetaConfig(tasks_per_step=2, batch_size=16, learn_inner_lr=True)
    free_psi, free_rho = meta_step_gradients(base)
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in free_psi])).item()
    clipped_psi, clipped_rho = meta_step_gradients(dataclasses.replace(base, outer_grad_clip=norm / 10))
    assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in clipped_psi])).item() == pytest.approx(norm / 10, rel=1e-4)
    assert all(torch.allclose(c, f / 10, rtol=1e-4, atol=1e-12) for c, f in zip(clipped_psi, free_psi))  # direction kept
    assert all(torch.equal(c, f) for c, f in zip(clipped_rho, free_rho))                # rho's gradient is not clipped
    loose_psi, _ = meta_step_gradients(dataclasses.replace(base, outer_grad_clip=norm * 10))
    assert all(torch.equal(a, b) for a, b in zip(loose_psi, free_psi))


@pytest.mark.parametrize("target", ["lagged", "current"])
def test_maml_targets_come_from_the_target_network_or_from_psi(target):
    train, test, agent, safety, hp = make_setup()
    with torch.no_grad():
        for p in safety.q_risk_targ.parameters():
            p.add_(0.5)                                  # a target network far from psi
    policy = lambda obs: torch.zeros(len(obs), 2)        # noqa: E731  (deterministic a')
    cfg = dataclasses.replace(hp.meta, target=target)
    network = safety.q_risk if target == "current" else safety.q_risk_targ
    other = safety.q_risk_targ if target == "current" else safety.q_risk
    for b_in, y_in, b_out, y_out in sample_meta_batch(safety, train, policy, cfg, np.random.default_rng(0)):
        for batch, y in ((b_in, y_in), (b_out, y_out)):
            with torch.no_grad():
                expected, unexpected = (safety_bellman_target(batch["cost"], net(batch["next_obs"], policy(batch["next_obs"])),
                                                              safety.cfg.gamma_risk) for net in (network, other))
            assert torch.equal(y, expected) and not torch.allclose(y, unexpected)
    meta_step(safety, train, policy, cfg, torch.optim.Adam(safety.q_risk.parameters(), lr=1e-3), np.random.default_rng(0))
    same = [torch.equal(a, b) for a, b in zip(safety.q_risk.parameters(), safety.q_risk_targ.parameters())]
    assert all(same) == (target == "current")     # "current": the target network follows psi, for Phase 2
    assert not any(p.requires_grad for p in safety.q_risk_targ.parameters())


@pytest.mark.parametrize("pi_rec_lr, expected", [(0.0, 1e-3), (1e-4, 1e-4)])
def test_pi_rec_phase1_lr_is_alpha1_unless_set(pi_rec_lr, expected):
    train, test, agent, safety, hp = make_setup()
    pi0 = [p.clone() for p in safety.pi_rec.parameters()]
    hp.meta = dataclasses.replace(hp.meta, steps=1, pi_rec_lr=pi_rec_lr)
    phase1("mesa", safety, train, test, agent.policy, hp)
    moved = max((p - p0).abs().max().item() for p, p0 in zip(safety.pi_rec.parameters(), pi0))
    assert moved == pytest.approx(expected, rel=1e-2)                 # Adam's first step: its lr


@pytest.mark.parametrize("with_train", [False, True])
def test_multitask_phase2_data_is_d_test_or_training_plus_d_test(monkeypatch, with_train):
    train, test, agent, safety, hp = make_setup()
    hp.multitask.phase2_with_train = with_train
    seen = []
    monkeypatch.setattr(mesa, "fit", lambda safety, buffer, policy, cfg, callback=None: seen.append(buffer))
    phase2("multitask", safety, test, agent.policy, hp, train=train)
    phase2("mesa", safety, test, agent.policy, hp, train=train)
    multitask_data, mesa_data = seen
    assert mesa_data is test                                         # MESA adapts on D_test either way
    if not with_train:
        assert multitask_data is test
    else:
        for key in ("observations", "costs", "next_observations"):
            assert np.array_equal(multitask_data.arrays()[key], np.concatenate([b.arrays()[key] for b in [*train, test]]))
        with pytest.raises(ValueError, match="needs the training buffers"):
            phase2("multitask", safety, test, agent.policy, hp)


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


def parameters(network):
    return torch.cat([p.detach().flatten() for p in network.parameters()])


@pytest.mark.parametrize("method", ["mesa", "multitask"])
def test_mesa_adapted_target_starts_at_the_meta_trained_critic_and_lags_it(method):
    """The authors' MESA: from Phase 2 on, Q_risk's target is a copy of the meta-trained critic that
    follows the adapted one at 2e-4; Multi-Task (tau_risk 1) bootstraps from the current network."""
    train, test, agent, safety, hp = make_setup()
    hp.recovery.tau_risk, hp.adapt.steps = 1.0, 20
    phase1(method, safety, train, test, agent.policy, hp)
    with torch.no_grad():                       # a stale target, as after a lagged Phase 1
        for p in safety.q_risk_targ.parameters():
            p.add_(1.0)
    trained = parameters(safety.q_risk)
    phase2(method, safety, test, agent.policy, hp)
    adapted, target = parameters(safety.q_risk), parameters(safety.q_risk_targ)
    assert safety.tau_risk == hp.phase2_tau(method) == {"mesa": 2e-4, "multitask": 1.0}[method]
    assert (adapted - trained).abs().max() > 1e-3                       # Phase 2 moved the critic
    if method == "mesa":     # (1 - 2e-4)^20: the target moved under 0.5% of the way to the adapted critic
        assert torch.allclose(target, trained + 0.004 * (adapted - trained), atol=0.004 * (adapted - trained).abs().max())
    else:
        assert torch.equal(target, adapted)


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
    # the authors' variant is off: the paper's MESA and Multi-Task
    assert (hc.meta.learn_inner_lr, hc.meta.outer_grad_clip, hc.meta.pi_rec_lr, hc.meta.target) == (False, 0.0, 0.0, "lagged")
    assert hc.recovery.hidden == (256, 256) and not hc.multitask.phase2_with_train
    # Q_risk bootstraps from the current network, as the MESA code; Recovery RL's lag stays the default
    assert all(paper_hyperparameters(e).recovery.tau_risk == 1.0 for e in ("halfcheetah", "navigation1", "cartpole"))
    assert RecoveryConfig().tau_risk == 2e-4
    assert hc.meta.adapted_tau_risk == 2e-4 and hc.phase2_tau("mesa") == 2e-4 and hc.phase2_tau("rrl") == 1.0


@pytest.mark.parametrize("make, message", [
    (lambda: Hyperparameters(recovery=RecoveryConfig(eps_risk=1.5)), "eps_risk must lie in"),
    (lambda: Hyperparameters(recovery=RecoveryConfig(gamma_risk=-0.1)), "gamma_risk must lie in"),
    (lambda: MetaConfig(steps=-1), "meta steps must be >= 0"),
    (lambda: MetaConfig(outer_lr=0.0), "learning rates must be positive"),
    (lambda: FitConfig(batch_size=0), "batch size must be >= 1"),
    (lambda: MetaConfig(target="psi"), "meta target must be one of lagged, current"),
    (lambda: MetaConfig(outer_grad_clip=-1.0), "outer gradient clip and pi_rec lr must be >= 0"),
    (lambda: MetaConfig(learn_inner_lr=True, inner_lr=0.0), "learned inner rates start at inner_lr"),
    (lambda: MetaConfig(adapted_tau_risk=0.0), "adapted_tau_risk must lie in"),
])
def test_nonsense_hyperparameters_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
