"""Soft Actor-Critic, the task policy of Recovery RL and MESA (Recovery RL paper section IV).

Implements SAC as in Haarnoja et al. 2018 ("Soft Actor-Critic Algorithms and Applications"):
a squashed-Gaussian actor with the tanh change-of-variables correction, twin Q critics with
Polyak-averaged target networks, alpha fixed at 0.2 (as in the MESA authors' code) or tuned
automatically toward the target entropy -|A|, and uniformly random actions for the first
`start_steps` environment steps. Also home to the MLP builder every network uses (with the
authors' WLinear layer for the safety critic); the replay buffer lives in replay_buffer.py, seeding
and file writing in common.py.

Deviations from the authors' code (pranz24-style SAC): critics are frozen during the actor step and
log pi is computed once per update and reused for the alpha loss; both give identical gradients.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import require, save_checkpoint, set_seed
from replay_buffer import ReplayBuffer


# ----------------------------------------------------------------------------- networks

class WLinear(nn.Module):
    """A linear layer whose weights are generated from a learned code (MACAW, Mitchell et al. 2021,
    section 4; the layer of the MESA authors' safety critic, docs/mesa_variants.md).

    theta = fc(z) with a code z in R^code_dim and fc an ordinary Linear(code_dim, in * out + out);
    the layer computes x @ W + b with W = theta[:in * out] viewed as (in, out) and b = theta[in * out:].
    z starts N(0, (1 / out)^2) and fc at PyTorch's default. z, fc.weight and fc.bias are all
    parameters, so MAML adapts all three. Since theta is linear in fc.weight with input z, one
    gradient step on fc moves W about (1 + |z|^2) times as far as the same step on a plain weight.
    Adam's first step moves each parameter by about lr, against its gradient's sign, so it moves
    every entry of W by about lr (1 + |z|_1): the read-out layer's code (out = 1, so z ~ N(0, 1))
    has |z|_1 near 80, and one Adam step at 1e-3 shifts its weights by about 0.08 each, all against
    the gradient (docs/results.md, Figure 2).
    """

    def __init__(self, in_features: int, out_features: int, code_dim: int = 100):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.z = nn.Parameter(torch.randn(code_dim) / out_features)
        self.fc = nn.Linear(code_dim, in_features * out_features + out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.fc(self.z)
        n = self.in_features * self.out_features
        return x @ theta[:n].view(self.in_features, self.out_features) + theta[n:]


LAYERS = {"linear": nn.Linear, "wlinear": WLinear}


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...] = (256, 256), layer: str = "linear") -> nn.Sequential:
    """The one MLP builder of the project: layer-ReLU blocks, then an output layer of the same kind.

    layer: "linear" (nn.Linear) or "wlinear" (WLinear, the MESA authors' critic layers).
    """
    kind, layers, width = LAYERS[layer], [], in_dim
    for h in hidden:
        layers += [kind(width, h), nn.ReLU(inplace=True)]  # in place: one allocation less per layer
        width = h
    layers.append(kind(width, out_dim))
    return nn.Sequential(*layers)


LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def squashed_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                               action_scale: torch.Tensor) -> torch.Tensor:
    """log pi(a|s) for a = scale * tanh(u) + bias, u ~ N(mean, std) (SAC paper, appendix C, eq. 21).

    log pi(a|s) = sum_i [ log N(u_i; mean_i, std_i) - log(scale_i * (1 - tanh(u_i)^2)) ],
    with log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)) for numerical stability.  # (B,)
    """
    gaussian = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
    log_det_tanh = 2.0 * (np.log(2.0) - u - F.softplus(-2.0 * u))
    return (gaussian - log_det_tanh - torch.log(action_scale)).sum(-1)


class SquashedGaussianActor(nn.Module):
    """pi(a|s): a Gaussian in pre-tanh space, squashed by tanh and scaled to the action bounds."""

    def __init__(self, obs_dim: int, act_dim: int, action_low, action_high, hidden=(256, 256)):
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, hidden)  # outputs (mean, log_std)
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def distribution(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def forward(self, obs: torch.Tensor, deterministic: bool = False,
                with_log_prob: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (action in env bounds, log pi(action|obs)); reparameterised, so differentiable.

        with_log_prob=False skips log pi (None instead) where only the action is used: acting, and
        the next actions of the safety critic's Bellman targets. It draws the same noise.
        """
        mean, log_std = self.distribution(obs)
        u = mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)
        action = torch.tanh(u) * self.action_scale + self.action_bias
        if not with_log_prob:
            return action, None
        return action, squashed_gaussian_log_prob(u, mean, log_std, self.action_scale)


class QNetwork(nn.Module):
    """Q(s, a): an MLP on concat(s, a) with a scalar output.  # (B,)"""

    def __init__(self, obs_dim: int, act_dim: int, hidden=(256, 256)):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """theta_targ <- (1 - tau) theta_targ + tau theta, in one fused call."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def frozen_copy(net: nn.Module) -> nn.Module:
    """A target network: a copy that never receives gradients."""
    target = copy.deepcopy(net)
    target.requires_grad_(False)
    return target


# ----------------------------------------------------------------------------- losses

def soft_q_target(rew, done, next_q1, next_q2, next_log_pi, gamma: float, alpha) -> torch.Tensor:
    """y = r + gamma (1 - d) (min_i Q_targ_i(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s') (SAC eq. 3)."""
    return rew + gamma * (1.0 - done) * (torch.min(next_q1, next_q2) - alpha * next_log_pi)


def critic_loss(q1, q2, y) -> torch.Tensor:
    """J_Q = E[(Q_1(s,a) - y)^2] + E[(Q_2(s,a) - y)^2] (SAC eq. 5, both critics)."""
    return F.mse_loss(q1, y) + F.mse_loss(q2, y)


def actor_loss(q1_pi, q2_pi, log_pi, alpha) -> torch.Tensor:
    """J_pi = E[alpha log pi(a|s) - min_i Q_i(s, a)], a ~ pi(.|s) reparameterised (SAC eq. 7)."""
    return (alpha * log_pi - torch.min(q1_pi, q2_pi)).mean()


def alpha_loss(log_alpha, log_pi, target_entropy: float) -> torch.Tensor:
    """J(alpha) = E[-alpha (log pi(a|s) + H_target)] (SAC eq. 18); log_pi is detached."""
    return -(log_alpha.exp() * (log_pi.detach() + target_entropy)).mean()


# ----------------------------------------------------------------------------- the agent

@dataclass
class SACConfig:
    """SAC hyperparameters (MESA paper Table 4)."""
    gamma: float = 0.99          # discount of the task reward
    tau: float = 0.005           # Polyak rate of the critic targets
    lr: float = 3e-4             # Adam learning rate of actor, critics and alpha
    batch_size: int = 256        # transitions per update
    alpha: float = 0.2           # entropy temperature (initial value when autotuned)
    autotune: bool = False       # tune alpha toward the target entropy -|A|
    start_steps: int = 1000      # environment steps with uniformly random actions
    hidden: tuple[int, ...] = (256, 256)  # hidden widths of every network

    def __post_init__(self):
        require(0 <= self.gamma <= 1, f"gamma must lie in [0, 1], got {self.gamma}")
        require(0 <= self.tau <= 1, f"tau must lie in [0, 1], got {self.tau}")
        require(self.lr > 0, f"SAC learning rate must be positive, got {self.lr}")
        require(self.batch_size >= 1, f"SAC batch size must be >= 1, got {self.batch_size}")
        require(self.alpha > 0, f"alpha must be positive, got {self.alpha}")
        require(self.start_steps >= 0, f"start_steps must be >= 0, got {self.start_steps}")
        require(all(h >= 1 for h in self.hidden), f"hidden sizes must be >= 1, got {self.hidden}")


class SAC:
    """The task policy: actor, twin critics with targets, optimizers and (optionally) log alpha."""

    def __init__(self, obs_dim: int, act_dim: int, action_low, action_high, cfg: SACConfig | None = None):
        self.cfg = cfg = cfg or SACConfig()
        self.action_low = np.asarray(action_low, np.float32)
        self.action_high = np.asarray(action_high, np.float32)
        self.actor = SquashedGaussianActor(obs_dim, act_dim, action_low, action_high, cfg.hidden)
        self.q1, self.q2 = QNetwork(obs_dim, act_dim, cfg.hidden), QNetwork(obs_dim, act_dim, cfg.hidden)
        self.q1_targ, self.q2_targ = frozen_copy(self.q1), frozen_copy(self.q2)
        self.critic_params = list(self.q1.parameters()) + list(self.q2.parameters())
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr, fused=True)
        self.critic_optim = torch.optim.Adam(self.critic_params, lr=cfg.lr, fused=True)
        self.log_alpha = torch.tensor(float(np.log(cfg.alpha)), requires_grad=cfg.autotune)
        self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=cfg.lr) if cfg.autotune else None
        self.target_entropy = -float(act_dim)
        self.rng = np.random.default_rng(np.random.randint(2**31))

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """An action for one observation (or a batch), already within the action bounds."""
        with torch.no_grad():
            action, _ = self.actor(torch.as_tensor(obs, dtype=torch.float32), deterministic, with_log_prob=False)
        return action.numpy()

    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        """a ~ pi(.|s) for a batch of observations, without gradients (for Bellman targets)."""
        with torch.no_grad():
            return self.actor(obs, with_log_prob=False)[0]

    def explore(self, obs: np.ndarray, env_step: int) -> np.ndarray:
        """Uniformly random actions for the first start_steps steps, then samples of pi."""
        if env_step < self.cfg.start_steps:
            return self.rng.uniform(self.action_low, self.action_high).astype(np.float32)
        return self.act(obs)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One gradient step on the critics, the actor and (if autotuned) alpha; then Polyak."""
        obs, act, cfg, alpha = batch["obs"], batch["act"], self.cfg, self.alpha
        with torch.no_grad():
            next_act, next_log_pi = self.actor(batch["next_obs"])
            y = soft_q_target(batch["rew"], batch["done"], self.q1_targ(batch["next_obs"], next_act),
                              self.q2_targ(batch["next_obs"], next_act), next_log_pi, cfg.gamma, alpha)
            y = y + self.target_shaping(batch)
        loss_q = critic_loss(self.q1(obs, act), self.q2(obs, act), y)
        self.critic_optim.zero_grad(set_to_none=True)
        loss_q.backward()
        self.critic_optim.step()

        # The actor's gradient flows through Q into a, not into Q's weights: freeze them meanwhile.
        for p in self.critic_params:
            p.requires_grad_(False)
        action, log_pi = self.actor(obs)
        loss_pi = actor_loss(self.q1(obs, action), self.q2(obs, action), log_pi, alpha)
        loss_pi = loss_pi + self.actor_penalty(obs, action)
        self.actor_optim.zero_grad(set_to_none=True)
        loss_pi.backward()
        self.actor_optim.step()
        for p in self.critic_params:
            p.requires_grad_(True)

        info = {"losses/qf_loss": loss_q.item(), "losses/actor_loss": loss_pi.item(), "losses/alpha": alpha}
        if self.alpha_optim is not None:
            loss_alpha = alpha_loss(self.log_alpha, log_pi, self.target_entropy)
            self.alpha_optim.zero_grad(set_to_none=True)
            loss_alpha.backward()
            self.alpha_optim.step()
            info["losses/alpha_loss"] = loss_alpha.item()
        polyak_update(self.q1_targ, self.q1, cfg.tau)
        polyak_update(self.q2_targ, self.q2, cfg.tau)
        return info

    # Hooks for the constrained variants of SAC (baselines.py); plain SAC adds nothing.
    def target_shaping(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """A term added to the critics' target y (RCPO's -lambda Q_risk(s, a))."""
        return 0.0

    def actor_penalty(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor | float:
        """A term added to the actor's loss (the Lagrangian methods' nu (Q_risk(s, pi(s)) - eps))."""
        return 0.0

    def training_reward(self, reward: float, cost: float) -> float:
        """The reward SAC learns from (RP: r - P c); the episode's return stays the environment's."""
        return reward

    def begin_episode(self, episode: int) -> None:
        """Called before each Phase-3 episode (RSPO's schedule)."""

    # ------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        state = {name: getattr(self, name).state_dict() for name in
                 ("actor", "q1", "q2", "q1_targ", "q2_targ", "actor_optim", "critic_optim")}
        state["log_alpha"] = self.log_alpha.detach().clone()
        if self.alpha_optim is not None:
            state["alpha_optim"] = self.alpha_optim.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in ("actor", "q1", "q2", "q1_targ", "q2_targ", "actor_optim", "critic_optim"):
            getattr(self, name).load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        if self.alpha_optim is not None:
            self.alpha_optim.load_state_dict(state["alpha_optim"])

    def save(self, path: str) -> None:
        save_checkpoint(self.state_dict(), path)

    def load(self, path: str) -> None:
        self.load_state_dict(torch.load(path, weights_only=True))


# ----------------------------------------------------------------------------- a sanity check

def learn_gym_task(env_id: str = "Pendulum-v1", steps: int = 15000, seed: int = 0,
                   cfg: SACConfig | None = None, eval_episodes: int = 10) -> float:
    """Train SAC on a standard Gymnasium task; return the mean deterministic evaluation return."""
    import gymnasium as gym

    set_seed(seed)
    env = gym.make(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = SAC(obs_dim, act_dim, env.action_space.low, env.action_space.high, cfg)
    buffer = ReplayBuffer(obs_dim, act_dim, steps, seed=seed)
    obs, _ = env.reset(seed=seed)
    for step in range(steps):
        action = agent.explore(obs, step)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, 0.0, next_obs, terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs
        if len(buffer) >= agent.cfg.batch_size:
            agent.update(buffer.sample(agent.cfg.batch_size))
    returns = []
    for episode in range(eval_episodes):
        obs, _ = env.reset(seed=10_000 + episode)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True))
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Check that SAC learns a standard Gymnasium task.")
    parser.add_argument("--env", default="Pendulum-v1", help="Gymnasium id of the task")
    parser.add_argument("--steps", type=int, default=15000, help="environment steps (one update each)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..seeds-1")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for seed in range(args.seeds):
        print(f"{args.env} seed {seed}: mean evaluation return {learn_gym_task(args.env, args.steps, seed):.1f}", flush=True)
