"""MESA (Luo et al. 2021, Algorithm 1): meta-learn the safety critic offline with MAML, adapt it on a
small dataset from the test environment, then run Recovery RL there (MESA paper Algorithm 1 and section 5).

Phase 1 for each method of the paper's section 5:
- MESA: second-order MAML around L_risk over the training datasets, written by hand:
  psi'_j = psi - alpha1 grad L_risk(psi; B_in_j) through torch.func.functional_call, the meta-loss
  sum_j L_risk(psi'_j; B_out_j), an outer Adam step (lr alpha2), and a pi_rec step on D_test.
- Multi-Task: Q_risk and pi_rec trained with Adam on all training datasets pooled.
- RRL: Q_risk and pi_rec trained with Adam on D_test only.
- RRL-oracle (ours): RRL trained on 10-20K test-environment transitions of the training data's kind
  instead of D_test: what the authors' code gave its RRL runs, and Recovery RL's own setting.
Phase 2 (MESA, Multi-Task): M Adam steps on L_risk and L_pi_rec over D_test.
Phase 3 is `recovery_rl.learn_online`.

Bellman targets are computed once per batch under torch.no_grad() with the target network (or psi,
below), before the inner step: they are data for MAML, not functions of psi. The meta-loss is a sum over the K
tasks, as in Algorithm 1 (a mean would scale alpha2 by 1/K).

The authors' variant (docs/mesa_variants.md; `run.py --mesa-variant authors` switches all on).
The authors' code (run_multitask.py, main.py) differs from the paper in seven ways, each a config
field whose default is the paper's:
- learn_inner_lr: Meta-SGD. Each parameter tensor k of Q_risk gets its own inner rate
  softplus(rho_k), starting at alpha1: psi'_k = psi_k - softplus(rho_k) grad_k L_risk(psi; B_in).
  The outer step trains rho with its own Adam (inner_lr_lr), through the same inner step. Phase 2
  stays Adam at alpha1, as in their code; the learned rates serve Phase 1 only.
- outer_grad_clip: psi's outer gradient clipped to this norm (theirs: 40); rho's is not clipped.
- pi_rec_lr: pi_rec's Phase-1 Adam lr (theirs: 1e-4, ours alpha1).
- target = "current": the meta-batches' Bellman targets come from psi itself, not from the Polyak
  target network; the target network then follows psi, so Phase 2 starts from a copy of it.
- (RecoveryConfig) hidden = (100, 100, 100): their critic and pi_rec are 3 x 100.
- (RecoveryConfig) layers = "wlinear": their critic's layers generate their weights from a learned
  code (sac.WLinear, from MACAW); MAML adapts the code and the generator alike.
- (MultiTaskConfig) phase2_with_train: Multi-Task's Phase 2 on the training data plus D_test.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

import carl
from baselines import BASELINES, USES_CRITIC, BaselineConfig, paper_config
from common import require
from recovery_rl import Policy, RecoveryConfig, Safety, safety_critic_loss
from replay_buffer import ReplayBuffer
from sac import SACConfig, polyak_update

METHODS = ("unconstrained", "rrl", "multitask", "mesa", "rrl_oracle")
MAML_TARGETS = ("lagged", "current")
Callback = Callable[[int, dict], None]  # (step, metrics) after every optimisation step


# ----------------------------------------------------------------------------- hyperparameters

@dataclass
class MetaConfig:
    """MESA Phase 1 (paper Table 1). The last five fields are the authors' variant, one switch
    each (module docstring); their defaults are the paper's."""
    steps: int = 10000           # T meta-iterations (15000 for HalfCheetah and Ant)
    tasks_per_step: int = 5      # K training tasks per meta-step
    batch_size: int = 256        # size of each inner batch B_in and outer batch B_out
    inner_lr: float = 1e-3       # alpha1: inner SGD step; also MESA's Phase-2 Adam lr
    outer_lr: float = 1e-5       # alpha2: outer Adam step
    inner_steps: int = 1         # inner gradient steps per task
    second_order: bool = True    # differentiate through the inner step (False: first-order MAML)
    adapted_tau_risk: float = 2e-4  # Phases 2-3: Polyak rate of Q_risk's target, which starts as the meta-trained critic [authors' code]
    learn_inner_lr: bool = False  # learn one inner rate softplus(rho) per parameter tensor, from alpha1 (Meta-SGD) [authors]
    inner_lr_lr: float = 1e-3    # Adam lr of the learned inner rates' rho [authors: 1e-3]
    outer_grad_clip: float = 0.0  # clip the outer gradient of Q_risk to this norm; 0: no clip [authors: 40]
    pi_rec_lr: float = 0.0       # Adam lr of pi_rec in Phase 1; 0: alpha1 [authors: 1e-4]
    target: str = "lagged"       # MAML Bellman targets from the "lagged" Polyak target network or the "current" psi [authors]

    def __post_init__(self):
        require(self.steps >= 0, f"meta steps must be >= 0, got {self.steps}")
        require(self.tasks_per_step >= 1, f"tasks per meta-step must be >= 1, got {self.tasks_per_step}")
        require(self.batch_size >= 1, f"meta batch size must be >= 1, got {self.batch_size}")
        require(self.inner_lr >= 0 and self.outer_lr > 0, f"MESA learning rates must be positive, got {self.inner_lr}, {self.outer_lr}")
        require(self.inner_steps >= 1, f"inner steps must be >= 1, got {self.inner_steps}")
        require(self.target in MAML_TARGETS, f"meta target must be one of {', '.join(MAML_TARGETS)}, got {self.target!r}")
        require(self.inner_lr_lr > 0, f"the inner rates' lr must be positive, got {self.inner_lr_lr}")
        require(self.outer_grad_clip >= 0 and self.pi_rec_lr >= 0,
                f"outer gradient clip and pi_rec lr must be >= 0, got {self.outer_grad_clip}, {self.pi_rec_lr}")
        require(self.inner_lr > 0 or not self.learn_inner_lr, "learned inner rates start at inner_lr, which must be > 0")
        require(0 < self.adapted_tau_risk <= 1, f"adapted_tau_risk must lie in (0, 1], got {self.adapted_tau_risk}")


@dataclass
class FitConfig:
    """Plain Adam training of Q_risk and pi_rec on one buffer (RRL, Multi-Task, Phase 2)."""
    steps: int = 10000           # Adam steps
    lr: float = 3e-4             # Adam learning rate
    batch_size: int = 256        # transitions per step

    def __post_init__(self):
        require(self.steps >= 0, f"training steps must be >= 0, got {self.steps}")
        require(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        require(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")


@dataclass
class MultiTaskConfig(FitConfig):
    """Multi-Task's Phase 1 (Adam on the pooled training datasets, eta), and its Phase-2 data."""
    phase2_with_train: bool = False  # Phase 2 on the training datasets plus D_test, not D_test alone [authors' main.py]


@dataclass
class Hyperparameters:
    """Everything a run of one method needs, with the paper's defaults (MESA paper Tables 1-4)."""
    sac: SACConfig = field(default_factory=SACConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    multitask: MultiTaskConfig = field(default_factory=MultiTaskConfig)         # Phase 1, eta = 3e-4
    rrl: FitConfig = field(default_factory=FitConfig)                           # Phase 1 on D_test
    adapt: FitConfig = field(default_factory=lambda: FitConfig(steps=500))     # Phase 2 (lr set per method)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)           # LR, SQRL, RSPO, RP, RCPO
    carl: carl.CARLConfig = field(default_factory=carl.CARLConfig)             # CARL, CARL-Offline (carl.py)

    def phase2_lr(self, method: str) -> float:
        """Phase 2 and Phase 3 lr of Q_risk / pi_rec: alpha1 for MESA, eta for Multi-Task, RRL's own."""
        return {"mesa": self.meta.inner_lr, "multitask": self.multitask.lr}.get(method, self.rrl.lr)

    def phase2_tau(self, method: str) -> float:
        """Phase 2 and Phase 3 Polyak rate of Q_risk's target: MESA's adapted_tau_risk, the others'
        tau_risk. The authors' MESA lags its adapted critic's target at 2e-4 (mesa-safe-rl
        run_multitask.py:636-656 at 1f3bc9d), while their RRL and Multi-Task critics bootstrap from
        the current network (sac.py:147-159)."""
        return self.meta.adapted_tau_risk if method == "mesa" else self.recovery.tau_risk


NAVIGATION = ("navigation1", "navigation2")


def paper_hyperparameters(env: str) -> Hyperparameters:
    """The per-environment rows of paper Tables 1-4 and the authors' commands (MESA paper Tables 1-4).

    RRL's Phase 1 is the code's 10000 steps (15000 on Ant, as its command line), not the paper
    table's 2000 on navigation. Maze: Recovery RL's scripts/maze.sh.

    Q_risk's Bellman target comes from the current network (tau_risk = 1), as in the MESA code that
    ran these experiments (mesa-safe-rl at 1f3bc9d: the RRL / Multi-Task critic reads no target
    network, sac.py:147-159; MAML's targets come from a fresh copy of the meta-parameters,
    run_multitask.py:483). Only MESA's adapted critic lags its target, at 2e-4 from Phase 2 on
    (meta.adapted_tau_risk, run_multitask.py:636-656). The paper is silent. Recovery RL's own code
    lags the target (tau 2e-4, RecoveryConfig's default, which the
    Recovery RL check keeps): each Bellman backup then takes about 1 / tau = 5000 steps to settle, so
    10K pretraining steps carry a violation only about two steps back, and Q_risk of a state k > 2
    steps from a violation stays near gamma_risk^2 * 0.5 (the sigmoid's start), above Cartpole's
    eps_risk = 0.1 everywhere (docs/results.md).
    """
    hp = Hyperparameters()
    hp.recovery.tau_risk = 1.0
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
    hp.baseline = paper_config(env)
    hp.carl = carl.paper_config(env)
    return hp


# ----------------------------------------------------------------------------- MAML, by hand

def risk_loss(q_risk: torch.nn.Module, params: dict[str, torch.Tensor], batch: dict, targets: torch.Tensor) -> torch.Tensor:
    """L_risk(psi; B) with the parameters psi given explicitly (MESA eq. 1), over every head of Q_risk."""
    prediction = functional_call(q_risk, params, (batch["obs"], batch["act"]), {"all_heads": True}, strict=True)
    return safety_critic_loss(prediction, targets)


def inner_step(q_risk, params: dict, batch: dict, targets: torch.Tensor, inner_lr: float | dict[str, torch.Tensor],
               second_order: bool) -> dict[str, torch.Tensor]:
    """psi' = psi - alpha1 grad_psi L_risk(psi; B_in) (Algorithm 1, inner update).

    inner_lr: alpha1, or one rate per parameter tensor, {name: softplus(rho_k)} (learned rates,
    Meta-SGD): psi'_k = psi_k - softplus(rho_k) grad_k. The rates keep their graph, so the
    meta-gradient reaches rho (first order too: there only grad L is a constant).
    With second_order the gradient keeps its graph, so the meta-gradient flows through it;
    without, grad L is a constant and the meta-gradient is the first-order approximation.
    """
    loss = risk_loss(q_risk, params, batch, targets)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=second_order)
    rates = inner_lr if isinstance(inner_lr, dict) else dict.fromkeys(params, inner_lr)
    return {name: p - rates[name] * g for (name, p), g in zip(params.items(), grads)}


def adapted_params(q_risk, params: dict, batch: dict, targets: torch.Tensor, cfg: MetaConfig,
                   rates: dict[str, torch.Tensor] | None = None) -> dict:
    """psi'_j after cfg.inner_steps inner steps on the same inner batch, at alpha1 or at `rates`."""
    for _ in range(cfg.inner_steps):
        params = inner_step(q_risk, params, batch, targets, cfg.inner_lr if rates is None else rates, cfg.second_order)
    return params


def initial_inner_rates(q_risk, inner_lr: float) -> dict[str, torch.nn.Parameter]:
    """rho_k per parameter tensor k of Q_risk with softplus(rho_k) = alpha1 (learned inner rates)."""
    rho = math.log(math.expm1(inner_lr))  # softplus^-1
    return {name: torch.nn.Parameter(torch.full((), rho, dtype=p.dtype)) for name, p in q_risk.named_parameters()}


def meta_loss(q_risk, tasks: list[tuple[dict, torch.Tensor, dict, torch.Tensor]], cfg: MetaConfig,
              rho: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """sum_j L_risk(psi'_j; B_out_j) over the K sampled tasks (Algorithm 1, meta-objective).

    tasks: per task (B_in, y_in, B_out, y_out), the two batches drawn from the same D_train_j.
    rho: learned inner rates softplus(rho_k) per tensor instead of alpha1 (None: alpha1).
    """
    params = dict(q_risk.named_parameters())
    rates = None if rho is None else {name: F.softplus(r) for name, r in rho.items()}
    return sum(risk_loss(q_risk, adapted_params(q_risk, params, b_in, y_in, cfg, rates), b_out, y_out)
               for b_in, y_in, b_out, y_out in tasks)


def sample_meta_batch(safety: Safety, buffers: list[ReplayBuffer], policy: Policy, cfg: MetaConfig,
                      rng: np.random.Generator) -> list[tuple]:
    """K tasks (without replacement when K <= N), each with an inner and an outer batch and targets.

    The targets evaluate Q_risk(s', a') with the target network, or with psi itself (target "current").
    """
    chosen = rng.choice(len(buffers), cfg.tasks_per_step, replace=cfg.tasks_per_step > len(buffers))
    network = safety.q_risk if cfg.target == "current" else safety.q_risk_targ
    tasks = []
    for j in chosen:
        b_in, b_out = safety.sample(buffers[j], cfg.batch_size), safety.sample(buffers[j], cfg.batch_size)
        tasks.append((b_in, safety.targets(b_in, policy, network), b_out, safety.targets(b_out, policy, network)))
    return tasks


def meta_step(safety: Safety, buffers: list[ReplayBuffer], policy: Policy, cfg: MetaConfig,
              optimizer: torch.optim.Optimizer, rng: np.random.Generator,
              rho: dict[str, torch.Tensor] | None = None) -> float:
    """One outer update: psi (and rho, if learned) <- Adam(grad meta-loss), then the target network.

    outer_grad_clip bounds the norm of psi's gradient only, as the authors' code does.
    """
    loss = meta_loss(safety.q_risk, sample_meta_batch(safety, buffers, policy, cfg, rng), cfg, rho)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.outer_grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(safety.q_risk.parameters(), cfg.outer_grad_clip)
    optimizer.step()
    if cfg.target == "lagged":
        polyak_update(safety.q_risk_targ, safety.q_risk, safety.cfg.tau_risk)
    else:   # the target network follows psi: Phase 2 starts from a copy of it, as the authors' does
        safety.q_risk_targ.load_state_dict(safety.q_risk.state_dict())
    return loss.item()


# ----------------------------------------------------------------------------- the phases

@dataclass
class MetaLearning:
    """Where MESA's Phase 1 stands between two meta-steps: with Safety's state, the buffers' random
    states and the global one, all that is needed to continue it exactly (experiment.py checkpoints
    it, as it does CARL's pretraining)."""
    optimizer: torch.optim.Optimizer    # the outer Adam over psi (and rho, as a second parameter group)
    rho: dict[str, torch.nn.Parameter] | None   # the learned inner rates (cfg.learn_inner_lr), else None
    rng: np.random.Generator             # draws each meta-step's K tasks
    step: int = 0                        # meta-steps done
    seconds: float = 0.0                 # time spent so far, over every process that ran it

    @classmethod
    def start(cls, safety: Safety, cfg: MetaConfig, seed: int) -> "MetaLearning":
        """Adam at alpha2 over psi; with cfg.learn_inner_lr, rho gets its own Adam lr (a second
        parameter group: Adam acts per element, so this is the authors' separate optimizer)."""
        optimizer = torch.optim.Adam(safety.q_risk.parameters(), lr=cfg.outer_lr)
        rho = initial_inner_rates(safety.q_risk, cfg.inner_lr) if cfg.learn_inner_lr else None
        if rho is not None:
            optimizer.add_param_group({"params": list(rho.values()), "lr": cfg.inner_lr_lr})
        return cls(optimizer, rho, np.random.default_rng(seed))

    def state_dict(self) -> dict:
        return {"step": self.step, "seconds": self.seconds, "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.bit_generator.state,
                "rho": None if self.rho is None else {name: r.detach().clone() for name, r in self.rho.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.seconds = state["step"], state["seconds"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        with torch.no_grad():
            for name, r in (self.rho or {}).items():
                r.copy_(state["rho"][name])


def meta_learn(safety: Safety, train: list[ReplayBuffer], test: ReplayBuffer, policy: Policy,
               cfg: MetaConfig, seed: int = 0, callback: Callback | None = None,
               progress: MetaLearning | None = None) -> dict[str, float] | None:
    """MESA Phase 1: T meta-steps over the training buffers, each with a pi_rec step on D_test.

    `progress` continues from a checkpoint and is updated before callback(step, metrics) runs.
    Returns the learned inner rates {name: rate} (cfg.learn_inner_lr), else None.
    """
    progress = progress or MetaLearning.start(safety, cfg, seed)
    rho = progress.rho
    for step in range(progress.step, cfg.steps):
        loss = meta_step(safety, train, policy, cfg, progress.optimizer, progress.rng, rho)
        rec_loss = safety.update_recovery(safety.sample(test)["obs"])
        progress.step = step + 1
        if callback:
            metrics = {"losses/meta_loss": loss, "losses/pi_rec_loss": rec_loss}
            if rho is not None:
                metrics["charts/inner_lr_mean"] = float(np.mean([F.softplus(r).item() for r in rho.values()]))
            callback(step, metrics)
    return None if rho is None else {name: F.softplus(r).item() for name, r in rho.items()}


def fit(safety: Safety, buffer: ReplayBuffer, policy: Policy, cfg: FitConfig,
        callback: Callback | None = None) -> None:
    """cfg.steps Adam steps on L_risk and L_pi_rec over one buffer, with fresh optimizers at cfg.lr.

    This is RRL's and Multi-Task's Phase 1 and every method's Phase 2 adaptation.
    """
    safety.set_lr(cfg.lr)
    for step in range(cfg.steps):
        batch = safety.sample(buffer, cfg.batch_size)
        loss = safety.update_critic(batch, policy)
        rec_loss = safety.update_recovery(batch["obs"]) if safety.recovery else float("nan")
        if callback:
            callback(step, {"losses/risk_loss": loss, "losses/pi_rec_loss": rec_loss})


def pooled(buffers: list[ReplayBuffer]) -> ReplayBuffer:
    """One buffer holding every training dataset (Multi-Task's view of the data)."""
    arrays = [b.arrays() for b in buffers]
    return ReplayBuffer.from_arrays({k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]})


def phase1(method: str, safety: Safety, train: list[ReplayBuffer], test: ReplayBuffer, policy: Policy,
           hp: Hyperparameters, seed: int = 0, callback: Callback | None = None,
           progress: MetaLearning | None = None) -> None:
    """Offline pretraining of Q_risk and pi_rec, as each method of the paper's section 5 does it.

    test: the method's test-environment data, D_test (for RRL-oracle: its 10-20K transitions).
    progress (MESA only): meta-learning resumed from a checkpoint, with Safety's optimizers restored.
    """
    if method == "mesa":   # pi_rec's Phase-1 lr: pi_rec_lr, or alpha1 (MESA's Phase-2 lr) when 0
        if progress is None or progress.step == 0:   # (Q_risk's optimizer waits for Phase 2)
            safety.set_lr(hp.meta.pi_rec_lr or hp.meta.inner_lr)
        meta_learn(safety, train, test, policy, hp.meta, seed, callback, progress)
    elif method == "multitask":
        fit(safety, pooled(train), policy, hp.multitask, callback)
    elif method in ("rrl", "rrl_oracle", *USES_CRITIC):    # the baselines pretrain Q_risk as RRL does
        fit(safety, test, policy, hp.rrl, callback)
    elif method not in ("unconstrained", "rp"):
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS + BASELINES)}")


def phase2(method: str, safety: Safety, test: ReplayBuffer, policy: Policy, hp: Hyperparameters,
           callback: Callback | None = None, train: list[ReplayBuffer] = ()) -> None:
    """Adaptation on D_test for MESA and Multi-Task; the RRLs and Unconstrained have no Phase 2.

    With hp.multitask.phase2_with_train, Multi-Task adapts on the training buffers plus D_test.
    """
    if method in ("unconstrained", "rp"):
        return
    safety.tau_risk = hp.phase2_tau(method)
    if method == "mesa":   # the target starts as the meta-trained critic, as in the authors' code
        safety.q_risk_targ.load_state_dict(safety.q_risk.state_dict())
    if method in ("mesa", "multitask"):
        data = test
        if method == "multitask" and hp.multitask.phase2_with_train:
            require(len(train) > 0, "Multi-Task's Phase 2 with training data needs the training buffers")
            data = pooled([*train, test])
        fit(safety, data, policy, dataclasses.replace(hp.adapt, lr=hp.phase2_lr(method)), callback)
    safety.set_lr(hp.phase2_lr(method))  # Phase 3 continues at the Phase-2 lr and target rate
