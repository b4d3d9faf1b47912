"""MESA (Luo et al. 2021, Algorithm 1): meta-learn the safety critic offline with MAML, adapt it on a
small dataset from the test environment, then run Recovery RL there (SPEC sections 4-6).

Phase 1 for each method of SPEC section 5:
- MESA: second-order MAML around L_risk over the training datasets, written by hand:
  psi'_j = psi - alpha1 grad L_risk(psi; B_in_j) through torch.func.functional_call, the meta-loss
  sum_j L_risk(psi'_j; B_out_j), an outer Adam step (lr alpha2), and a pi_rec step on D_test.
- Multi-Task: Q_risk and pi_rec trained with Adam on all training datasets pooled.
- RRL: Q_risk and pi_rec trained with Adam on D_test only.
- RRL-oracle (ours): RRL trained on 10-20K test-environment transitions of the training data's kind
  instead of D_test: what the authors' code gave its RRL runs, and Recovery RL's own setting.
Phase 2 (MESA, Multi-Task): M Adam steps on L_risk and L_pi_rec over D_test.
Phase 3 is `recovery_rl.learn_online`.

Bellman targets are computed once per batch under torch.no_grad() with the target network, before
the inner step: they are data for MAML, not functions of psi. The meta-loss is a sum over the K
tasks, as in Algorithm 1 (a mean would scale alpha2 by 1/K).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.func import functional_call

from recovery_rl import Policy, RecoveryConfig, Safety, safety_critic_loss
from sac import ReplayBuffer, SACConfig, polyak_update, require

METHODS = ("unconstrained", "rrl", "multitask", "mesa", "rrl_oracle")
Callback = Callable[[int, dict], None]  # (step, metrics) after every optimisation step


# ----------------------------------------------------------------------------- hyperparameters

@dataclass
class MetaConfig:
    """MESA Phase 1 (paper Table 1)."""
    steps: int = 10000           # T meta-iterations (15000 for HalfCheetah and Ant)
    tasks_per_step: int = 5      # K training tasks per meta-step
    batch_size: int = 256        # size of each inner batch B_in and outer batch B_out
    inner_lr: float = 1e-3       # alpha1: inner SGD step; also MESA's Phase-2 Adam lr
    outer_lr: float = 1e-5       # alpha2: outer Adam step
    inner_steps: int = 1         # inner gradient steps per task
    second_order: bool = True    # differentiate through the inner step (False: first-order MAML)

    def __post_init__(self):
        require(self.steps >= 0, f"meta steps must be >= 0, got {self.steps}")
        require(self.tasks_per_step >= 1, f"tasks per meta-step must be >= 1, got {self.tasks_per_step}")
        require(self.batch_size >= 1, f"meta batch size must be >= 1, got {self.batch_size}")
        require(self.inner_lr >= 0 and self.outer_lr > 0, f"MESA learning rates must be positive, got {self.inner_lr}, {self.outer_lr}")
        require(self.inner_steps >= 1, f"inner steps must be >= 1, got {self.inner_steps}")


@dataclass
class FitConfig:
    """Plain Adam training of Q_risk and pi_rec on one buffer (RRL, Multi-Task, Phase 2)."""
    steps: int = 10000
    lr: float = 3e-4
    batch_size: int = 256

    def __post_init__(self):
        require(self.steps >= 0, f"training steps must be >= 0, got {self.steps}")
        require(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        require(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")


@dataclass
class Hyperparameters:
    """Everything a run of one method needs, with the paper's defaults (SPEC section 6)."""
    sac: SACConfig = field(default_factory=SACConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    multitask: FitConfig = field(default_factory=FitConfig)                     # Phase 1, eta = 3e-4
    rrl: FitConfig = field(default_factory=FitConfig)                           # Phase 1 on D_test
    adapt: FitConfig = field(default_factory=lambda: FitConfig(steps=500))     # Phase 2 (lr set per method)

    def phase2_lr(self, method: str) -> float:
        """Phase 2 and Phase 3 lr of Q_risk / pi_rec: alpha1 for MESA, eta for Multi-Task, RRL's own."""
        return {"mesa": self.meta.inner_lr, "multitask": self.multitask.lr}.get(method, self.rrl.lr)


NAVIGATION = ("navigation1", "navigation2")


def paper_hyperparameters(env: str) -> Hyperparameters:
    """The per-environment rows of paper Tables 1-4 and the authors' commands (SPEC section 6).

    RRL's Phase 1 is the code's 10000 steps (15000 on Ant, as its command line), not the paper
    table's 2000 on navigation: with tau_risk 2e-4, 2000 steps leave the target network a third of
    the way from its initialisation. Maze: Recovery RL's scripts/maze.sh.
    """
    hp = Hyperparameters()
    hp.sac.start_steps = 10000 if env in ("halfcheetah", "ant") else 100
    if env in ("halfcheetah", "ant"):
        hp.meta.steps = hp.multitask.steps = 15000
    if env == "ant":
        hp.rrl.steps = 15000
    if env in NAVIGATION:
        hp.adapt = FitConfig(steps=100, batch_size=64)
    if env in ("halfcheetah", "maze"):
        hp.recovery.pos_fraction = 0.3
    hp.recovery.gamma_risk = {"navigation2": 0.65, "maze": 0.5}.get(env, 0.8)
    hp.recovery.eps_risk = {"navigation1": 0.3, "ant": 0.3, "maze": 0.15}.get(env, 0.1)
    return hp


# ----------------------------------------------------------------------------- MAML, by hand

def risk_loss(q_risk: torch.nn.Module, params: dict[str, torch.Tensor], batch: dict, targets: torch.Tensor) -> torch.Tensor:
    """L_risk(psi; B) with the parameters psi given explicitly (MESA eq. 1)."""
    prediction = functional_call(q_risk, params, (batch["obs"], batch["act"]), strict=True)
    return safety_critic_loss(prediction, targets)


def inner_step(q_risk, params: dict, batch: dict, targets: torch.Tensor, inner_lr: float,
               second_order: bool) -> dict[str, torch.Tensor]:
    """psi' = psi - alpha1 grad_psi L_risk(psi; B_in) (Algorithm 1, inner update).

    With second_order the gradient keeps its graph, so the meta-gradient flows through it;
    without, grad L is a constant and the meta-gradient is the first-order approximation.
    """
    loss = risk_loss(q_risk, params, batch, targets)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=second_order)
    return {name: p - inner_lr * g for (name, p), g in zip(params.items(), grads)}


def adapted_params(q_risk, params: dict, batch: dict, targets: torch.Tensor, cfg: MetaConfig) -> dict:
    """psi'_j after cfg.inner_steps inner steps on the same inner batch."""
    for _ in range(cfg.inner_steps):
        params = inner_step(q_risk, params, batch, targets, cfg.inner_lr, cfg.second_order)
    return params


def meta_loss(q_risk, tasks: list[tuple[dict, torch.Tensor, dict, torch.Tensor]], cfg: MetaConfig) -> torch.Tensor:
    """sum_j L_risk(psi'_j; B_out_j) over the K sampled tasks (Algorithm 1, meta-objective).

    tasks: per task (B_in, y_in, B_out, y_out), the two batches drawn from the same D_train_j.
    """
    params = dict(q_risk.named_parameters())
    return sum(risk_loss(q_risk, adapted_params(q_risk, params, b_in, y_in, cfg), b_out, y_out)
               for b_in, y_in, b_out, y_out in tasks)


def sample_meta_batch(safety: Safety, buffers: list[ReplayBuffer], policy: Policy, cfg: MetaConfig,
                      rng: np.random.Generator) -> list[tuple]:
    """K tasks (without replacement when K <= N), each with an inner and an outer batch and targets."""
    chosen = rng.choice(len(buffers), cfg.tasks_per_step, replace=cfg.tasks_per_step > len(buffers))
    tasks = []
    for j in chosen:
        b_in, b_out = safety.sample(buffers[j], cfg.batch_size), safety.sample(buffers[j], cfg.batch_size)
        tasks.append((b_in, safety.targets(b_in, policy), b_out, safety.targets(b_out, policy)))
    return tasks


def meta_step(safety: Safety, buffers: list[ReplayBuffer], policy: Policy, cfg: MetaConfig,
              optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> float:
    """One outer update: psi <- Adam(psi, grad_psi meta-loss), then Polyak-average the target."""
    loss = meta_loss(safety.q_risk, sample_meta_batch(safety, buffers, policy, cfg, rng), cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    polyak_update(safety.q_risk_targ, safety.q_risk, safety.cfg.tau_risk)
    return loss.item()


# ----------------------------------------------------------------------------- the phases

def meta_learn(safety: Safety, train: list[ReplayBuffer], test: ReplayBuffer, policy: Policy,
               cfg: MetaConfig, seed: int = 0, callback: Callback | None = None) -> None:
    """MESA Phase 1: T meta-steps over the training buffers, each with a pi_rec step on D_test."""
    optimizer = torch.optim.Adam(safety.q_risk.parameters(), lr=cfg.outer_lr)
    rng = np.random.default_rng(seed)
    for step in range(cfg.steps):
        loss = meta_step(safety, train, policy, cfg, optimizer, rng)
        rec_loss = safety.update_recovery(safety.sample(test)["obs"])
        if callback:
            callback(step, {"losses/meta_loss": loss, "losses/pi_rec_loss": rec_loss})


def fit(safety: Safety, buffer: ReplayBuffer, policy: Policy, cfg: FitConfig,
        callback: Callback | None = None) -> None:
    """cfg.steps Adam steps on L_risk and L_pi_rec over one buffer, with fresh optimizers at cfg.lr.

    This is RRL's and Multi-Task's Phase 1 and every method's Phase 2 adaptation.
    """
    safety.set_lr(cfg.lr)
    for step in range(cfg.steps):
        batch = safety.sample(buffer, cfg.batch_size)
        loss = safety.update_critic(batch, policy)
        rec_loss = safety.update_recovery(batch["obs"])
        if callback:
            callback(step, {"losses/risk_loss": loss, "losses/pi_rec_loss": rec_loss})


def pooled(buffers: list[ReplayBuffer]) -> ReplayBuffer:
    """One buffer holding every training dataset (Multi-Task's view of the data)."""
    arrays = [b.arrays() for b in buffers]
    return ReplayBuffer.from_arrays({k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]})


def phase1(method: str, safety: Safety, train: list[ReplayBuffer], test: ReplayBuffer, policy: Policy,
           hp: Hyperparameters, seed: int = 0, callback: Callback | None = None) -> None:
    """Offline pretraining of Q_risk and pi_rec, as each method of SPEC section 5 does it.

    test: the method's test-environment data, D_test (for RRL-oracle: its 10-20K transitions).
    """
    if method == "mesa":
        safety.set_lr(hp.meta.inner_lr)  # pi_rec's Phase-1 steps use MESA's Phase-2 lr
        meta_learn(safety, train, test, policy, hp.meta, seed, callback)
    elif method == "multitask":
        fit(safety, pooled(train), policy, hp.multitask, callback)
    elif method in ("rrl", "rrl_oracle"):
        fit(safety, test, policy, hp.rrl, callback)
    elif method != "unconstrained":
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def phase2(method: str, safety: Safety, test: ReplayBuffer, policy: Policy, hp: Hyperparameters,
           callback: Callback | None = None) -> None:
    """Adaptation on D_test for MESA and Multi-Task; the RRLs and Unconstrained have no Phase 2."""
    if method == "unconstrained":
        return
    if method in ("mesa", "multitask"):
        fit(safety, test, policy, dataclasses.replace(hp.adapt, lr=hp.phase2_lr(method)), callback)
    safety.set_lr(hp.phase2_lr(method))  # Phase 3 continues at the Phase-2 lr
