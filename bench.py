"""Speed of every hot path, measured beside a straightforward baseline (docs/performance.md).

Measured in one process: every variant (ours, baseline, the sgemm peak) is timed once per round,
round-robin, and the median over rounds is reported, so that other jobs on the machine slow all
variants alike and ratios stay meaningful. FLOPs are counted with torch.utils.flop_counter
(forward, backward and, for the second-order meta-step, double backward); the FLOP count of our
version is the "useful work", so a baseline's extra work shows up as a lower speed, not as more
GFLOP/s. The peak is float32 sgemm on square matrices, on the threads in use.

    python bench.py               # full: a few minutes
    python bench.py --quick       # seconds
    python bench.py --threads 1
    python bench.py --threads 1 --clock cpu   # CPU time: closer to a quiet machine while others run jobs

The baselines (bench_baselines.py) are written the way common implementations write these steps;
they exist only to be timed against.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import carl
import ensemble
import envs
import mesa
import presets
from bench_baselines import (BaselineSAC, BaselineSafety, ListBuffer, LoopedEnsemble, baseline_meta_step,
                             baseline_phase3_step)
from recovery_rl import Safety, phase3_step, sample_class_balanced
from replay_buffer import ReplayBuffer
from sac import SAC

OBS, ACT = 17, 6  # HalfCheetah sizes
BATCH = 256       # every batch; main() sets it from --batch
TARGETS = {"sac_speedup": 1.3, "meta2_peak_fraction": 0.45, "phase3_overhead": 0.10}


# ----------------------------------------------------------------------------- measurement

@dataclass
class Case:
    """One hot path: our version, optionally a baseline, and what one call does."""
    name: str
    ours: Callable[[], object]
    baseline: Callable[[], object] | None = None
    flops: float = 0.0                     # per call of ours: forward, backward, double backward
    times: dict = field(default_factory=lambda: {"ours": [], "baseline": [], "inside": []})  # s per call, per round
    inside: list | None = None             # [seconds] that ours spent in timed sub-calls (see timed_into)

    def median(self, variant: str = "ours") -> float:
        return statistics.median(self.times[variant]) if self.times[variant] else float("nan")

    def paired(self, other: list[float]) -> float:
        """Median over rounds of other[r] / ours[r]: a ratio of neighbours in time, robust to load drift."""
        return statistics.median(o / t for o, t in zip(other, self.times["ours"])) if other else float("nan")


def timed_into(fn, total: list):
    """fn, adding the seconds each call takes to total[0]: times the updates inside a Phase-3 step."""
    def wrapper(*args, **kwargs):
        start = CLOCK()
        try:
            return fn(*args, **kwargs)
        finally:
            total[0] += CLOCK() - start
    return wrapper


def count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


CLOCK = time.perf_counter  # main() may switch to time.process_time (--clock cpu)


def time_per_call(fn, reps: int) -> float:
    start = CLOCK()
    for _ in range(reps):
        fn()
    return (CLOCK() - start) / reps


def measure(cases: list[Case], rounds: int, seconds_per_sample: float) -> None:
    """Round-robin: each round times every variant of every case once, for about seconds_per_sample."""
    variants = [(case, v) for case in cases for v in ("ours", "baseline") if getattr(case, v) is not None]
    reps = {}
    for case, v in variants:  # warm-up and calibration
        fn = getattr(case, v)
        fn()
        reps[case.name, v] = max(1, round(seconds_per_sample / max(time_per_call(fn, 1), 1e-6)))
    for _ in range(rounds):
        for case, v in variants:
            if case.inside is not None:
                case.inside[0] = 0.0
            case.times[v].append(time_per_call(getattr(case, v), reps[case.name, v]))
            if case.inside is not None and v == "ours":
                case.times["inside"].append(case.inside[0] / reps[case.name, v])


# ----------------------------------------------------------------------------- the hot paths

def halfcheetah_hyperparameters(hidden: int, batch: int) -> mesa.Hyperparameters:
    """The paper's HalfCheetah hyperparameters with hidden x hidden networks and batches of `batch`."""
    hp = mesa.paper_hyperparameters("halfcheetah")
    hp.sac.hidden = hp.recovery.hidden = (hidden, hidden)
    hp.sac.batch_size = hp.recovery.batch_size = hp.meta.batch_size = batch
    return hp


def offline_data(n: int, seed: int = 0, violation_rate: float = 0.05) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"observations": rng.normal(size=(n, OBS)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "costs": (rng.random(n) < violation_rate).astype(np.float32),
            "next_observations": rng.normal(size=(n, OBS)).astype(np.float32),
            "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool)}


def sgemm_case(n: int) -> Case:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return Case(f"sgemm {n}x{n} (peak)", lambda: torch.mm(a, b), flops=2.0 * n**3)


def sac_cases(hp) -> list[Case]:
    cases = []
    for autotune in (False, True):
        agent = SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), dataclasses.replace(hp.sac, autotune=autotune))
        baseline = BaselineSAC(agent)
        batch = ReplayBuffer.from_arrays(offline_data(10_000)).sample(BATCH)
        cases.append(Case("SAC update" + (" (autotune)" if autotune else ""),
                          lambda agent=agent, batch=batch: agent.update(batch),
                          lambda baseline=baseline, batch=batch: baseline.update(batch)))
    return cases


def safety_case(hp, agent: SAC) -> Case:
    safety = Safety(OBS, ACT, -np.ones(ACT), np.ones(ACT), hp.recovery)
    baseline = BaselineSafety(safety)
    batch = safety.sample(ReplayBuffer.from_arrays(offline_data(10_000)))
    policy = safety.composite_policy(agent.policy)

    def ours():
        safety.update_critic(batch, policy)
        safety.update_recovery(batch["obs"])
    return Case("Q_risk + pi_rec update", ours,
                lambda: baseline.update(batch, lambda o: baseline.filtered(o, agent.policy(o))))


def meta_cases(hp, agent: SAC) -> list[Case]:
    train = [offline_data(20_000, seed=j) for j in range(5)]
    cases = []
    for second_order in (True, False):
        cfg = dataclasses.replace(hp.meta, second_order=second_order)
        safety = Safety(OBS, ACT, -np.ones(ACT), np.ones(ACT), hp.recovery)
        baseline = BaselineSafety(safety)
        buffers = [ReplayBuffer.from_arrays(d, seed=j) for j, d in enumerate(train)]
        list_buffers = [ListBuffer(d) for d in train]
        optimizer = torch.optim.Adam(safety.q_risk.parameters(), lr=cfg.outer_lr)  # as mesa.meta_learn
        baseline_optimizer = torch.optim.Adam(baseline.q_risk.parameters(), lr=cfg.outer_lr)
        rng = np.random.default_rng(0)
        order = "second" if second_order else "first"
        cases.append(Case(f"MESA meta-step, {order} order (K=5)",
                          lambda s=safety, b=buffers, c=cfg, o=optimizer: mesa.meta_step(s, b, agent.policy, c, o, rng),
                          lambda s=baseline, b=list_buffers, c=cfg, o=baseline_optimizer: baseline_meta_step(s, b, agent.policy, c, o)))
    return cases


def authors_meta_case(hp, agent: SAC) -> Case:
    """The authors' MESA meta-step (--mesa-variant authors): a 3 x 100 critic of WLinear layers with
    learned inner rates; ours only, timed against the plain critic's meta-step (torch's FLOP counter
    cannot follow autograd.grad into the learned rates, so it has no FLOP count)."""
    train = [offline_data(20_000, seed=j) for j in range(5)]
    recovery = dataclasses.replace(hp.recovery, hidden=(100, 100, 100), layers="wlinear")
    cfg = dataclasses.replace(hp.meta, learn_inner_lr=True, outer_grad_clip=40.0, target="current")
    safety = Safety(OBS, ACT, -np.ones(ACT), np.ones(ACT), recovery)
    buffers = [ReplayBuffer.from_arrays(d, seed=j) for j, d in enumerate(train)]
    rho = mesa.initial_inner_rates(safety.q_risk, cfg.inner_lr)
    optimizer = torch.optim.Adam(safety.q_risk.parameters(), lr=cfg.outer_lr)
    optimizer.add_param_group({"params": list(rho.values()), "lr": cfg.inner_lr_lr})
    rng = np.random.default_rng(0)
    return Case("MESA meta-step, second order, authors' 3 x 100 WLinear critic",
                lambda: mesa.meta_step(safety, buffers, agent.policy, cfg, optimizer, rng, rho))


def phase3_case(hp) -> Case:
    """One Recovery RL step on HalfCheetah, ours and baseline. The network updates inside our step
    (SAC, Q_risk, pi_rec) are timed as they run, so the step's overhead is measured in place: with
    the caches as the environment step and the sampling leave them."""
    env, baseline_env = envs.make_env("halfcheetah"), envs.make_env("halfcheetah")
    agent = SAC(OBS, ACT, env.action_space.low, env.action_space.high, hp.sac)
    safety = Safety(OBS, ACT, env.action_space.low, env.action_space.high, hp.recovery)
    base_agent, base_safety = BaselineSAC(agent), BaselineSafety(safety)
    inside = [0.0]
    agent.update = timed_into(agent.update, inside)
    safety.update_critic = timed_into(safety.update_critic, inside)
    safety.update_recovery = timed_into(safety.update_recovery, inside)
    offline = offline_data(20_000)
    task_buffer = ReplayBuffer(OBS, ACT, 100_000, seed=0)
    task_buffer.add_arrays({k: v[:BATCH] for k, v in offline.items()})
    safety_buffer = ReplayBuffer.from_arrays(offline, 100_000, seed=1)
    base_task_buffer, base_safety_buffer = ListBuffer({k: v[:BATCH] for k, v in offline.items()}), ListBuffer(offline)
    state = {"obs": env.reset(seed=0)[0], "base_obs": baseline_env.reset(seed=0)[0]}
    start = hp.sac.start_steps  # past the random-action phase

    def ours():
        obs, _, _, terminated, truncated, _, _ = phase3_step(env, state["obs"], agent, safety, task_buffer, safety_buffer, start)
        state["obs"] = env.reset()[0] if terminated or truncated else obs

    def baseline():
        obs, done = baseline_phase3_step(baseline_env, state["base_obs"], base_agent, base_safety,
                                         base_task_buffer, base_safety_buffer, BATCH)
        state["base_obs"] = baseline_env.reset()[0] if done else obs
    return Case("Phase-3 step, HalfCheetah", ours, baseline, inside=inside)


def env_case(name: str) -> Case:
    env = envs.make_env(name)
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high
    env.reset(seed=0)

    def step():
        _, _, terminated, truncated, _ = env.step(rng.uniform(low, high).astype(np.float32))
        if terminated or truncated:
            env.reset()
    return Case(f"env step: {name}", step)


def sampling_cases(hp) -> list[Case]:
    data = offline_data(100_000)
    buffer, list_buffer = ReplayBuffer.from_arrays(data, seed=0), ListBuffer(data)
    pos = hp.recovery.pos_fraction
    return [Case(f"ReplayBuffer.sample({BATCH})", lambda: buffer.sample(BATCH), lambda: list_buffer.sample(BATCH)),
            Case(f"sample_class_balanced({BATCH}, {pos})", lambda: sample_class_balanced(buffer, BATCH, pos),
                 lambda: list_buffer.sample_balanced(BATCH, pos))]


def carl_case(name: str, preset: str, baseline: bool = True) -> Case:
    """One MPC step of CARL (State) in env `name` at the preset's planner sizes: CEM whose every
    model call is one batched pass over candidates x particles x members; the baseline loops over
    the members."""
    hp, _ = presets.preset_config(name, preset)
    task = envs.test_task(name)
    env = envs.make_env(name, task)
    obs = env.reset(seed=0)[0]
    agent = carl.CARLAgent(env.observation_space.shape[0], env.action_space.shape[0], env.action_space.low,
                           env.action_space.high, hp.carl, carl.reward_function(name, task), 0, carl.ANGLES.get(name, ()))
    looped = copy.copy(agent)
    looped.model = LoopedEnsemble(agent.model)
    c = hp.carl
    label = (f"CARL plan (one env step), {name}, {preset}: {c.population} x {c.particles} particles x "
             f"H {c.horizon} x {c.iterations} CEM iterations, {c.ensemble} x {c.hidden}")
    return Case(label, lambda: agent.plan(obs, "state"), (lambda: looped.plan(obs, "state")) if baseline else None)


def carl_update_case(name: str, preset: str) -> Case:
    """One Adam step of CARL's ensemble (every member on its own batch), at the preset's sizes."""
    hp, _ = presets.preset_config(name, preset)
    model = ensemble.ProbabilisticEnsemble(OBS, ACT, hp.carl.ensemble, hp.carl.hidden, hp.carl.weight_decays)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.carl.lr)
    data = offline_data(10_000)
    idx = np.random.default_rng(0).integers(0, 10_000, (hp.carl.ensemble, hp.carl.batch_size))
    batch = {"obs": torch.from_numpy(data["observations"][idx]), "act": torch.from_numpy(data["actions"][idx]),
             "next_obs": torch.from_numpy(data["next_observations"][idx]), "cost": torch.from_numpy(data["costs"][idx])}

    def step():
        loss = ensemble.model_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return Case(f"CARL ensemble update, {name} {preset}: {hp.carl.ensemble} x {hp.carl.hidden}, "
                f"{hp.carl.batch_size} per member", step)


# ----------------------------------------------------------------------------- report

def fmt(x: float, spec: str) -> str:
    return "-" if x != x else format(x, spec)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Measure every hot path against a straightforward baseline.")
    parser.add_argument("--quick", action="store_true", help="a few short rounds (seconds)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--rounds", type=int, default=None, help="round-robin rounds (default 15, quick 3)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden width of every network (paper: 256)")
    parser.add_argument("--batch", type=int, default=256, help="every batch size (paper: 256)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time, which leaves out time spent waiting for a core while other "
                             "jobs run (meaningful with --threads 1; with more, spinning threads count too)")
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    rounds = args.rounds or (3 if args.quick else 15)
    seconds = 0.02 if args.quick else 0.15

    global BATCH
    BATCH = args.batch
    hp = halfcheetah_hyperparameters(args.hidden, args.batch)
    peaks = [sgemm_case(1024)] + ([] if args.quick else [sgemm_case(2048)])
    sac = sac_cases(hp)
    agent = SAC(OBS, ACT, -np.ones(ACT), np.ones(ACT), hp.sac)  # the task policy inside Bellman targets
    meta = meta_cases(hp, agent)
    phase3 = phase3_case(hp)
    planners = [carl_case("cartpole", "quick"), carl_case("halfcheetah", "quick")] + \
        ([] if args.quick else [carl_case("halfcheetah", "paper", baseline=False)])
    hot = sac + [safety_case(hp, agent)] + meta + [phase3] + planners + [carl_update_case("halfcheetah", "quick")]
    cases = peaks + hot + [authors_meta_case(hp, agent)] + [env_case(name) for name in envs.ENV_NAMES] + sampling_cases(hp)
    for case in hot:
        case.flops = count_flops(case.ours)
    measure(cases, rounds, seconds)
    updates = Case("  its network updates, timed inside the step", ours=None, flops=phase3.flops)
    updates.times["ours"] = phase3.times["inside"]
    cases.insert(cases.index(phase3) + 1, updates)

    peak_per_round = [max(c.flops / t for c, t in zip(peaks, ts)) for ts in zip(*(c.times["ours"] for c in peaks))]
    peak = statistics.median(peak_per_round)
    load = os.getloadavg()[0]
    busy = load > args.threads + 0.75  # the benchmark's own threads account for about args.threads
    print(f"load average {load:.1f} on {os.cpu_count()} cores" + (" - other jobs shared the machine" if busy else ""))
    print(f"HalfCheetah sizes, 2 x {args.hidden} networks, batches of {BATCH}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, {rounds} rounds round-robin, medians; "
          f"sgemm peak {peak / 1e9:.1f} GFLOP/s (median over rounds)\n")
    print("| hot path | ours (ms, median) | baseline (ms) | speedup | GFLOP per call | GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for c in cases:
        ours, base = c.median("ours"), c.median("baseline")
        speedup = c.paired(c.times["baseline"])
        # GFLOP/s against the peak measured in the same round
        fraction = c.paired([c.flops / p for p in peak_per_round]) if c.flops else float("nan")
        rows[c.name] = {"ours_s": ours, "baseline_s": base, "speedup": speedup, "flops": c.flops,
                        "peak_fraction": fraction}
        print(f"| {c.name} | {ours * 1e3:.3f} | {fmt(base * 1e3, '.3f')} | {fmt(speedup, '.2f')} | "
              f"{fmt(c.flops / 1e9 if c.flops else float('nan'), '.3f')} | {fmt(c.flops / ours / 1e9 if c.flops else float('nan'), '.1f')} | "
              f"{fmt(100 * fraction, '.0f')} |")
    print("\nenvironment steps/s (random actions): " +
          ", ".join(f"{n} {1 / rows[f'env step: {n}']['ours_s']:.0f}" for n in envs.ENV_NAMES))

    overhead = 1 - phase3.paired(updates.times["ours"])  # 1 - (time inside the updates) / step, per round
    print(f"Phase-3 step: {overhead:.1%} of it is outside the network updates (env step, filter, buffers, sampling)")
    print("CARL's planner, seconds per environment step: " +
          ", ".join(f"{c.name.split(':')[0].removeprefix('CARL plan (one env step), ')} {c.median('ours'):.3f}"
                    for c in planners))
    results = {"SAC update >= 1.3x baseline": (rows[sac[0].name]["speedup"], TARGETS["sac_speedup"]),
               "second-order meta-step >= 45% of peak": (rows[meta[0].name]["peak_fraction"], TARGETS["meta2_peak_fraction"]),
               "Phase-3 overhead outside updates <= 10%": (overhead, TARGETS["phase3_overhead"])}
    print()
    for (label, (value, target)), lower_is_better in zip(results.items(), (False, False, True)):
        ok = value <= target if lower_is_better else value >= target
        print(f"{'PASS' if ok else 'MISS'}  {label}: measured {value:.3g}")
    return {"peak_flops": peak, "rows": rows, "targets": results}


if __name__ == "__main__":
    main()
