"""Recovery RL's comparison methods (Thananjeyan et al. 2021, section V-B): five ways of using a
safety critic or the cost inside SAC, instead of a recovery policy.

- LR, Lagrangian relaxation: min_pi E[alpha log pi - Q(s, a)] + nu (E_{a~pi}[Q_risk(s, a)] - eps_risk),
  nu updated by dual gradient ascent.
- SQRL: LR, plus actions drawn from pi until one has Q_risk <= eps_risk (100 samples; the safest
  if none is).
- RSPO: the LR objective with nu_t = nu_start (1 - t / episodes), falling to 0.
- RP, reward penalty: SAC on r' = r - P c.
- RCPO: SAC on r' = r - lambda Q_risk(s, a), lambda updated by dual gradient ascent.

LR, SQRL, RSPO and RCPO pretrain Q_risk like RRL (Phase 1 on the test-environment data) and keep
training it online; none has a recovery policy. RP uses no critic. The multipliers, penalties and
the dual step size are those of recovery-rl's scripts and sac.py (docs/baselines.md has each with
its file and line). Where the original differs from these equations (its LR and SQRL never use the
nu its dual step learns), docs/baselines.md says so; we follow the equations.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common import require
from recovery_rl import Safety
from sac import SAC, SACConfig

BASELINES = ("lr", "sqrl", "rspo", "rp", "rcpo")
LAGRANGIAN = ("lr", "sqrl", "rspo")          # nu (Q_risk(s, pi(s)) - eps) in the actor's loss
USES_CRITIC = ("lr", "sqrl", "rspo", "rcpo")


@dataclass
class BaselineConfig:
    """The baselines' multipliers and penalties (recovery-rl scripts/navigation1.sh by default;
    paper_config gives each environment's)."""
    nu: float = 5000.0           # LR, SQRL: the multiplier's initial value
    nu_start: float = 10000.0    # RSPO: the schedule's start
    penalty: float = 1000.0      # RP: P
    rcpo_lambda: float = 1000.0  # RCPO: the multiplier's initial value
    dual_lr: float = 3e-5        # Adam lr of log nu and log lambda (recovery-rl: 0.1 x 3e-4)
    samples: int = 100           # SQRL: actions drawn per step

    def __post_init__(self):
        require(min(self.nu, self.nu_start, self.penalty, self.rcpo_lambda) >= 0,
                "baseline multipliers and penalties must be >= 0")
        require(self.dual_lr >= 0 and self.samples >= 1, "baseline dual lr must be >= 0 and samples >= 1")


# recovery-rl scripts/<env>.sh: (LR/SQRL nu, RSPO nu_start, RP penalty, RCPO lambda)
PAPER_SETTINGS = {"navigation1": (5000.0, 10000.0, 1000.0, 1000.0),
                  "navigation2": (1000.0, 2000.0, 3000.0, 5000.0),
                  "maze": (100.0, 200.0, 50.0, 50.0)}


def paper_config(env: str) -> BaselineConfig:
    """The settings the authors ran the baselines with on env; Navigation 1's where they did not run
    them (Cartpole, HalfCheetah, Ant)."""
    return BaselineConfig(*PAPER_SETTINGS.get(env, PAPER_SETTINGS["navigation1"]))


# ----------------------------------------------------------------------------- the equations

def lagrangian_penalty(risk: torch.Tensor, nu: float | torch.Tensor, eps_risk: float) -> torch.Tensor:
    """nu (E_{a~pi}[Q_risk(s, a)] - eps_risk): the constraint term of LR, SQRL and RSPO's actor loss."""
    return nu * (risk.mean() - eps_risk)


def dual_loss(log_multiplier: torch.Tensor, risk: torch.Tensor, eps_risk: float) -> torch.Tensor:
    """log m * (eps_risk - E[Q_risk]) with the bracket fixed: a descent step on it raises the
    multiplier m while the constraint is violated (E[Q_risk] > eps_risk) and lowers it while slack."""
    return log_multiplier * (eps_risk - risk.mean().detach())


def rspo_multiplier(nu_start: float, episode: int, episodes: int) -> float:
    """nu_t = nu_start (1 - t / episodes), 0 from the last episode on (RSPO's schedule)."""
    return nu_start * max(0.0, 1.0 - episode / episodes)


def penalised_reward(reward: float, cost: float, penalty: float) -> float:
    """RP's training reward r' = r - P c."""
    return reward - penalty * cost


def rcpo_shaping(risk_of_taken_action: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """RCPO's term of the critics' target: r' = r - lambda Q_risk(s, a), a the stored action."""
    return -lam * risk_of_taken_action


def sqrl_choice(log_probs: torch.Tensor, risks: torch.Tensor, eps_risk: float, rng: np.random.Generator) -> int:
    """Index of SQRL's action among samples of pi: one with Q_risk <= eps_risk, drawn with weights
    pi(a) among those (as recovery-rl does); the lowest Q_risk where none qualifies."""
    safe = torch.nonzero(risks <= eps_risk).flatten()
    if len(safe) == 0:
        return int(torch.argmin(risks))
    weights = torch.softmax(log_probs[safe], 0).double().numpy()
    return int(safe[rng.choice(len(safe), p=weights / weights.sum())])


# ----------------------------------------------------------------------------- the agent

class ConstrainedSAC(SAC):
    """SAC with one baseline's change: its actor penalty, target shaping, reward or action choice."""

    def __init__(self, method: str, obs_dim: int, act_dim: int, action_low, action_high,
                 sac_cfg: SACConfig, cfg: BaselineConfig, safety: Safety | None, episodes: int):
        require(method in BASELINES, f"unknown baseline {method!r}; choose from {', '.join(BASELINES)}")
        require((safety is not None) == (method in USES_CRITIC), f"{method} needs a Q_risk exactly when it uses one")
        super().__init__(obs_dim, act_dim, action_low, action_high, sac_cfg)
        self.method, self.cfg_b, self.safety, self.episodes = method, cfg, safety, episodes
        start = cfg.rcpo_lambda if method == "rcpo" else cfg.nu
        self.log_multiplier = torch.tensor(float(np.log(max(start, 1e-8))), requires_grad=True)
        self.dual_optim = torch.optim.Adam([self.log_multiplier], lr=max(cfg.dual_lr, 1e-12))
        self.nu_now = cfg.nu_start                    # RSPO's scheduled value

    @property
    def multiplier(self) -> float:
        return float(self.log_multiplier.detach().exp())

    def eps(self) -> float:
        return self.safety.cfg.eps_risk

    def risk(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.safety.q_risk(obs, action)

    def begin_episode(self, episode: int) -> None:
        if self.method == "rspo":
            self.nu_now = rspo_multiplier(self.cfg_b.nu_start, episode, self.episodes)

    def training_reward(self, reward: float, cost: float) -> float:
        return penalised_reward(reward, cost, self.cfg_b.penalty) if self.method == "rp" else reward

    def target_shaping(self, batch):
        if self.method != "rcpo":
            return 0.0
        risk = self.risk(batch["obs"], batch["act"])
        self.dual_step(risk)
        return rcpo_shaping(risk, self.multiplier)

    def actor_penalty(self, obs, action):
        if self.method not in LAGRANGIAN:
            return 0.0
        self.safety.q_risk.requires_grad_(False)       # the gradient reaches pi through Q_risk only
        risk = self.risk(obs, action)
        self.safety.q_risk.requires_grad_(True)
        if self.method == "rspo":
            return lagrangian_penalty(risk, self.nu_now, self.eps())
        self.dual_step(risk)
        return lagrangian_penalty(risk, self.multiplier, self.eps())

    def dual_step(self, risk: torch.Tensor) -> None:
        """One Adam step of dual ascent on log(multiplier), where dual_lr > 0."""
        if self.cfg_b.dual_lr > 0:
            with torch.enable_grad():      # RCPO's step comes from inside SAC's no_grad target
                self.dual_optim.zero_grad(set_to_none=True)
                dual_loss(self.log_multiplier, risk, self.eps()).backward()
                self.dual_optim.step()

    def explore(self, obs: np.ndarray, env_step: int) -> np.ndarray:
        if self.method != "sqrl" or env_step < self.cfg.start_steps:
            return super().explore(obs, env_step)
        with torch.no_grad():
            obs_t = torch.as_tensor(obs, dtype=torch.float32).expand(self.cfg_b.samples, -1)
            actions, log_probs = self.actor(obs_t)
            index = sqrl_choice(log_probs, self.risk(obs_t, actions), self.eps(), self.rng)
        return actions[index].numpy()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "log_multiplier": self.log_multiplier.detach().clone(),
                "dual_optim": self.dual_optim.state_dict(), "nu_now": self.nu_now}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_multiplier.copy_(state["log_multiplier"])
        self.dual_optim.load_state_dict(state["dual_optim"])
        self.nu_now = state["nu_now"]
