"""Recovery RL (Thananjeyan et al., RA-L 2021): the safety critic, the recovery policy, the recovery
filter and the online loop (Recovery RL paper section IV; Phase 3 of MESA's Algorithm 1).

- Q_risk(s, a) in [0, 1] estimates the discounted probability of a future constraint violation.
  It is trained on y = c + (1 - c) gamma_risk Q_risk_targ(s', a'), a' ~ pi(.|s') (Recovery RL eq. 2,
  MESA eq. 1), with a Polyak-averaged target network.
- pi_rec(s) is deterministic and trained DDPG-style to minimise Q_risk(s, pi_rec(s)).
- The recovery filter executes a_task if Q_risk(s, a_task) <= eps_risk, else pi_rec(s).
- Action relabelling: the task policy learns from the action it PROPOSED, the safety critic from
  the action that was EXECUTED.

Which policy pi the Bellman target evaluates: the task policy pi_task, in every phase (Phases 1-2:
at initialisation), as both of the authors' repositories do. Option target_policy="composite"
evaluates the policy really executed instead (the task proposal, replaced by pi_rec's action where
the filter fires); measured here, it lets a task policy that the reward pays to crash learn
proposals just under eps_risk, so it is not the default (docs/design.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import global_rng_state, require, set_global_rng_state
from replay_buffer import ReplayBuffer
from sac import LAYERS, SAC, frozen_copy, mlp, polyak_update

Policy = Callable[[torch.Tensor], torch.Tensor]  # a batch of observations -> a batch of actions
TARGET_POLICIES = ("task", "composite")


@dataclass
class RecoveryConfig:
    """Safety critic and recovery policy hyperparameters (Recovery RL paper section IV; MESA paper Tables 1-4)."""
    gamma_risk: float = 0.8      # discount of the violation probability
    eps_risk: float = 0.1        # the filter fires where Q_risk(s, a_task) > eps_risk
    lr: float = 3e-4             # Adam learning rate of Q_risk and pi_rec (Phase 3: the Phase-2 lr)
    tau_risk: float = 2e-4       # Polyak rate of the Q_risk target network [authors' code]
    batch_size: int = 256        # transitions per Q_risk / pi_rec update
    pos_fraction: float = 0.0    # share of each Q_risk batch drawn from violating transitions
    hidden: tuple[int, ...] = (256, 256)
    target_policy: str = "task"  # a' of the Phase-3 Bellman target: "task" (authors') or "composite"
    layers: str = "linear"       # Q_risk's layers: "linear", or "wlinear" (the MESA authors' critic, sac.WLinear)
    heads: int = 1               # Q_risk's heads; 2: twin heads, the max of both in targets and filter [authors' RRL, Multi-Task]

    def __post_init__(self):
        require(self.target_policy in TARGET_POLICIES,
                f"target_policy must be one of {', '.join(TARGET_POLICIES)}, got {self.target_policy!r}")
        require(self.layers in LAYERS, f"critic layers must be one of {', '.join(LAYERS)}, got {self.layers!r}")
        require(self.heads in (1, 2), f"critic heads must be 1 or 2, got {self.heads}")
        for name in ("gamma_risk", "eps_risk", "tau_risk", "pos_fraction"):
            value = getattr(self, name)
            require(0 <= value <= 1, f"{name} must lie in [0, 1], got {value}")
        require(self.lr > 0, f"safety learning rate must be positive, got {self.lr}")
        require(self.batch_size >= 1, f"safety batch size must be >= 1, got {self.batch_size}")
        require(all(h >= 1 for h in self.hidden), f"hidden sizes must be >= 1, got {self.hidden}")


# ----------------------------------------------------------------------------- networks

class SafetyCritic(nn.Module):
    """Q_risk(s, a) = sigmoid(MLP(concat(s, a))), in [0, 1] (MESA appendix A.2).  # (B,)

    With two heads (the authors' RRL and Multi-Task critic, `QNetworkConstraint`), Q_risk is the
    larger of two independently initialised MLPs: the pessimistic estimate feeds the Bellman target,
    the filter and pi_rec, while each head is trained on the common target (all_heads=True).
    layers: "linear" or "wlinear" (sac.WLinear, the authors' MESA critic).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden=(256, 256), layers: str = "linear", heads: int = 1):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden, layers)
        if heads == 2:
            self.twin = mlp(obs_dim + act_dim, 1, hidden, layers)

    def forward(self, obs: torch.Tensor, act: torch.Tensor, all_heads: bool = False) -> torch.Tensor:
        q = torch.sigmoid(self.head_logits(obs, act))   # (H, B)
        return q if all_heads else q.amax(0)

    def head_logits(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Each head's output before the sigmoid.  # (H, B)"""
        x = torch.cat([obs, act], dim=-1)
        heads = [self.net] + ([self.twin] if hasattr(self, "twin") else [])
        return torch.stack([head(x).squeeze(-1) for head in heads])


class RecoveryPolicy(nn.Module):
    """pi_rec(s) = tanh(MLP(s)), scaled to the action bounds; deterministic."""

    def __init__(self, obs_dim: int, act_dim: int, action_low, action_high, hidden=(256, 256)):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden)
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs)) * self.action_scale + self.action_bias


# ----------------------------------------------------------------------------- equations

def safety_bellman_target(cost: torch.Tensor, next_q_risk: torch.Tensor, gamma_risk: float) -> torch.Tensor:
    """y = c + (1 - c) gamma_risk Q_risk_targ(s', a') (Recovery RL eq. 2; MESA section 4.1).

    A violating transition (c = 1) does not bootstrap; a time-limit ending still does.
    """
    return cost + (1.0 - cost) * gamma_risk * next_q_risk


def safety_critic_loss(q_risk: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_risk = E[(Q_risk(s, a) - y)^2] (MESA eq. 1); for a critic's heads (H, B), the sum of each head's."""
    if q_risk.dim() == 1:
        return F.mse_loss(q_risk, target)
    return sum(F.mse_loss(q, target) for q in q_risk)


def recovery_policy_loss(q_risk_of_recovery: torch.Tensor) -> torch.Tensor:
    """L_pi_rec = E_s[Q_risk(s, pi_rec(s))], minimised DDPG-style (Recovery RL section IV-B)."""
    return q_risk_of_recovery.mean()


def recovery_filter(risk: torch.Tensor, eps_risk: float, a_task: torch.Tensor, a_rec: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """a = a_task where Q_risk(s, a_task) <= eps_risk, else a_rec (Recovery RL eq. 3).

    risk: (B,), actions: (B, A). Returns (executed actions (B, A), filter fired (B,) bool).
    """
    fired = risk > eps_risk
    return torch.where(fired.unsqueeze(-1), a_rec, a_task), fired


def sample_class_balanced(buffer: ReplayBuffer, batch_size: int, pos_fraction: float) -> dict[str, torch.Tensor]:
    """A batch with round(pos_fraction * batch_size) violating transitions, the rest uniform.

    With no violations in the buffer the batch is simply uniform; with few, they repeat.
    """
    violations = buffer.violation_indices()
    n_pos = int(round(pos_fraction * batch_size)) if len(violations) else 0
    idx = np.concatenate([buffer.rng.choice(violations, n_pos),
                          buffer.rng.integers(0, len(buffer), batch_size - n_pos)])
    return buffer.batch(idx)


# ----------------------------------------------------------------------------- the safety agent

class Safety:
    """Q_risk with its target network, pi_rec, and their optimizers."""

    def __init__(self, obs_dim: int, act_dim: int, action_low, action_high, cfg: RecoveryConfig | None = None,
                 recovery: bool = True):
        self.cfg = cfg = cfg or RecoveryConfig()
        self.recovery = recovery   # False: Q_risk is learned but pi_rec never acts (baselines.py)
        self.q_risk = SafetyCritic(obs_dim, act_dim, cfg.hidden, cfg.layers, cfg.heads)
        self.q_risk_targ = frozen_copy(self.q_risk)
        self.tau_risk = cfg.tau_risk   # Polyak rate of q_risk_targ; MESA's Phases 2-3 set their own (mesa.phase2)
        self.pi_rec = RecoveryPolicy(obs_dim, act_dim, action_low, action_high, cfg.hidden)
        self.set_lr(cfg.lr)

    def set_lr(self, lr: float) -> None:
        """Fresh Adam optimizers at learning rate lr (each phase starts its own)."""
        self.q_optim = torch.optim.Adam(self.q_risk.parameters(), lr=lr, fused=True)
        self.pi_optim = torch.optim.Adam(self.pi_rec.parameters(), lr=lr, fused=True)

    def sample(self, buffer: ReplayBuffer, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        return sample_class_balanced(buffer, batch_size or self.cfg.batch_size, self.cfg.pos_fraction)

    def targets(self, batch: dict[str, torch.Tensor], policy: Policy, network: nn.Module | None = None) -> torch.Tensor:
        """Bellman targets y for a batch, evaluated with the target network or `network` (no gradients)."""
        with torch.no_grad():
            net = self.q_risk_targ if network is None else network
            next_q = net(batch["next_obs"], policy(batch["next_obs"]))
            return safety_bellman_target(batch["cost"], next_q, self.cfg.gamma_risk)

    def update_critic(self, batch: dict[str, torch.Tensor], policy: Policy) -> float:
        """One Adam step on L_risk, then Polyak-average the target network."""
        loss = safety_critic_loss(self.q_risk(batch["obs"], batch["act"], all_heads=True), self.targets(batch, policy))
        self.q_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.q_optim.step()
        polyak_update(self.q_risk_targ, self.q_risk, self.tau_risk)
        return loss.item()

    def update_recovery(self, obs: torch.Tensor) -> float:
        """One Adam step on L_pi_rec; Q_risk is frozen so only pi_rec moves."""
        self.q_risk.requires_grad_(False)
        loss = recovery_policy_loss(self.q_risk(obs, self.pi_rec(obs)))
        self.pi_optim.zero_grad(set_to_none=True)
        loss.backward()
        self.pi_optim.step()
        self.q_risk.requires_grad_(True)
        return loss.item()

    def filtered(self, obs: torch.Tensor, a_task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The executed actions of the composite policy for a batch of proposals."""
        with torch.no_grad():
            return recovery_filter(self.q_risk(obs, a_task), self.cfg.eps_risk, a_task, self.pi_rec(obs))

    def composite_policy(self, task_policy: Policy) -> Policy:
        """s -> filter(s, a_task ~ pi_task(.|s)): the policy Recovery RL actually executes."""
        return lambda obs: self.filtered(obs, task_policy(obs))[0]

    def target_policy(self, task_policy: Policy) -> Policy:
        """The policy whose next action a' enters the Phase-3 Bellman target (cfg.target_policy)."""
        return task_policy if self.cfg.target_policy == "task" else self.composite_policy(task_policy)

    def state_dict(self) -> dict:
        return {name: getattr(self, name).state_dict()
                for name in ("q_risk", "q_risk_targ", "pi_rec", "q_optim", "pi_optim")}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            getattr(self, name).load_state_dict(value)


# ----------------------------------------------------------------------------- Phase 3

def phase3_step(env, obs: np.ndarray, agent: SAC, safety: Safety | None, task_buffer: ReplayBuffer,
                safety_buffer: ReplayBuffer | None, env_step: int, losses: dict | None = None):
    """One environment step of Recovery RL: propose, filter, execute, relabel, update.

    Without a Safety (Unconstrained SAC) the proposal is executed as it is. The updates' losses go
    into `losses` where given (the training log). Returns (next_obs, reward, cost, terminated,
    truncated, info, filter_fired).
    """
    losses = {} if losses is None else losses
    a_task = agent.explore(obs, env_step)
    a_exec, fired = a_task, False
    if safety is not None and safety.recovery:
        executed, fired_t = safety.filtered(torch.from_numpy(obs[None].astype(np.float32)), torch.from_numpy(a_task[None]))
        a_exec, fired = executed[0].numpy(), bool(fired_t[0])
    next_obs, reward, terminated, truncated, info = env.step(a_exec)
    cost = float(info["cost"])
    task_buffer.add(obs, a_task, agent.training_reward(reward, cost), cost, next_obs, terminated, truncated)  # proposed
    if safety is not None:
        safety_buffer.add(obs, a_exec, reward, cost, next_obs, terminated, truncated)  # executed action

    batch_size = agent.cfg.batch_size
    if len(task_buffer) >= batch_size:
        losses.update(agent.update(task_buffer.sample(batch_size)))
    if safety is not None and len(safety_buffer) >= safety.cfg.batch_size:
        batch = safety.sample(safety_buffer)
        losses["losses/risk_loss"] = safety.update_critic(batch, safety.target_policy(agent.policy))
        if safety.recovery:
            losses["losses/pi_rec_loss"] = safety.update_recovery(batch["obs"])
    return next_obs, reward, cost, terminated, truncated, info, fired


def phase3_safety_buffer(env, n_episodes: int, seed: int, offline: dict[str, np.ndarray] | None = None
                         ) -> ReplayBuffer:
    """The safety buffer of Phase 3: the offline data, then room for every executed transition.

    It never overwrites, so its rows after the offline data are exactly the transitions Phase 3 visited.
    """
    capacity = n_episodes * env.spec.max_episode_steps
    if offline is not None:
        return ReplayBuffer.from_arrays(offline, capacity, seed=seed + 1)
    return ReplayBuffer(env.observation_space.shape[0], env.action_space.shape[0], capacity, seed=seed + 1)


@dataclass
class Phase3Progress:
    """Where Phase 3 stands between two episodes: with the networks and the random states, all
    that is needed to continue it exactly (experiment.py checkpoints it)."""
    episode: int                          # episodes finished
    env_step: int                         # environment steps taken
    task_buffer: ReplayBuffer
    safety_buffer: ReplayBuffer | None    # None for Unconstrained SAC

    @classmethod
    def start(cls, env, safety: Safety | None, n_episodes: int, seed: int,
              offline: dict[str, np.ndarray] | None = None, safety_buffer: ReplayBuffer | None = None):
        """Episode 0: an empty task buffer; the safety buffer given, or one that starts as the offline data."""
        obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        task_buffer = ReplayBuffer(obs_dim, act_dim, n_episodes * env.spec.max_episode_steps, seed=seed)
        if safety is not None and safety_buffer is None:
            safety_buffer = phase3_safety_buffer(env, n_episodes, seed, offline)
        return cls(0, 0, task_buffer, safety_buffer if safety is not None else None)


def learn_online(env, agent: SAC, safety: Safety | None, n_episodes: int, seed: int,
                 offline: dict[str, np.ndarray] | None = None, safety_buffer: ReplayBuffer | None = None,
                 progress: Phase3Progress | None = None, log: Callable[[dict], None] | None = None,
                 log_every: int = 1000) -> Iterator[dict]:
    """Phase 3: run n_episodes of Recovery RL (or Unconstrained SAC when safety is None).

    The safety buffer is `safety_buffer` if given (phase3_safety_buffer), else one that starts as
    the offline data. `progress` continues a run from a checkpoint; it is updated after every
    episode. `log` receives, every log_every environment steps, the latest losses, the share of
    steps the filter fired and the steps per second since the last call. Yields one metrics dict
    per finished episode: return, length, violation (0/1), success (0/1, or nan where undefined),
    recovery_fraction.
    """
    if progress is None:
        progress = Phase3Progress.start(env, safety, n_episodes, seed, offline, safety_buffer)
    if progress.episode == 0:
        env.action_space.seed(seed)
    env_step, losses, window = progress.env_step, {}, {"fired": 0, "time": time.perf_counter()}
    for episode in range(progress.episode, n_episodes):
        agent.begin_episode(episode)
        obs, info = env.reset(seed=seed if episode == 0 else None)
        ret, length, violated, recoveries, done = 0.0, 0, False, 0, False
        while not done:
            obs, reward, cost, terminated, truncated, info, fired = phase3_step(
                env, obs, agent, safety, progress.task_buffer, progress.safety_buffer, env_step, losses)
            ret, length, env_step = ret + reward, length + 1, env_step + 1
            violated, recoveries = violated or cost > 0, recoveries + fired
            done = terminated or truncated
            window["fired"] += fired
            if log is not None and env_step % log_every == 0:
                now = time.perf_counter()
                log({"env_step": env_step, "episode": episode, **losses, "filter_rate": window["fired"] / log_every,
                     "steps_per_second": log_every / (now - window["time"])})
                window = {"fired": 0, "time": now}
        progress.episode, progress.env_step = episode + 1, env_step
        yield {"episode": episode, "env_steps": env_step, "return": ret, "length": length,
               "violation": int(violated), "success": float(info.get("success", np.nan)),
               "recovery_fraction": recoveries / length}


# ----------------------------------------------------------------------------- checkpoints

def phase3_checkpoint(env, agent: SAC, safety: Safety | None, progress: Phase3Progress) -> dict:
    """Everything Phase 3 needs to continue exactly after progress.episode episodes: the networks
    with their targets and optimizers, both buffers, and every random state (global, SAC's, the
    buffers', the environment's and its action space's)."""
    return {"episode": progress.episode, "env_step": progress.env_step,
            "sac": agent.state_dict(), "sac_rng": agent.rng.bit_generator.state,
            "safety": safety.state_dict() if safety is not None else None,
            "task_buffer": progress.task_buffer.state_dict(),
            "safety_buffer": progress.safety_buffer.state_dict() if progress.safety_buffer is not None else None,
            "rng": global_rng_state(), "env_rng": env.unwrapped.np_random.bit_generator.state,
            "action_rng": env.action_space.np_random.bit_generator.state}


def restore_phase3(state: dict, env, agent: SAC, safety: Safety | None, progress: Phase3Progress) -> None:
    """Load a phase3_checkpoint into freshly built objects of the same run (progress from
    Phase3Progress.start), so that learn_online(progress=progress) continues where it stopped."""
    agent.load_state_dict(state["sac"])
    agent.rng.bit_generator.state = state["sac_rng"]
    if safety is not None:
        safety.load_state_dict(state["safety"])
        progress.safety_buffer.load_state_dict(state["safety_buffer"])
    progress.task_buffer.load_state_dict(state["task_buffer"])
    progress.episode, progress.env_step = state["episode"], state["env_step"]
    env.unwrapped.np_random.bit_generator.state = state["env_rng"]
    env.action_space.np_random.bit_generator.state = state["action_rng"]
    set_global_rng_state(state["rng"])
