"""The probabilistic ensemble of dynamics models CARL plans with (PETS: Chua et al., NeurIPS 2018,
"Deep RL in a Handful of Trials using Probabilistic Dynamics Models", section 4).

B networks, trained together in batched matmuls, each predict a Gaussian over the change of state
and, as in CARL's code, a catastrophe logit. The loss is the Gaussian negative log-likelihood plus a
class-weighted cross-entropy on the cost label, and each member trains on its own bootstrap of the
data (fit). carl.py propagates particles through it and plans.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class EnsembleLinear(nn.Module):
    """B independent affine layers applied in one batched matmul: (B, N, in) -> (B, N, out).
    Weights from a normal truncated at 2 std, std 1 / (2 sqrt(in)), as PETS's code initialises."""

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(members, 1, out_features))
        std = 1.0 / (2.0 * math.sqrt(in_features))
        nn.init.trunc_normal_(self.weight, std=std, a=-2 * std, b=2 * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


def angle_features(obs: torch.Tensor, angles: tuple[int, ...]) -> torch.Tensor:
    """obs with its angle columns replaced by their sines and cosines, so that a pole that has
    turned over stays near where it started (CARL's Cartpole input, config/cartpole.py:45-51)."""
    if not angles:
        return obs
    keep = [i for i in range(obs.shape[-1]) if i not in angles]
    theta = obs[..., list(angles)]
    return torch.cat([obs[..., keep], torch.sin(theta), torch.cos(theta)], -1)


class ProbabilisticEnsemble(nn.Module):
    """B networks f_b(s, a) -> (mean of s' - s, log variance of s' - s, catastrophe logit)
    (PETS section 4: a probabilistic ensemble; the catastrophe head is CARL's).

    Inputs (angle_features of s, then a) are standardised with statistics of the training data
    (fit_input_statistics); the log variance is softly bounded between learned limits, initially
    -10 and 0.5 (PETS's code)."""

    def __init__(self, obs_dim: int, act_dim: int, members: int, hidden: tuple[int, ...],
                 weight_decays: tuple[float, ...], angles: tuple[int, ...] = ()):
        super().__init__()
        self.obs_dim, self.members, self.angles = obs_dim, members, tuple(angles)
        in_dim = obs_dim + len(self.angles) + act_dim
        widths = (in_dim, *hidden, 2 * obs_dim + 1)
        self.layers = nn.ModuleList(EnsembleLinear(members, i, o) for i, o in zip(widths[:-1], widths[1:]))
        self.weight_decays = weight_decays
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.max_logvar = nn.Parameter(torch.full((obs_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((obs_dim,), -10.0))

    def inputs(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.cat([angle_features(obs, self.angles), act], -1)

    def fit_input_statistics(self, obs: np.ndarray, act: np.ndarray) -> None:
        inputs = self.inputs(torch.as_tensor(obs, dtype=torch.float64), torch.as_tensor(act, dtype=torch.float64))
        std = inputs.std(0, unbiased=False)
        self.input_mean.copy_(inputs.mean(0))
        self.input_std.copy_(torch.where(std < 1e-12, 1.0, std))

    def forward(self, obs: torch.Tensor, act: torch.Tensor):
        """obs (B, N, obs_dim), act (B, N, act_dim) -> mean, log variance (B, N, obs_dim), logit (B, N, 1)."""
        x = (self.inputs(obs, act) - self.input_mean) / self.input_std
        for layer in self.layers[:-1]:
            x = F.silu(layer(x))                                   # swish
        out = self.layers[-1](x)
        mean, logvar, logit = out.split([self.obs_dim, self.obs_dim, 1], -1)
        return mean, bounded_logvar(logvar, self.min_logvar, self.max_logvar), logit

    def weight_decay(self) -> torch.Tensor:
        return sum(d * (layer.weight ** 2).sum() / 2 for d, layer in zip(self.weight_decays, self.layers))


def bounded_logvar(logvar, min_logvar, max_logvar):
    """Soft clamp of the log variance into (min_logvar, max_logvar) by two softpluses (PETS appendix A.1)."""
    logvar = max_logvar - F.softplus(max_logvar - logvar)
    return min_logvar + F.softplus(logvar - min_logvar)


def gaussian_nll(mean, logvar, target) -> torch.Tensor:
    """PETS section 4's loss without constants: sum over members of the mean over transitions and
    dimensions of (mu - y)^2 exp(-log var) + log var, i.e. 2 x the Gaussian NLL per dimension."""
    return (((mean - target) ** 2) * torch.exp(-logvar) + logvar).mean((-1, -2)).sum()


def catastrophe_loss(logit, label) -> torch.Tensor:
    """CARL's catastrophe head: binary cross-entropy with logits, the positives weighted by the
    batch's negatives per positive (0 where the batch has none), as CARL's MPC.py:216-221."""
    positives = label.sum()
    weight = (label.numel() - positives) / positives if positives > 0 else torch.zeros(())
    return F.binary_cross_entropy_with_logits(logit, label, pos_weight=weight)


def model_loss(model: ProbabilisticEnsemble, batch: dict) -> torch.Tensor:
    """The ensemble's training loss on a (B, N, .) batch: Gaussian NLL of s' - s, catastrophe BCE,
    weight decay, and 0.01 (sum max_logvar - sum min_logvar), which pulls the bounds together."""
    mean, logvar, logit = model(batch["obs"], batch["act"])
    loss = gaussian_nll(mean, logvar, batch["next_obs"] - batch["obs"])
    loss = loss + catastrophe_loss(logit, batch["cost"].unsqueeze(-1))
    return loss + model.weight_decay() + 0.01 * (model.max_logvar.sum() - model.min_logvar.sum())


def fit(model: ProbabilisticEnsemble, optimizer: torch.optim.Optimizer, data: dict, epochs: float,
        batch_size: int, rng: np.random.Generator, input_statistics: bool = True) -> float:
    """`epochs` passes of Adam over `data` (a dict of numpy arrays): each member on its own
    bootstrap of the rows, drawn with replacement (PETS section 4). input_statistics: standardise
    the inputs with this data's statistics first (Phase 1; fine-tuning keeps them). Returns the last loss."""
    n = len(data["observations"])
    if input_statistics:
        model.fit_input_statistics(data["observations"], data["actions"])
    rows = rng.integers(0, n, size=(model.members, n))
    arrays = {"obs": data["observations"], "act": data["actions"], "next_obs": data["next_observations"],
              "cost": data["costs"]}
    loss = torch.zeros(())
    for _ in range(max(1, round(epochs * n / batch_size)) if n else 0):
        idx = rows[:, rng.integers(0, n, size=batch_size)]            # (B, batch)
        batch = {k: torch.as_tensor(v[idx], dtype=torch.float32) for k, v in arrays.items()}
        loss = model_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())
