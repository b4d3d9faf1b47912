"""CARL and CARL-Offline: the MESA paper's model-based comparisons (MESA paper section 5, Figure 5).

CARL (Zhang et al., ICML 2020, "Cautious Adaptation for Reinforcement Learning in Safety-Critical
Settings") is PETS (Chua et al., NeurIPS 2018, "Deep RL in a Handful of Trials using Probabilistic
Dynamics Models") made cautious:
- A probabilistic ensemble of B networks (PETS section 4; ensemble.py). Each predicts a Gaussian
  over the change of state and, as in CARL's code, a catastrophe logit; trained by Gaussian negative
  log-likelihood plus a class-weighted cross-entropy on the cost label, each member on its own
  bootstrap of the data. On Cartpole it sees the pole angle as its sine and cosine, as CARL's does.
- Trajectory sampling TS-inf (PETS section 5): P particles per candidate action sequence, each bound
  to one member for the whole horizon, sampled from that member's Gaussian at every step.
- MPC with the cross-entropy method over action sequences (PETS section 5), replanned every step.
- Caution (CARL section 4), in the test environment only. CARL (State): the particles' mean return
  minus lambda times the share of particles that reach a predicted catastrophe. CARL (Reward): the
  mean return of the worst gamma per cent of the particles. Pretraining plans on the plain mean.
The rewards are our environments' own (`reward_function`); the catastrophe is the learned head,
trained on the cost our environments put in info["cost"] and the datasets' `costs`.

The two methods differ in Phase 1 only:
- carl: PETS in the training tasks, one random episode then `pretrain_episodes` planned ones, a task
  drawn per episode, the model refit after each (CARL's source training).
- carl_offline: the ensemble fit on the offline training datasets and D_test.
Phase 3 (both): cautious MPC in the test task; after every episode the model is fine-tuned on the
test-environment data seen so far (online transitions; CARL-Offline also D_test).
Where this differs from jesbu1/carl: docs/carl.md, "Paper vs. original code".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

import envs
from common import global_rng_state, require, set_global_rng_state
from ensemble import ProbabilisticEnsemble, fit
from point_envs import MAZE_GOAL
from replay_buffer import ReplayBuffer

CARL_METHODS = ("carl", "carl_offline")
RISKS = ("state", "reward", "none")
MODEL_FIELDS = ("observations", "actions", "next_observations", "costs")   # what the ensemble learns from
ANGLES = {"cartpole": (1,)}    # observation columns the ensemble sees as sine and cosine (config/cartpole.py:45-51)
RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (s, a, s') -> r


@dataclass
class CARLConfig:
    """CARL's ensemble, planner and caution (jesbu1/carl config/cartpole.py; paper_config gives
    each environment's; docs/carl.md has every source)."""
    ensemble: int = 5              # B networks in the probabilistic ensemble [mbexp.py:81]
    hidden: tuple[int, ...] = (500, 500, 500)  # hidden widths, swish [cartpole.py:26-27]
    weight_decays: tuple[float, ...] = (1e-4, 2.5e-4, 2.5e-4, 5e-4)  # L2 weight per layer, input to output [cartpole.py:27]
    lr: float = 1e-3               # Adam learning rate of the ensemble [cartpole.py:105]
    batch_size: int = 256          # transitions per member per step [MPC.py:192]
    epochs: int = 5                # passes over the data per fit [cartpole.py:35]
    horizon: int = 25              # planning horizon H [cartpole.py:20]
    population: int = 400          # CEM candidates per iteration [cartpole.py:38]
    elites: int = 40               # CEM elites [cartpole.py:39]
    iterations: int = 5            # CEM iterations [cartpole.py:40]
    cem_alpha: float = 0.1         # share of the old CEM mean and variance kept [cartpole.py:41]
    particles: int = 20            # TS-inf particles per candidate, a multiple of ensemble [default.py:136]
    risk: str = "state"            # Phase-3 caution: "state" CARL (State), "reward" CARL (Reward), "none" (PETS)
    catastrophe_penalty: float = 10000.0  # lambda on the share of particles in catastrophe [cartpole.py:24]
    catastrophe_threshold: float = 0.5  # a predicted state is catastrophic where p > this [mbexp.py:79, MPC.py:345]
    percentile: float = 50.0       # CARL (Reward) gamma: plan on the worst gamma per cent of particle returns [mbexp.py:79]
    pretrain_episodes: int = 50    # carl: planned episodes in training tasks, after one random [cartpole.py:17]

    def __post_init__(self):
        self.hidden, self.weight_decays = tuple(self.hidden), tuple(self.weight_decays)
        require(self.risk in RISKS, f"carl risk must be one of {', '.join(RISKS)}, got {self.risk!r}")
        require(self.ensemble >= 1 and self.particles % self.ensemble == 0,
                f"carl particles ({self.particles}) must be a positive multiple of the ensemble size ({self.ensemble})")
        require(len(self.weight_decays) == len(self.hidden) + 1,
                f"carl needs one weight decay per layer: {len(self.hidden) + 1}, got {len(self.weight_decays)}")
        require(1 <= self.elites <= self.population, f"carl elites must lie in [1, population], got {self.elites}")
        require(min(self.horizon, self.iterations, self.batch_size, self.epochs, *self.hidden) >= 1,
                "carl horizon, iterations, batch size, epochs and widths must be >= 1")
        require(0 <= self.cem_alpha < 1 and 0 < self.percentile <= 100 and 0 <= self.catastrophe_threshold <= 1,
                "carl cem_alpha must lie in [0, 1), percentile in (0, 100], catastrophe_threshold in [0, 1]")
        require(self.lr > 0 and self.pretrain_episodes >= 0 and self.catastrophe_penalty >= 0,
                "carl lr must be positive, pretrain_episodes and catastrophe_penalty >= 0")


def paper_config(env: str) -> CARLConfig:
    """CARL's settings for env: config/cartpole.py for Cartpole and the point environments,
    config/halfcheetahdisabled.py for HalfCheetah and Ant (CARL has no Ant or point-env config)."""
    if env in ("halfcheetah", "ant"):
        return CARLConfig(hidden=(200,) * 4, weight_decays=(2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4),
                          epochs=10, horizon=10, population=500, elites=50, pretrain_episodes=100)
    return CARLConfig()


# ----------------------------------------------------------------------------- rewards

def reward_function(name: str, task: dict) -> RewardFn:
    """r(s, a, s') of env `name` in `task`, batched in torch, from the environment's own reward.

    Cartpole: exp(-||tip - (0, L)||^2 / L^2) at s' (mujoco_envs.CartpoleLength.step), L the task's.
    HalfCheetah, Ant: the forward velocity, here s''s root x-velocity (qvel[0]; the env takes the
    torso's displacement over the step), minus the env's control cost, plus its alive bonus
    (mujoco_envs CONTROL_COST, ALIVE_BONUS). Navigation: -||s|| of the pre-step state. Maze: minus
    the RMS distance of s' to the goal (point_envs.maze_goal_distance).
    """
    env = envs.make_env(name, task)
    env.close()                                                     # only its constants are read
    raw = env.unwrapped
    if name == "cartpole":
        length = raw.length

        def cartpole(s, a, s2):
            dx, dz = s2[..., 0] + length * torch.sin(s2[..., 1]), length * torch.cos(s2[..., 1]) - length
            return torch.exp(-(dx * dx + dz * dz) / length ** 2)
        return cartpole
    if name in ("halfcheetah", "ant"):
        velocity = env.observation_space.shape[0] - raw.model.nv    # qvel follows qpos in the observation
        control, bonus = raw.CONTROL_COST, raw.ALIVE_BONUS
        return lambda s, a, s2: s2[..., velocity] - control * (a * a).sum(-1) + bonus
    if name == "maze":
        goal = torch.tensor(MAZE_GOAL, dtype=torch.float32)
        return lambda s, a, s2: -((s2[..., :2] - goal) ** 2).mean(-1).sqrt()
    return lambda s, a, s2: -s.norm(dim=-1)


# ----------------------------------------------------------------------------- planning

@torch.no_grad()
def propagate(model: ProbabilisticEnsemble, obs: torch.Tensor, actions: torch.Tensor, particles: int,
              reward_fn: RewardFn) -> tuple[torch.Tensor, torch.Tensor]:
    """TS-inf trajectory sampling (PETS section 5) of N action sequences from one state.

    obs (obs_dim,), actions (N, H, act_dim). Particle p follows member p mod B for the whole
    horizon, and each step samples s' = s + mu + sigma eps from it. Every model call is one batched
    pass over members x (candidates x particles per member). Returns rewards (N, P, H) and the
    predicted catastrophe probabilities (N, P, H).
    """
    n, horizon, _ = actions.shape
    members, per_member = model.members, particles // model.members
    state = obs.expand(members, n * per_member, -1)                    # (B, N * P/B, obs_dim)
    rewards, catastrophes = [], []
    for t in range(horizon):
        act = actions[:, t].repeat_interleave(per_member, 0).expand(members, -1, -1)
        mean, logvar, logit = model(state, act)
        next_state = state + mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        rewards.append(reward_fn(state, act, next_state))
        catastrophes.append(torch.sigmoid(logit[..., 0]))
        state = next_state
    # (H, B, N * P/B) -> (N, P, H), particle p = b * P/B + j
    as_particles = lambda x: torch.stack(x).view(horizon, members, n, per_member).permute(2, 1, 3, 0).reshape(n, particles, horizon)  # noqa: E731
    return as_particles(rewards), as_particles(catastrophes)


def catastrophe_share(catastrophe_prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """g(A): the share of particles whose predicted trajectory enters a catastrophic state, a
    predicted probability above the threshold at some step (CARL (State), CARL section 4). (N, P, H) -> (N,)."""
    return (catastrophe_prob > threshold).any(-1).float().mean(-1)


def lower_tail_mean(returns: torch.Tensor, percentile: float) -> torch.Tensor:
    """The mean of the worst gamma per cent of the particles' returns, at least one particle
    (CARL (Reward), CARL section 4; k as CARL's MPC.py:354). (N, P) -> (N,)."""
    k = max(int(percentile / 100 * returns.shape[-1]), 1)
    return returns.topk(k, dim=-1, largest=False).values.mean(-1)


def cautious_score(rewards: torch.Tensor, catastrophe_prob: torch.Tensor, cfg: CARLConfig,
                   risk: str) -> torch.Tensor:
    """What CEM maximises per candidate, from its particles' rewards and catastrophe probabilities
    (N, P, H): "state" E[R] - lambda g(A); "reward" the lower-tail mean of R; "none" E[R] (PETS)."""
    returns = torch.nan_to_num(rewards.sum(-1), nan=-1e6)        # a diverged particle scores badly (MPC.py:350)
    if risk == "reward":
        return lower_tail_mean(returns, cfg.percentile)
    score = returns.mean(-1)
    if risk == "state":
        score = score - cfg.catastrophe_penalty * catastrophe_share(catastrophe_prob, cfg.catastrophe_threshold)
    return score


def cem(score_fn: Callable[[torch.Tensor], torch.Tensor], mean: torch.Tensor, var: torch.Tensor,
        low: torch.Tensor, high: torch.Tensor, cfg: CARLConfig, min_var: float = 1e-3) -> torch.Tensor:
    """The cross-entropy method (PETS section 5, as its code runs it): sample `population` sequences
    from a normal truncated at 2 std, its variance kept within half the distance to each bound;
    refit mean and variance to the `elites` best, keeping cem_alpha of the old; `iterations` times
    or until the largest variance falls below min_var. mean, var, low, high: (H, act_dim)."""
    for _ in range(cfg.iterations):
        if var.max() <= min_var:
            break
        var_in_bounds = torch.minimum(torch.minimum(((mean - low) / 2) ** 2, ((high - mean) / 2) ** 2), var)
        noise = nn.init.trunc_normal_(torch.empty(cfg.population, *mean.shape), a=-2.0, b=2.0)
        samples = mean + noise * var_in_bounds.sqrt()
        elites = samples[score_fn(samples).topk(cfg.elites).indices]
        mean = cfg.cem_alpha * mean + (1 - cfg.cem_alpha) * elites.mean(0)
        var = cfg.cem_alpha * var + (1 - cfg.cem_alpha) * elites.var(0, unbiased=False)
    return mean


class CARLAgent:
    """The ensemble, its optimizer and the MPC planner; plan() is one step of MPC."""

    def __init__(self, obs_dim: int, act_dim: int, low, high, cfg: CARLConfig, reward_fn: RewardFn, seed: int,
                 angles: tuple[int, ...] = ()):
        self.cfg, self.reward_fn = cfg, reward_fn
        self.model = ProbabilisticEnsemble(obs_dim, act_dim, cfg.ensemble, cfg.hidden, cfg.weight_decays, angles)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.low = torch.as_tensor(low, dtype=torch.float32).expand(cfg.horizon, -1)
        self.high = torch.as_tensor(high, dtype=torch.float32).expand(cfg.horizon, -1)
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """A new episode: the CEM mean starts mid-range again (MPC.py:271)."""
        self.previous = (self.low + self.high) / 2

    def fit(self, data: dict, epochs: float | None = None, input_statistics: bool = True) -> float:
        return fit(self.model, self.optimizer, data, self.cfg.epochs if epochs is None else epochs,
                   self.cfg.batch_size, self.rng, input_statistics)

    def plan(self, obs: np.ndarray, risk: str) -> np.ndarray:
        """CEM over H-step action sequences, warm-started from the last plan shifted by one step;
        returns the first action (MPC replans every step)."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32)

        def score(sequences):
            rewards, catastrophes = propagate(self.model, obs_t, sequences, self.cfg.particles, self.reward_fn)
            return cautious_score(rewards, catastrophes, self.cfg, risk)
        var = ((self.high - self.low) ** 2) / 16
        plan = cem(score, self.previous, var, self.low, self.high, self.cfg)
        self.previous = torch.cat([plan[1:], torch.zeros_like(plan[:1])])  # MPC.py:317 pads with zeros
        return plan[0].numpy()

    def state_dict(self) -> dict:
        """The ensemble, its optimizer, the bootstrap generator and the planner's warm start."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.bit_generator.state, "previous": self.previous}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.previous = state["previous"].clone()


# ----------------------------------------------------------------------------- episodes and phases

def run_episode(env, agent: CARLAgent, risk: str | None, buffer: ReplayBuffer, seed: int | None = None) -> dict:
    """One episode: planned actions (risk given) or uniformly random ones (risk None), every
    transition into buffer. Returns return, length, violation (0/1) and success (nan where undefined)."""
    obs, info = env.reset(seed=seed)
    agent.reset()
    ret, length, violated, done = 0.0, 0, False, False
    while not done:
        action = env.action_space.sample() if risk is None else agent.plan(obs, risk)
        next_obs, reward, terminated, truncated, info = env.step(action)
        cost = float(info["cost"])
        buffer.add(obs, action, reward, cost, next_obs, terminated, truncated)
        ret, length, violated, obs = ret + reward, length + 1, violated or cost > 0, next_obs
        done = terminated or truncated
    return {"return": ret, "length": length, "violation": int(violated), "success": float(info.get("success", np.nan))}


@dataclass
class Pretraining:
    """Where CARL's Phase 1 stands between two episodes: with the agent and the global random state,
    all that is needed to continue it exactly (experiment.py checkpoints it)."""
    episode: int                  # episodes finished, the random one included
    buffer: ReplayBuffer          # every transition so far
    task_rng: np.random.Generator  # draws each episode's training task
    seconds: float = 0.0          # time spent so far, over every process that ran it

    @classmethod
    def start(cls, name: str, agent: CARLAgent, seed: int) -> "Pretraining":
        steps = (agent.cfg.pretrain_episodes + 1) * envs.HORIZON[name]
        buffer = ReplayBuffer(agent.model.obs_dim, agent.low.shape[-1], steps, seed=seed)
        return cls(0, buffer, np.random.default_rng(seed))

    def state_dict(self) -> dict:
        return {"episode": self.episode, "buffer": self.buffer.state_dict(),
                "task_rng": self.task_rng.bit_generator.state, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.episode = state["episode"]
        self.buffer.load_state_dict(state["buffer"])
        self.task_rng.bit_generator.state = state["task_rng"]
        self.seconds = state["seconds"]


def pretrain_online(name: str, agent: CARLAgent, seed: int, callback: Callable[[int], None] | None = None,
                    progress: Pretraining | None = None) -> dict:
    """CARL's Phase 1: one random episode, then cfg.pretrain_episodes PETS episodes (no caution), each
    in a training task drawn at random, that go on after a violation (CARL's training mode); the
    model is refit on everything after each episode. The planner scores with each task's own reward
    (CARL's Cartpole carries the pole length in its observation). `progress` continues from a
    checkpoint and is updated before callback(episode) runs. Returns the transitions collected."""
    tasks = envs.train_tasks(name, seed=0)
    progress = progress or Pretraining.start(name, agent, seed)
    test_reward = agent.reward_fn
    for episode in range(progress.episode, agent.cfg.pretrain_episodes + 1):
        task = tasks[progress.task_rng.integers(len(tasks))]
        env, agent.reward_fn = envs.make_env(name, task, terminate_on_violation=False), reward_function(name, task)
        env.action_space.seed(seed + episode)
        run_episode(env, agent, None if episode == 0 else "none", progress.buffer, seed=seed + episode)
        env.close()
        agent.fit(progress.buffer.arrays())
        progress.episode = episode + 1
        if callback is not None:
            callback(episode)
    agent.reward_fn = test_reward
    return progress.buffer.arrays()


def pretrain_offline(agent: CARLAgent, datasets: list[dict]) -> float:
    """CARL-Offline's Phase 1: cfg.epochs passes over the offline datasets pooled (training
    datasets and D_test), nothing else. Returns the last loss."""
    pooled = {k: np.concatenate([d[k] for d in datasets]) for k in MODEL_FIELDS}
    return agent.fit(pooled)


@dataclass
class Adaptation:
    """Where CARL's Phase 3 stands between two episodes: with the agent and the random states, all
    that is needed to continue it exactly (phase3_checkpoint)."""
    episode: int                  # episodes finished
    env_steps: int                # environment steps taken
    buffer: ReplayBuffer          # the online transitions so far

    @classmethod
    def start(cls, env, n_episodes: int, seed: int) -> "Adaptation":
        capacity = n_episodes * env.spec.max_episode_steps
        return cls(0, 0, ReplayBuffer(env.observation_space.shape[0], env.action_space.shape[0], capacity, seed=seed))


def learn_online(env, agent: CARLAgent, n_episodes: int, seed: int, offline: dict | None = None,
                 progress: Adaptation | None = None) -> Iterator[dict]:
    """Phase 3: cautious MPC (cfg.risk) in the test environment, the model fine-tuned after every
    episode for cfg.epochs passes over the test-environment data so far (offline: D_test, first),
    keeping Phase 1's input statistics (a few test transitions would otherwise rescale every input
    the pretrained model knows). `progress` continues from a checkpoint (restore_phase3) and is
    updated after every episode. Yields one episodes.csv row per episode; CARL has no recovery
    policy (recovery_fraction 0)."""
    progress = progress or Adaptation.start(env, n_episodes, seed)
    if progress.episode == 0:
        env.action_space.seed(seed)
    for episode in range(progress.episode, n_episodes):
        row = run_episode(env, agent, agent.cfg.risk, progress.buffer, seed=seed if episode == 0 else None)
        data = progress.buffer.arrays()
        if offline is not None:
            data = {k: np.concatenate([offline[k], data[k]]) for k in MODEL_FIELDS}
        agent.fit(data, input_statistics=False)
        progress.episode, progress.env_steps = episode + 1, progress.env_steps + row["length"]
        yield {"episode": episode, "env_steps": progress.env_steps, **row, "recovery_fraction": 0.0}


# ----------------------------------------------------------------------------- checkpoints

def phase3_checkpoint(env, agent: CARLAgent, progress: Adaptation) -> dict:
    """Everything Phase 3 needs to continue exactly after progress.episode episodes: the agent
    (ensemble, optimizer, bootstrap generator, warm start), the online transitions, and every random
    state (global, the buffer's, the environment's and its action space's)."""
    return {"episode": progress.episode, "env_steps": progress.env_steps, "carl": agent.state_dict(),
            "buffer": progress.buffer.state_dict(), "rng": global_rng_state(),
            "env_rng": env.unwrapped.np_random.bit_generator.state,
            "action_rng": env.action_space.np_random.bit_generator.state}


def restore_phase3(state: dict, env, agent: CARLAgent, progress: Adaptation) -> None:
    """Load a phase3_checkpoint into freshly built objects of the same run (progress from
    Adaptation.start), so that learn_online(progress=progress) continues where it stopped."""
    agent.load_state_dict(state["carl"])
    progress.buffer.load_state_dict(state["buffer"])
    progress.episode, progress.env_steps = state["episode"], state["env_steps"]
    env.unwrapped.np_random.bit_generator.state = state["env_rng"]
    env.action_space.np_random.bit_generator.state = state["action_rng"]
    set_global_rng_state(state["rng"])
