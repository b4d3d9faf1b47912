"""The straightforward baselines bench.py times our hot paths against, written the way common
implementations write these steps: per-parameter loops, python-list buffers, separate optimiser
steps, an ensemble called member by member. They exist only to be timed against.
"""
from __future__ import annotations

import copy
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributions import Normal
from torch.func import functional_call

import ensemble
from recovery_rl import Safety, safety_bellman_target
from sac import SAC, soft_q_target


def loop_polyak(target, source, tau):
    """Baseline: a python loop over parameters."""
    for tp, p in zip(target.parameters(), source.parameters()):
        tp.data.copy_(tau * p.data + (1 - tau) * tp.data)


class BaselineSAC:
    """Baseline SAC update: pi(.|s) through torch.distributions.Normal, critics stay trainable in the
    actor step, log pi is recomputed for the alpha loss, Adam is the per-parameter loop, Polyak is a
    python loop."""

    def __init__(self, agent: SAC):
        self.__dict__.update({k: copy.deepcopy(getattr(agent, k)) for k in
                              ("cfg", "actor", "q1", "q2", "q1_targ", "q2_targ", "target_entropy")})
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=self.cfg.lr)
        self.critic_optim = torch.optim.Adam(list(self.q1.parameters()) + list(self.q2.parameters()), lr=self.cfg.lr)
        self.log_alpha = torch.tensor(float(np.log(self.cfg.alpha)), requires_grad=True)
        self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=self.cfg.lr)

    def sample(self, obs):
        """a ~ pi(.|s) and log pi(a|s) as CleanRL, Spinning Up and pranz24 write it: a Normal
        distribution object, rsample, log_prob, then the tanh correction (the same maths as ours)."""
        mean, log_std = self.actor.distribution(obs)
        normal = Normal(mean, log_std.exp())
        u = normal.rsample()
        log_pi = (normal.log_prob(u) - 2 * (np.log(2) - u - F.softplus(-2 * u))).sum(-1)
        scale, bias = self.actor.action_scale, self.actor.action_bias
        return torch.tanh(u) * scale + bias, log_pi - torch.log(scale).sum()

    def update(self, batch):
        obs, act, alpha = batch["obs"], batch["act"], self.log_alpha.exp().item()
        with torch.no_grad():
            next_act, next_log_pi = self.sample(batch["next_obs"])
            y = soft_q_target(batch["rew"], batch["done"], self.q1_targ(batch["next_obs"], next_act),
                              self.q2_targ(batch["next_obs"], next_act), next_log_pi, self.cfg.gamma, alpha)
        loss_q = F.mse_loss(self.q1(obs, act), y) + F.mse_loss(self.q2(obs, act), y)
        self.critic_optim.zero_grad()
        loss_q.backward()
        self.critic_optim.step()
        action, log_pi = self.sample(obs)
        loss_pi = (alpha * log_pi - torch.min(self.q1(obs, action), self.q2(obs, action))).mean()
        self.actor_optim.zero_grad()
        loss_pi.backward()
        self.actor_optim.step()
        if self.cfg.autotune:
            _, log_pi = self.sample(obs)
            loss_alpha = -(self.log_alpha * (log_pi + self.target_entropy).detach()).mean()
            self.alpha_optim.zero_grad()
            loss_alpha.backward()
            self.alpha_optim.step()
        loop_polyak(self.q1_targ, self.q1, self.cfg.tau)
        loop_polyak(self.q2_targ, self.q2, self.cfg.tau)


class BaselineSafety:
    """Baseline Q_risk / pi_rec updates: Q_risk stays trainable in the pi_rec step, loop Adam and Polyak."""

    def __init__(self, safety: Safety):
        self.cfg = safety.cfg
        self.q_risk, self.q_risk_targ, self.pi_rec = (copy.deepcopy(m) for m in (safety.q_risk, safety.q_risk_targ, safety.pi_rec))
        self.q_optim = torch.optim.Adam(self.q_risk.parameters(), lr=self.cfg.lr)
        self.pi_optim = torch.optim.Adam(self.pi_rec.parameters(), lr=self.cfg.lr)

    def filtered(self, obs, a_task):
        with torch.no_grad():
            risky = self.q_risk(obs, a_task) > self.cfg.eps_risk
            return torch.where(risky.unsqueeze(-1), self.pi_rec(obs), a_task)

    def update(self, batch, policy):
        with torch.no_grad():
            y = safety_bellman_target(batch["cost"], self.q_risk_targ(batch["next_obs"], policy(batch["next_obs"])),
                                      self.cfg.gamma_risk)
        loss = F.mse_loss(self.q_risk(batch["obs"], batch["act"]), y)
        self.q_optim.zero_grad()
        loss.backward()
        self.q_optim.step()
        loop_polyak(self.q_risk_targ, self.q_risk, self.cfg.tau_risk)
        loss_rec = self.q_risk(batch["obs"], self.pi_rec(batch["obs"])).mean()
        self.pi_optim.zero_grad()
        loss_rec.backward()
        self.pi_optim.step()


class ListBuffer:
    """Baseline replay buffer: a list of tuples, random.sample and np.array stacking."""

    def __init__(self, arrays):
        self.rows = list(zip(*(arrays[k] for k in ("observations", "actions", "rewards", "costs",
                                                   "next_observations", "terminals"))))
        self.violations = [row for row in self.rows if row[3] > 0]

    def add(self, *row):
        self.rows.append(row[:6])
        if row[3] > 0:
            self.violations.append(row[:6])

    def _stack(self, rows):
        obs, act, rew, cost, next_obs, done = map(np.array, zip(*rows))
        return {"obs": torch.FloatTensor(obs), "act": torch.FloatTensor(act), "rew": torch.FloatTensor(rew),
                "cost": torch.FloatTensor(cost), "next_obs": torch.FloatTensor(next_obs), "done": torch.FloatTensor(done)}

    def sample(self, n):
        return self._stack(random.sample(self.rows, n))

    def sample_balanced(self, n, pos_fraction):
        n_pos = int(round(pos_fraction * n)) if self.violations else 0
        return self._stack(random.choices(self.violations, k=n_pos) + random.sample(self.rows, n - n_pos))


def baseline_meta_step(safety: BaselineSafety, buffers: list[ListBuffer], policy, cfg, optimizer):
    """Baseline MAML step: targets computed inside the task loop, one backward per task."""
    optimizer.zero_grad()
    params = dict(safety.q_risk.named_parameters())
    for j in random.sample(range(len(buffers)), cfg.tasks_per_step):
        b_in = buffers[j].sample_balanced(cfg.batch_size, safety.cfg.pos_fraction)
        b_out = buffers[j].sample_balanced(cfg.batch_size, safety.cfg.pos_fraction)
        with torch.no_grad():
            y_in = safety_bellman_target(b_in["cost"], safety.q_risk_targ(b_in["next_obs"], policy(b_in["next_obs"])), safety.cfg.gamma_risk)
        loss_in = F.mse_loss(functional_call(safety.q_risk, params, (b_in["obs"], b_in["act"])), y_in)
        grads = torch.autograd.grad(loss_in, list(params.values()), create_graph=cfg.second_order)
        fast = {name: p - cfg.inner_lr * g for (name, p), g in zip(params.items(), grads)}
        with torch.no_grad():
            y_out = safety_bellman_target(b_out["cost"], safety.q_risk_targ(b_out["next_obs"], policy(b_out["next_obs"])), safety.cfg.gamma_risk)
        F.mse_loss(functional_call(safety.q_risk, fast, (b_out["obs"], b_out["act"])), y_out).backward()
    optimizer.step()
    loop_polyak(safety.q_risk_targ, safety.q_risk, safety.cfg.tau_risk)


def baseline_phase3_step(env, obs, agent: BaselineSAC, safety: BaselineSafety, task_buffer: ListBuffer,
                         safety_buffer: ListBuffer, batch: int):
    """Baseline Recovery RL step: per-step tensor construction, list buffers, baseline updates."""
    with torch.no_grad():
        a_task = agent.sample(torch.FloatTensor(obs).unsqueeze(0))[0]
    a_exec = safety.filtered(torch.FloatTensor(obs).unsqueeze(0), a_task).squeeze(0).numpy()
    a_task = a_task.squeeze(0).numpy()
    next_obs, reward, terminated, truncated, info = env.step(a_exec)
    task_buffer.add(obs, a_task, reward, info["cost"], next_obs, terminated)
    safety_buffer.add(obs, a_exec, reward, info["cost"], next_obs, terminated)
    agent.update(task_buffer.sample(batch))
    policy = lambda o: safety.filtered(o, agent.sample(o)[0])
    safety.update(safety_buffer.sample_balanced(batch, safety.cfg.pos_fraction), policy)
    return next_obs, terminated or truncated


class LoopedEnsemble:
    """Baseline ensemble call for CARL's planner: each member's layers in turn, in a python loop,
    instead of one batched matmul over the members."""

    def __init__(self, model: ensemble.ProbabilisticEnsemble):
        self.model, self.members = model, model.members

    def __call__(self, obs, act):
        m, outs = self.model, []
        for b in range(m.members):
            x = (m.inputs(obs[b], act[b]) - m.input_mean) / m.input_std
            for i, layer in enumerate(m.layers):
                x = x @ layer.weight[b] + layer.bias[b]
                x = F.silu(x) if i < len(m.layers) - 1 else x
            outs.append(x)
        mean, logvar, logit = torch.stack(outs).split([m.obs_dim, m.obs_dim, 1], -1)
        return mean, ensemble.bounded_logvar(logvar, m.min_logvar, m.max_logvar), logit
