"""bench.py's quick mode: the output structure and the FLOP counts (no timing assertions)."""
import numpy as np
import torch

import bench
import bench_baselines
from sac import SAC, squashed_gaussian_log_prob


def test_quick_bench_reports_every_hot_path_with_positive_flop_counts(capsys):
    report = bench.main(["--quick", "--rounds", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "| hot path | ours (ms, median) | baseline (ms) | speedup | GFLOP per call | GFLOP/s | % of peak |" in out
    rows = report["rows"]
    meta2, meta1 = rows["MESA meta-step, second order (K=5)"], rows["MESA meta-step, first order (K=5)"]
    for name in ("SAC update", "SAC update (autotune)", "Q_risk + pi_rec update", "Phase-3 step, HalfCheetah"):
        assert rows[name]["flops"] > 0 and rows[name]["ours_s"] > 0 and rows[name]["baseline_s"] > 0
    assert meta2["flops"] > meta1["flops"] > 0  # the double backward is counted
    inside = rows["  its network updates, timed inside the step"]["ours_s"]
    assert 0 < inside < rows["Phase-3 step, HalfCheetah"]["ours_s"]  # the updates are part of the step
    assert all(f"env step: {name}" in rows for name in bench.envs.ENV_NAMES)
    assert report["peak_flops"] > 0
    assert out.count("PASS") + out.count("MISS") == len(report["targets"]) == 3


def test_baseline_sac_samples_the_same_policy_as_ours():
    """The baseline's torch.distributions sampling is the same maths, only written differently."""
    agent = SAC(4, 3, -2 * np.ones(3), 2 * np.ones(3))
    baseline = bench_baselines.BaselineSAC(agent)
    obs = torch.randn(256, 4)
    torch.manual_seed(0)
    action, log_pi = baseline.sample(obs)
    mean, log_std = agent.actor.distribution(obs)
    u = torch.atanh((action - agent.actor.action_bias) / agent.actor.action_scale)
    assert torch.allclose(log_pi, squashed_gaussian_log_prob(u, mean, log_std, agent.actor.action_scale), atol=1e-3)
