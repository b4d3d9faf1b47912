"""Watch a finished run's saved agent (final.pt) in the test environment.

    python3 evaluate.py runs/quick/navigation1/mesa/seed0                 # 10 episodes, filter on and off
    python3 evaluate.py RUN_DIR --episodes 20 --picture trajectories.png  # Navigation, Maze: paths drawn
    MUJOCO_GL=egl python3 evaluate.py RUN_DIR --video run.gif             # Cartpole, HalfCheetah, Ant
    python3 evaluate.py RUN_DIR --episodes 20 --before-violation 15      # who acted before each violation

Episodes are deterministic: the task policy acts with its mean action, and (filter on) pi_rec
replaces it wherever Q_risk of the proposal exceeds eps_risk, exactly as in Phase 3. Printed per
mode: mean return, violating episodes, successes, the share of steps pi_rec acted. The picture
draws each episode's path over the obstacles, with Q_risk of the task policy's action as the
background; the video needs an OpenGL backend for MuJoCo's offscreen renderer (MUJOCO_GL=egl or
osmesa) and says so in one line where there is none.

A CARL or CARL-Offline run (final.pt holds its ensemble, no SAC agent) is replayed by its planner:
CEM over the final ensemble with the run's caution (carl.CARLAgent.plan), on raw observations, its
random state seeded per episode (the planner samples). It has no critic: --levels, --risk-at and
--before-violation say so in one line. On quick Cartpole an episode takes about half a minute.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import warnings

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import carl  # noqa: E402
import critic_scores  # noqa: E402
import dataset_files  # noqa: E402
import datasets  # noqa: E402
import envs  # noqa: E402
import experiment  # noqa: E402
import jobspec  # noqa: E402
import point_envs  # noqa: E402
from common import OneLineParser  # noqa: E402
from recovery_rl import RecoveryConfig, Safety  # noqa: E402
from sac import SAC, SACConfig  # noqa: E402

POINT_ENVS = ("navigation1", "navigation2", "maze")
VIDEO_FPS = 30


class SavedAgent:
    """A run's task policy and (all but Unconstrained) Q_risk and pi_rec, with its test environment."""

    def __init__(self, run_dir: str):
        paths = [os.path.join(run_dir, name) for name in ("config.json", "final.pt")]
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} not found: is {run_dir} a finished run's folder?")
        self.run_dir = run_dir
        rerun = f"run it again: move {run_dir} away, then the run.py command that made it"
        try:
            with open(paths[0]) as f:
                self.config = config = json.load(f)
        except ValueError:
            raise jobspec.DamagedFile(f"{paths[0]} is damaged (not JSON): {rerun}") from None
        state = jobspec.load_checkpoint(paths[1], rerun)
        hp = config["hyperparameters"]
        self.env_name = config["env"]
        task = envs.test_task(self.env_name, config["test_variant"])
        self.raw_env = envs.make_env(self.env_name, task, **config.get("env_kwargs", {}))
        self.env = self.raw_env
        self.safety, self.planner = None, None
        if "carl" in state:      # CARL, CARL-Offline: the ensemble and its planner, on raw observations
            reward_fn = carl.reward_function(self.env_name, task)
            self.planner = saved_planner(state["carl"], hp["carl"], self.raw_env, reward_fn, carl.ANGLES.get(self.env_name, ()))
            return
        stats = state.get("obs_scale", "missing")
        if stats == "missing":   # runs saved before final.pt held the scaling
            stats = self._statistics_from_datasets()
        if stats is not None:
            self.env = envs.scaled_observations(self.raw_env, *(np.asarray(s) for s in stats))
        obs_dim, act_dim = self.env.observation_space.shape[0], self.env.action_space.shape[0]
        low, high = self.env.action_space.low, self.env.action_space.high
        self.agent = SAC(obs_dim, act_dim, low, high, SACConfig(**tuple_fields(hp["sac"])))
        self.agent.load_state_dict(state["sac"])
        if state["safety"] is not None:
            self.safety = Safety(obs_dim, act_dim, low, high, RecoveryConfig(**tuple_fields(hp["recovery"])))
            self.safety.load_state_dict(state["safety"])

    def _statistics_from_datasets(self):
        c = self.config
        job = jobspec.Job(c["env"], c["method"], c["seed"], c["preset"], None, c["episodes"], "", c["data_root"],
                      c["test_variant"], "none", c.get("test_fraction", 1.0), c.get("scale_inputs", True))
        return experiment.observation_statistics(job)

    def begin_episode(self, seed: int) -> None:
        """CARL's planner samples: its random state is seeded per episode, and its warm start reset."""
        if self.planner is not None:
            torch.manual_seed(seed)
            self.planner.reset()

    def action(self, obs: np.ndarray, use_filter: bool) -> tuple[np.ndarray, bool]:
        """(executed action, whether pi_rec acted) for one observation; CARL's: its planner's action
        under the run's caution (carl.CARLAgent.plan)."""
        if self.planner is not None:
            return self.planner.plan(obs, self.planner.cfg.risk), False
        a_task = self.agent.act(obs, deterministic=True)
        if not use_filter or self.safety is None:
            return a_task, False
        executed, fired = self.safety.filtered(torch.from_numpy(obs[None].astype(np.float32)),
                                               torch.from_numpy(a_task[None].astype(np.float32)))
        return executed[0].numpy(), bool(fired[0])

    def risk_field(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Q_risk(s, mean task action) over a grid of point-environment positions."""
        grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
        obs = np.stack([self.env.observation(p) for p in grid]) if self.env is not self.raw_env else grid
        with torch.no_grad():
            obs_t = torch.from_numpy(obs.astype(np.float32))
            actions, _ = self.agent.actor(obs_t, True, with_log_prob=False)
            return self.safety.q_risk(obs_t, actions).reshape(len(ys), len(xs)).numpy()

    def risk_at(self, xy, n: int = 5) -> dict:
        """At one point-environment position: Q_risk of the task policy's mean action, of pi_rec's
        action, and the least and most risky actions of an n x n grid over the action box.
        Separates a critic that ranks actions wrongly from a recovery policy that misses its minimum."""
        raw = np.asarray(xy, dtype=np.float64)
        obs = self.env.observation(raw) if self.env is not self.raw_env else raw
        obs_t = torch.from_numpy(np.asarray(obs, dtype=np.float32)[None])
        low, high = self.raw_env.action_space.low, self.raw_env.action_space.high
        axes = [np.linspace(lo, hi, n, dtype=np.float32) for lo, hi in zip(low, high)]
        grid = torch.from_numpy(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(low)))
        with torch.no_grad():
            a_task, _ = self.agent.actor(obs_t, True, with_log_prob=False)
            a_rec = self.safety.pi_rec(obs_t)
            q_grid = self.safety.q_risk(obs_t.expand(len(grid), -1), grid)
            q_task, q_rec = self.safety.q_risk(obs_t, a_task), self.safety.q_risk(obs_t, a_rec)
        best, worst = int(q_grid.argmin()), int(q_grid.argmax())
        return {"task": (a_task[0].numpy(), float(q_task[0])), "pi_rec": (a_rec[0].numpy(), float(q_rec[0])),
                "grid_min": (grid[best].numpy(), float(q_grid[best])), "grid_max": (grid[worst].numpy(), float(q_grid[worst]))}

    def critic_levels(self, data: dict, safety: Safety | None = None) -> dict:
        """Where Q_risk sits against eps_risk on a dataset in collection order (D_test): its median
        at the safe transitions (no violation within round(1 / (1 - gamma_risk)) steps), and the
        shares above eps_risk of the safe ones, of the others, and of pi_rec's action at the safe
        states. A critic can rank states well (AUROC) and still make the filter fire everywhere."""
        safety = safety or self.safety
        obs = np.stack([self.env.observation(o) for o in data["observations"]]) if self.env is not self.raw_env \
            else data["observations"]
        obs_t, act_t = torch.from_numpy(np.asarray(obs, np.float32)), torch.from_numpy(np.asarray(data["actions"], np.float32))
        unsafe = critic_scores.danger_labels(data["costs"], data["terminals"], data["timeouts"],
                                      critic_scores.label_horizon(safety.cfg.gamma_risk))
        with torch.no_grad():
            logits = safety.q_risk.head_logits(obs_t, act_t).amax(0)     # the larger head's, as Q_risk
            q, q_rec = torch.sigmoid(logits).numpy(), safety.q_risk(obs_t, safety.pi_rec(obs_t)).numpy().ravel()
            logits = logits.numpy()
        eps = safety.cfg.eps_risk
        level = critic_scores.critic_level(q, unsafe, eps)
        return {"eps_risk": eps, "median_safe": level["median_safe"], "safe_above": level["safe_above_eps"],
                "unsafe_above": level["unsafe_above_eps"],
                "pi_rec_safe_above": critic_scores.critic_level(q_rec, unsafe, eps)["safe_above_eps"],
                "logits": np.percentile(logits, [0, 50, 100]), "saturated": critic_scores.saturated_share(logits)}

    def phase2_safety(self) -> Safety | None:
        """The critic and pi_rec Phase 3 started from (phase2.pt), or None where the run has none."""
        path = os.path.join(self.run_dir, "phase2.pt")
        if self.safety is None or not os.path.exists(path):
            return None
        safety = copy.deepcopy(self.safety)
        state = jobspec.load_checkpoint(path, "delete it to see the final critic's levels alone")
        safety.load_state_dict(state["safety"])
        return safety

    def d_test(self) -> dict:
        """The run's D_test (all of it, also for a run on a share of it, --test-fraction), from its
        data folder; an error naming the folder if it is not there."""
        c = self.config
        job = datasets.file_jobs(c["env"], c["preset"], c["data_root"], c["test_variant"])[-1]
        if not job.is_cached():
            raise FileNotFoundError(f"D_test of {c['env']} ({c['preset']}) is not in {c['data_root']}: "
                                    f"run python3 datasets.py --env {c['env']} --preset {c['preset']} --root {c['data_root']}")
        return dataset_files.load_dataset(job.path)


def saved_planner(state: dict, config: dict, env, reward_fn, angles: tuple[int, ...]) -> carl.CARLAgent:
    """A CARL run's final ensemble (final.pt's "carl") inside a planner with the run's settings."""
    cfg = carl.CARLConfig(**tuple_fields(config))
    planner = carl.CARLAgent(env.observation_space.shape[0], env.action_space.shape[0], env.action_space.low,
                             env.action_space.high, cfg, reward_fn, seed=0, angles=angles)
    planner.model.load_state_dict(state["model"])
    return planner


def tuple_fields(config: dict) -> dict:
    """A config dataclass's fields from config.json (JSON turned its tuples into lists)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def run_episodes(saved: SavedAgent, episodes: int, use_filter: bool, seed: int, frames: list | None = None,
                 renderer=None) -> dict:
    """Deterministic episodes; their measures and, for point environments, each episode's path."""
    returns, violations, successes, recovery, paths, timelines = [], [], [], [], [], []
    for k in range(episodes):
        saved.begin_episode(seed + k)
        obs, info = saved.env.reset(seed=seed + k)
        path, ret, fired_log, first_violation, done = [position(saved)], 0.0, [], None, False
        while not done:
            action, fired = saved.action(obs, use_filter)
            obs, reward, terminated, truncated, info = saved.env.step(action)
            ret = ret + reward
            fired_log.append(fired)
            if info["cost"] > 0 and first_violation is None:
                first_violation = len(fired_log)     # the steps taken up to and including the violating one
            path.append(position(saved))
            if renderer is not None and k == 0:
                renderer.update_scene(saved.raw_env.unwrapped.data, camera=tracking_camera(saved))
                frames.append(renderer.render())
            done = terminated or truncated
        violated = first_violation is not None
        returns.append(ret), violations.append(violated), recovery.append(np.mean(fired_log))
        successes.append(float(info.get("success", np.nan)))
        paths.append((np.array(path), violated)), timelines.append((fired_log, first_violation))
    return {"return": float(np.mean(returns)), "violations": int(np.sum(violations)),
            "successes": float(np.nansum(successes)) if envs.HAS_SUCCESS[saved.env_name] else None,
            "recovery_fraction": float(np.mean(recovery)), "paths": paths, "timelines": timelines}


def steps_before_violation(fired_log: list, first_violation: int | None, k: int) -> str | None:
    """The last k steps up to and including an episode's first violating one, a character per step:
    '#' where pi_rec acted, '.' where the task policy did; None if the episode had no violation. Shows
    whether the filter warned early enough to act, or fired only as the violation came, or not at all."""
    if first_violation is None:
        return None
    return "".join("#" if fired else "." for fired in fired_log[:first_violation][-k:])


def warning_steps(before: str) -> int:
    """How many steps pi_rec had been acting, without a break, when the violation came."""
    return len(before) - len(before.rstrip("#"))


def print_steps_before_violation(saved: SavedAgent, episodes: int, seed: int, k: int) -> None:
    """Deterministic episodes with the filter on; for each violating one, who acted in its last k
    steps, and how long pi_rec had been acting without a break when the violation came."""
    timelines = run_episodes(saved, episodes, True, seed)["timelines"]
    befores = [b for b in (steps_before_violation(log, at, k) for log, at in timelines) if b is not None]
    print(f"{saved.env_name} {saved.config['method']} seed {saved.config['seed']}, filter on: {len(befores)} of "
          f"{episodes} episodes violate; the last {k} steps up to each violation (# pi_rec acted, . task policy):")
    for before in befores:
        print(f"  {before:>{k}s}  pi_rec acting for the last {warning_steps(before)} steps")
    if befores:
        print(f"  median run of pi_rec up to the violation: {np.median([warning_steps(b) for b in befores]):g} steps")


def position(saved: SavedAgent):
    """The point's (x, y) in the point environments; None elsewhere."""
    return saved.raw_env.unwrapped.state.copy() if saved.env_name in POINT_ENVS else None


def obstacles(env_name: str) -> tuple:
    """The boxes (x0, x1, y0, y1) a point must not touch, in the test task."""
    if env_name == "maze":
        return point_envs.maze_walls(*envs.test_task("maze")["w"])
    return point_envs.NAV_OBSTACLES[1 if env_name == "navigation1" else 2]


def plot_paths(path: str, saved: SavedAgent, results: dict) -> None:
    """One panel per mode: the paths over the obstacles, Q_risk of the task policy's action behind."""
    maze = saved.env_name == "maze"
    lim = (-point_envs.MAZE_HALF, point_envs.MAZE_HALF, -point_envs.MAZE_HALF, point_envs.MAZE_HALF) if maze else (-90, 20, -20, 20)
    if saved.env_name == "navigation2":
        lim = (-60, 10, -25, 25)
    goal = point_envs.MAZE_GOAL if maze else np.zeros(2)
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results) + 1, 4.4), squeeze=False,
                             layout="constrained")
    for ax, (mode, result) in zip(axes[0], results.items()):
        if saved.safety is not None:
            xs, ys = np.linspace(lim[0], lim[1], 120), np.linspace(lim[2], lim[3], 90)
            image = ax.imshow(saved.risk_field(xs, ys), origin="lower", extent=lim, vmin=0, vmax=1,
                              cmap="Greys", aspect="auto")
        for x0, x1, y0, y1 in obstacles(saved.env_name):
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, color="tab:red", alpha=0.6))
        for points, violated in result["paths"]:
            ax.plot(points[:, 0], points[:, 1], color="tab:orange" if violated else "tab:blue", lw=1)
            ax.plot(*points[0], "k.", ms=4)
        ax.plot(*goal, "g*", ms=12)
        ax.set(xlim=lim[:2], ylim=lim[2:], xlabel="x", ylabel="y",
               title=f"{mode}: {result['violations']} of {len(result['paths'])} violate")
    if saved.safety is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label="Q_risk of the task policy's mean action")
    fig.suptitle(f"{saved.env_name}, {saved.config['method']} seed {saved.config['seed']}: blue safe, "
                 "orange violating, green star the goal", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tracking_camera(saved: SavedAgent) -> str | int:
    """Gymnasium's camera that follows the body where the model has one, else the free camera."""
    model = saved.raw_env.unwrapped.model
    names = [model.camera(i).name for i in range(model.ncam)]
    return "track" if "track" in names else -1


def make_renderer(saved: SavedAgent, size: int = 320):
    """MuJoCo's offscreen renderer for the env's model; a RuntimeError naming the fix where no GL works."""
    import mujoco
    try:
        with warnings.catch_warnings():   # glfw warns on stderr before it fails
            warnings.simplefilter("ignore")
            return mujoco.Renderer(saved.raw_env.unwrapped.model, size, size)
    except Exception as e:   # the GL backends raise several types
        raise RuntimeError(f"no OpenGL backend for MuJoCo's offscreen renderer ({type(e).__name__}); "
                           "set MUJOCO_GL=egl (GPU or EGL) or MUJOCO_GL=osmesa (software)") from None


def main(argv=None) -> None:
    parser = OneLineParser(description="Evaluate a finished run's saved agent (see the module docstring).")
    parser.add_argument("run_dir", help="a run's folder: <out>/<config>/<env>/<method>/seed<k>")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per mode (default: 10)")
    parser.add_argument("--seed", type=int, default=10_000, help="first episode's reset seed")
    parser.add_argument("--picture", default=None, help="PNG of the paths (Navigation 1, 2, Maze)")
    parser.add_argument("--video", default=None, help="GIF of the first filtered episode (Cartpole, HalfCheetah, Ant)")
    parser.add_argument("--risk-at", nargs=2, type=float, metavar=("X", "Y"), default=None,
                        help="print Q_risk at this position for the task policy's action, pi_rec's, and the "
                             "least and most risky of a 5 x 5 action grid (point environments), then stop")
    parser.add_argument("--levels", action="store_true",
                        help="print where Q_risk sits against eps_risk on D_test, for the critic Phase 3 "
                             "started from (phase2.pt) and the final one, then stop")
    parser.add_argument("--before-violation", type=int, default=None, metavar="K",
                        help="with the filter on, print for each violating episode who acted in the K steps "
                             "up to the violation (# pi_rec, . task policy), then stop")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.before_violation is not None and args.before_violation < 1:
        parser.error(f"--before-violation must be >= 1, got {args.before_violation}")
    torch.set_num_threads(1)
    try:
        saved = SavedAgent(args.run_dir)
        if args.picture and saved.env_name not in POINT_ENVS:
            parser.error(f"--picture draws the point environments; {saved.env_name} has --video")
        if args.video and saved.env_name in POINT_ENVS:
            parser.error(f"--video films the MuJoCo environments; {saved.env_name} has --picture")
        for flag, given in (("--levels", args.levels), ("--before-violation", args.before_violation)):
            if given and saved.safety is None:
                parser.error(f"{flag} needs a run with a critic, not {saved.config['method']}")
        test = saved.d_test() if args.levels else None
        phase2 = saved.phase2_safety() if args.levels else None
        if args.risk_at and (saved.env_name not in POINT_ENVS or saved.safety is None):
            parser.error(f"--risk-at needs a point environment's run with a critic, not {saved.env_name} "
                         f"{saved.config['method']}")
        renderer, frames = (make_renderer(saved), []) if args.video else (None, None)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if args.levels:
        print(f"Q_risk on D_test ({len(test['rewards'])} transitions); safe: no violation within round(1 / (1 - gamma_risk)) steps")
        for name, safety in (("after Phase 2", phase2), ("final", saved.safety)):
            if safety is not None:
                r = saved.critic_levels(test, safety)
                print(f"  {name:13s} median at safe {r['median_safe']:.3f}; above eps_risk {r['eps_risk']:g}: "
                      f"safe {r['safe_above']:.1%}, unsafe {r['unsafe_above']:.1%}, pi_rec's action at safe {r['pi_rec_safe_above']:.1%}")
                print(f"  {'':13s} logit min / median / max {' / '.join(f'{v:.1f}' for v in r['logits'])}; "
                      f"{r['saturated']:.1%} saturated (|logit| > {critic_scores.SATURATED_LOGIT:g}: no gradient there)")
        return
    if args.before_violation:
        print_steps_before_violation(saved, args.episodes, args.seed, args.before_violation)
        return
    if args.risk_at:
        print(f"Q_risk at {tuple(args.risk_at)}:")
        for name, (action, q) in saved.risk_at(args.risk_at).items():
            print(f"  {name:8s} action {np.array2string(action, precision=3)}  Q_risk {q:.3f}")
        return
    modes = {"filter on": True, "filter off": False} if saved.safety is not None else {"task policy": False}
    if saved.planner is not None:
        modes = {"planner": False}
    results = {mode: run_episodes(saved, args.episodes, on, args.seed, frames if on or len(modes) == 1 else None,
                                  renderer if (on or len(modes) == 1) else None)
               for mode, on in modes.items()}
    kind = f"episodes, CARL's planner (risk {saved.planner.cfg.risk}) seeded per episode" if saved.planner is not None \
        else "deterministic episodes"
    print(f"{saved.env_name} {saved.config['method']} seed {saved.config['seed']}, {args.episodes} {kind}:")
    for mode, r in results.items():
        success = "-" if r["successes"] is None else f"{r['successes']:.0f}"
        acted = "" if saved.planner is not None else f"  pi_rec acted on {r['recovery_fraction']:.0%} of steps"
        print(f"  {mode:11s} return {r['return']:9.1f}  violating episodes {r['violations']:3d}  successes {success:>3s}{acted}")
    if args.picture:
        plot_paths(args.picture, saved, results)
        print(f"picture: {args.picture}")
    if args.video:
        import imageio
        imageio.mimsave(args.video, frames, duration=1 / VIDEO_FPS, loop=0)
        print(f"video: {args.video} ({len(frames)} frames)")


if __name__ == "__main__":
    main(sys.argv[1:])
