"""How a safety critic is judged (docs/design.md): AUROC of Q_risk against upcoming violations,
its loss against its Bellman targets, and its level against eps_risk, on a held-out collection, on
D_test and on the transitions Phase 3 visited.

- `auroc`: the area under the ROC curve of scores against binary labels, rank-based
  (Mann-Whitney U), ties counted as one half; written with numpy, no scikit-learn.
- `danger_labels`: a transition is positive when a violation happens at it or within the next
  `horizon` steps of the same rollout (label_horizon: round(1 / (1 - gamma_risk)), the effective
  horizon of the discounted violation probability Q_risk estimates).
- `critic_level`: a critic can rank well yet sit above eps_risk on safe states, so that the filter
  fires everywhere; its median at safe transitions and the shares above eps_risk show it.
- `saturated_share`: a critic can also be stuck. Q_risk = sigmoid(logit) is trained by MSE, whose
  gradient carries sigmoid'(logit) = Q (1 - Q); beyond |logit| = SATURATED_LOGIT that factor is
  under 1e-13, so no optimizer step moves the critic at those inputs.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from recovery_rl import Safety, safety_critic_loss


def auroc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2; nan if a class is empty.

    AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), R_pos the sum of the positives'
    1-based ranks, tied scores sharing their average rank.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)   # average rank of each tie group
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def label_horizon(gamma_risk: float) -> float:
    """round(1 / (1 - gamma_risk)): how many steps ahead a violation makes a transition dangerous
    (Q_risk's effective horizon); unbounded at gamma_risk = 1."""
    return round(1.0 / (1.0 - gamma_risk)) if gamma_risk < 1 else np.inf


def danger_labels(costs, terminals, timeouts, horizon: float) -> np.ndarray:
    """True where a violation happens at the transition or within `horizon` later steps of its rollout.

    Rows are in collection order; a rollout ends at a row with terminal or timeout set.
    """
    labels = np.zeros(len(costs), bool)
    steps_to_violation = np.inf
    for i in range(len(costs) - 1, -1, -1):
        if terminals[i] or timeouts[i]:
            steps_to_violation = np.inf        # the rows after this one belong to another rollout
        if costs[i] > 0:
            steps_to_violation = 0
        labels[i] = steps_to_violation <= horizon
        steps_to_violation += 1
    return labels


def critic_level(q: np.ndarray, unsafe: np.ndarray, eps_risk: float) -> dict:
    """Where Q_risk sits against eps_risk (a critic can rank well yet fire everywhere): its median at
    the safe transitions (danger label 0) and the shares of safe and unsafe transitions above eps_risk."""
    q, unsafe = np.asarray(q), np.asarray(unsafe, bool)
    share = lambda x: float((x > eps_risk).mean()) if len(x) else float("nan")  # noqa: E731
    return {"median_safe": float(np.median(q[~unsafe])) if (~unsafe).any() else float("nan"),
            "safe_above_eps": share(q[~unsafe]), "unsafe_above_eps": share(q[unsafe])}


SATURATED_LOGIT = 30.0      # sigmoid'(30) = 9.4e-14


def saturated_share(logits) -> float:
    """The share of inputs where Q_risk's logit lies beyond +-SATURATED_LOGIT: there the MSE loss
    has no gradient through the sigmoid, so training cannot move Q_risk."""
    return float((np.abs(np.asarray(logits)) > SATURATED_LOGIT).mean())


def critic_quality(safety: Safety, heldout: dict, policy) -> dict:
    """MSE of Q_risk against its Bellman targets, AUROC of Q_risk against upcoming violations, and
    its level against eps_risk (critic_level: median at safe transitions, shares above).

    heldout: transitions in collection order (a held-out set, D_test, or the ones Phase 3 visited).
    """
    batch = {"obs": torch.from_numpy(heldout["observations"]), "act": torch.from_numpy(heldout["actions"]),
             "cost": torch.from_numpy(heldout["costs"]),
             "next_obs": torch.from_numpy(heldout["next_observations"])}
    horizon = label_horizon(safety.cfg.gamma_risk)
    labels = danger_labels(heldout["costs"], heldout["terminals"], heldout["timeouts"], horizon)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)                     # the same target samples for every evaluation
        q = safety.q_risk(batch["obs"], batch["act"])
        loss = safety_critic_loss(q, safety.targets(batch, policy)).item()
    return {"loss": loss, "auroc": auroc(q.numpy(), labels), "positives": int(labels.sum()),
            "transitions": len(labels), "label_horizon": float(horizon),
            **critic_level(q.numpy(), labels, safety.cfg.eps_risk)}


def onpolicy_quality(safety: Safety, start_state: dict, visited: dict, policy, test: dict | None = None) -> dict:
    """Critic quality on the transitions Phase 3 visited: the critic it started from and the final
    one; and the final one's on the method's test-environment data (D_test; RRL-oracle: its own)."""
    final = copy.deepcopy(safety.state_dict())
    scores = {"onpolicy_final": critic_quality(safety, visited, policy)}
    if test is not None:
        scores["d_test_final"] = critic_quality(safety, test, policy)
    safety.load_state_dict(start_state)
    scores["onpolicy_start"] = critic_quality(safety, visited, policy)
    safety.load_state_dict(final)
    return scores
