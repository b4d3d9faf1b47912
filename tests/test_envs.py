"""Tests of envs.py: API conformance, the authors' constants, violation predicates, faults,
task effects, the registered test tasks and seeding."""
import warnings

import gymnasium
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
import mujoco_envs
import point_envs

warnings.filterwarnings("ignore", module="gymnasium")


def rollout(env, n_steps, seed, actions_seed=0):
    """Observations, rewards and infos of n_steps random actions (reset on episode end)."""
    rng = np.random.default_rng(actions_seed)
    obs, info = env.reset(seed=seed)
    out = [obs.copy()]
    infos = [info]
    for _ in range(n_steps):
        a = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        out.append(np.append(obs, r))
        infos.append(info)
        if term or trunc:
            obs, info = env.reset()
            out.append(obs.copy())
    return out, infos


def geom_id(model, name):
    return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name)


# ----------------------------------------------------------------------------- API and registry
@pytest.mark.parametrize("name", envs.ENV_NAMES)
def test_check_env_and_registration(name):
    env = envs.make_env(name)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.spec.id == envs.ENV_IDS[name]
    assert env.spec.max_episode_steps == envs.HORIZON[name]
    envs.register_envs()                       # registering twice must not raise
    assert envs.ENV_IDS[name] in gymnasium.registry


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="navigation1, navigation2, maze"):
        envs.make_env("pendulum")
    with pytest.raises(ValueError):
        envs.train_tasks("pendulum")


def _task_of(env) -> dict:
    """The task keywords an env instance was built with, read back from its attributes."""
    u = env.unwrapped
    if isinstance(u, point_envs.Navigation):
        return {"b": tuple(u.b)}
    if isinstance(u, point_envs.Maze):
        return {"w": tuple(u.w)}
    if isinstance(u, mujoco_envs.CartpoleLength):
        return {"length": u.length}
    if isinstance(u, mujoco_envs.AntDisabled):
        return {"leg": float(u.leg)}
    return {"torque_scale": tuple(u.torque_scale)}


@pytest.mark.parametrize("name", envs.ENV_NAMES)
def test_registered_id_builds_the_test_task(name):
    plain = gymnasium.make(envs.ENV_IDS[name])
    assert _task_of(plain) == envs.test_task(name)
    assert _task_of(envs.make_env(name)) == envs.test_task(name)
    assert plain.spec.max_episode_steps == envs.HORIZON[name]


def test_registered_test_tasks_are_the_papers():
    assert gymnasium.make("mesa/Navigation1-v0").unwrapped.b.tolist() == [1.3, 0.7]
    assert gymnasium.make("mesa/Navigation2-v0").unwrapped.b.tolist() == [0.7, 1.3]
    assert gymnasium.make("mesa/Maze-v0").unwrapped.w.tolist() == [-0.08, 0.08]
    assert gymnasium.make("mesa/CartpoleLength-v0").unwrapped.length == 1.0
    hc = gymnasium.make("mesa/HalfCheetahDisabled-v0").unwrapped
    assert hc.torque_scale.tolist() == [1, 1, 1, 1, 1, 0]              # ffoot disabled
    ant = gymnasium.make("mesa/AntDisabled-v0").unwrapped
    assert ant.leg == 3 and ant.torque_scale.tolist() == [0, 0, 1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("name", envs.ENV_NAMES)
def test_cost_on_every_step_and_same_seed_same_trajectory(name):
    n = 300 if name not in ("halfcheetah", "ant") else 150
    env = envs.make_env(name, terminate_on_violation=(name != "maze"))
    a, infos = rollout(env, n, seed=3)
    assert all(i["cost"] in (0.0, 1.0) for i in infos)
    assert all(isinstance(i["cost"], float) for i in infos)
    if envs.HAS_SUCCESS[name]:
        assert all(isinstance(i["success"], bool) for i in infos)
    b, _ = rollout(envs.make_env(name, terminate_on_violation=(name != "maze")), n, seed=3)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    c, _ = rollout(envs.make_env(name), n, seed=4)
    assert not np.array_equal(a[0], c[0])      # another seed, another start


def test_tasks_counts_seeding_and_test_tasks():
    for name in envs.ENV_NAMES:
        tasks = envs.train_tasks(name, seed=0)
        assert len(tasks) == envs.N_TRAIN_TASKS[name]
        assert tasks == envs.train_tasks(name, seed=0)
        assert envs.test_task(name) not in tasks
        for task in tasks + [envs.test_task(name)]:          # stored as float arrays by datasets
            for value in task.values():
                assert np.asarray(value).dtype == np.float64
        envs.make_env(name, tasks[0]).close()
    assert envs.train_tasks("navigation1", 0) != envs.train_tasks("navigation1", 1)
    bs = np.array([t["b"] for t in envs.train_tasks("navigation2", 0)])
    assert bs.shape == (25, 2) and bs.min() >= 0.5 and bs.max() <= 1.5
    ws = np.array([t["w"] for t in envs.train_tasks("maze", 0)])
    assert ws.shape == (20, 2) and ws.min() >= -0.1 and ws.max() <= 0.1
    ls = np.array([t["length"] for t in envs.train_tasks("cartpole", 0)])
    assert ls.min() >= 0.4 and ls.max() <= 0.8 and envs.test_task("cartpole")["length"] == 1.0
    zero = [t["torque_scale"].index(0.0) for t in envs.train_tasks("halfcheetah")]
    assert zero == [1, 2, 3, 4] and envs.test_task("halfcheetah")["torque_scale"][5] == 0.0
    assert envs.train_tasks("ant") == [{"leg": 0.0}, {"leg": 1.0}, {"leg": 2.0}]
    assert envs.test_task("ant") == {"leg": 3.0}
    k = np.random.default_rng(envs.PARTIAL_POWER_SEED).uniform(0.5, 0.95, 6).round(3)
    assert envs.test_task("halfcheetah", "partial")["torque_scale"] == tuple(k)
    with pytest.raises(ValueError):
        envs.test_task("ant", "partial")


def test_stored_task_values_round_trip():
    """datasets stores task values as float64 arrays (0-d for a scalar); they must build the env."""
    for name in envs.ENV_NAMES:
        task = {k: np.asarray(v, np.float64) for k, v in envs.test_task(name).items()}
        env = envs.make_env(name, task)
        assert _task_of(env) == envs.test_task(name)
    with pytest.raises(ValueError, match="leg"):
        mujoco_envs.AntDisabled(leg=4.0)
    with pytest.raises(ValueError, match="leg"):
        mujoco_envs.AntDisabled(leg=1.5)


# ----------------------------------------------------------------------------- time per step
@pytest.mark.parametrize("name,dt", [("cartpole", 0.04), ("halfcheetah", 0.01), ("ant", 0.02)])
def test_seconds_per_step(name, dt):
    env = envs.make_env(name).unwrapped
    assert env.dt == pytest.approx(dt)
    env.reset(seed=0)
    t0 = env.data.time
    for _ in range(5):
        env.step(np.zeros(env.action_space.shape, np.float32))
    assert env.data.time - t0 == pytest.approx(5 * dt)         # simulated time, not a label


def test_locomotion_timesteps_and_observation_sizes():
    hc, ant = mujoco_envs.HalfCheetahDisabled(), mujoco_envs.AntDisabled()
    assert hc.model.opt.timestep == 0.01 and hc.frame_skip == 1
    assert ant.model.opt.timestep == 0.01 and ant.frame_skip == 2
    assert hc.reset(seed=0)[0].shape == (17,) and ant.reset(seed=0)[0].shape == (27,)


# ----------------------------------------------------------------------------- navigation
def test_navigation_violation_sticky_and_termination():
    env = point_envs.Navigation(layout=1, b=(1.0, 1.0))
    _, info = env.reset(seed=0)
    assert info["cost"] == 0.0                                 # normal start is safe
    assert env.violates(np.array([0.0, 7.0])) and env.violates(np.array([-90.0, 0.0]))
    assert env.violates(np.array([100.0, -6.0])) and not env.violates(np.array([100.0, 0.0]))
    env.reset(options={"start": (10.0, 4.9)})
    obs, _, term, _, info = env.step(np.array([0.0, 1.0]))
    assert info["cost"] == 1.0 and term and 5.0 <= obs[1] <= 10.0
    env = point_envs.Navigation(layout=1, b=(1.0, 1.0), terminate_on_violation=False)
    env.reset(seed=0, options={"start": (10.0, 4.9)})
    inside, _, term, _, info = env.step(np.array([0.0, 1.0]))
    assert info["cost"] == 1.0 and not term
    for _ in range(3):                                         # inside an obstacle: stays put
        obs, _, term, _, info = env.step(np.array([0.0, -1.0]))
        assert np.array_equal(obs, inside) and info["cost"] == 1.0 and not term
    nav2 = point_envs.Navigation(layout=2)
    assert nav2.violates(np.array([-25.0, 0.0])) and not nav2.violates(np.array([-35.0, 0.0]))
    assert nav2.reset(seed=1)[1]["cost"] == 0.0


def _nav_step(env, start, action=(0.0, 0.0)):
    env.reset(seed=0, options={"start": start})
    return env.step(np.array(action, np.float32))


def test_navigation_reward_goal_and_success_use_the_state_before_the_step():
    env = envs.make_env("navigation2", {"b": (1.0, 1.0)})
    _, r, term, _, info = _nav_step(env, (3.0, 4.0), (-1.0, -1.0))
    assert r == pytest.approx(-5.0) and not term and not info["success"]    # -||s|| before
    _, _, term, _, info = _nav_step(env, (1.5, 0.0), (-1.0, 0.0))           # ends ~0.5 away
    assert not term and info["success"] and not info["goal"]                # started 1.5 away
    _, _, term, _, info = _nav_step(env, (0.9, 0.0), (1.0, 0.0))            # ends ~1.9 away
    assert term and info["success"] and info["goal"]                        # started 0.9 away
    _, _, term, _, info = _nav_step(env, (3.9, 0.0))
    assert not term and info["success"]                                     # within 4: success
    env.reset(seed=0)
    steps = 0
    while True:
        _, _, term, trunc, info = env.step(np.zeros(2, np.float32))
        steps += 1
        if term or trunc:
            break
    assert trunc and not term and steps == 100 and not info["success"]


def test_navigation_goal_radius_option():
    env = envs.make_env("navigation1", goal_radius=4.0)               # Recovery RL's variant
    assert env.unwrapped.goal_radius == 4.0 and env.unwrapped.b.tolist() == [1.3, 0.7]
    _, _, term, _, info = _nav_step(env, (3.9, 0.0))
    assert term and info["success"] and info["goal"]
    _, _, term, _, info = _nav_step(env, (4.1, 0.0), (-1.0, 0.0))
    assert not term and not info["success"]
    default = envs.make_env("navigation1")
    assert default.unwrapped.goal_radius == point_envs.NAV_GOAL_RADIUS == 1.0
    _, _, term, _, info = _nav_step(default, (3.9, 0.0))
    assert not term and info["success"]
    wide = point_envs.Navigation(goal_radius=6.0)                           # reaching the goal succeeds
    _, _, term, _, info = _nav_step(wide, (5.0, 0.0))
    assert term and info["success"]


# ----------------------------------------------------------------------------- maze
def test_maze_step_size_and_reward():
    env = point_envs.Maze(w=(-0.08, 0.08))
    assert env.action_space.low.tolist() == [pytest.approx(-0.1)] * 2           # the original's bounds
    assert env.action_space.high.tolist() == [pytest.approx(0.1)] * 2
    for a in [(1.0, 1.0), (-1.0, 1.0), (0.5, -0.25), (3.0, -7.0)]:             # in units of the bound
        env.reset(options={"start": (0.0, 0.0)})
        obs, r, term, _, info = env.step(0.1 * np.array(a, np.float32))
        # measured on the original: 0.0247 per axis at full action, linear in the action
        np.testing.assert_allclose(obs, 0.0247 * np.clip(a, -1, 1), atol=2e-4 * np.abs(np.clip(a, -1, 1)).max())
        goal_rms = np.sqrt(np.mean((np.array([0.25, 0.0]) - env.state) ** 2))
        assert r == pytest.approx(-goal_rms) and not term and info["cost"] == 0.0   # after the step
    assert point_envs.MAZE_STEP == pytest.approx(0.0247, abs=1e-4)


def test_maze_walls_border_and_thickness():
    """Contact thresholds of the original's cylinder (radius 0.025) against its 0.01-thick walls
    and the border planes, as MuJoCo gives them for recovery-rl's simple_maze.xml."""
    env = point_envs.Maze(w=(-0.08, 0.08), terminate_on_violation=False)
    _, info = env.reset(seed=0)
    assert info["cost"] == 0.0
    for x0, x1, y0, y1 in env.walls:
        assert x1 - x0 == pytest.approx(0.01)
        assert -0.3 <= y0 < y1 <= 0.3
    assert env.violates(np.array([-0.13, -0.2])) and not env.violates(np.array([-0.1301, -0.2]))
    assert env.violates(np.array([-0.07, -0.2])) and not env.violates(np.array([-0.0699, -0.2]))
    assert env.violates(np.array([0.275, 0.0])) and not env.violates(np.array([0.2749, 0.0]))
    assert env.violates(np.array([0.0, -0.275])) and not env.violates(np.array([0.0, -0.2749]))
    # the four segments: x = -0.1 below y = -0.13 and (w1 < 0) above 0.22; x = 0.1 below 0.03, above 0.28
    assert env.violates(np.array([-0.1, -0.1051])) and not env.violates(np.array([-0.1, -0.1049]))
    assert env.violates(np.array([-0.1, 0.1951])) and not env.violates(np.array([-0.1, 0.1949]))
    assert env.violates(np.array([0.1, 0.0549])) and not env.violates(np.array([0.1, 0.0551]))
    assert env.violates(np.array([0.1, 0.2551])) and not env.violates(np.array([0.1, 0.2549]))
    corner = np.array([-0.095, -0.13]) + np.array([1.0, 1.0]) / np.sqrt(2) * np.array([0.0249, 0.0251])[:, None]
    assert env.violates(corner[0]) and not env.violates(corner[1])     # rounded corner
    assert len(point_envs.maze_walls(-0.08, 0.08)) == 4
    assert len(point_envs.maze_walls(0.05, 0.0)) == 3            # the upper segment at x = -0.1 is outside
    assert point_envs.Maze(w=(0.1, 0.0)).violates(np.array([-0.1, 0.0]))   # gap moved up by w1


def test_maze_goal_ends_the_episode_with_success():
    env = envs.make_env("maze")
    env.reset(seed=0, options={"start": (0.15, 0.0)})
    _, r, term, _, info = env.step(np.array([0.1, 0.0], np.float32))
    assert not term and not info["success"]                   # 0.075 away
    env.reset(seed=0, options={"start": (0.2, 0.01)})
    _, r, term, _, info = env.step(np.array([1.0, -1.0], np.float32))
    assert term and info["success"] and info["cost"] == 0.0 and r > -0.03
    env.reset(options={"start": (0.25 - 0.045, 0.0)})        # ||.|| 0.045, RMS 0.0318: not yet
    _, r, term, _, info = env.step(np.zeros(2, np.float32))
    assert not term and not info["success"] and r == pytest.approx(-0.045 / np.sqrt(2))


def test_maze_full_speed_stops_at_the_wall_face():
    env = point_envs.Maze(w=(-0.08, 0.08), terminate_on_violation=False)
    for x in np.linspace(-0.16, -0.1301, 13):
        env.reset(options={"start": (x, -0.2)})
        while True:
            obs, _, _, _, info = env.step(np.array([0.1, 0.0], np.float32))
            if info["cost"]:
                break
        assert obs[0] == pytest.approx(-0.13, abs=1e-7) and obs[1] == pytest.approx(-0.2)
        assert np.array_equal(env.step(np.array([-0.1, 0.0], np.float32))[0], obs)   # stays put
    # a full-speed diagonal whose end points are both clear but whose path clips wall 1's corner
    corner, radial, along = np.array([-0.095, -0.13]), np.array([1.0, 1.0]) / np.sqrt(2), np.array([1.0, -1.0]) / np.sqrt(2)
    start = corner + 0.024 * radial - 0.0174 * along
    assert not env.violates(start) and not env.violates(start + point_envs.MAZE_STEP * np.array([1.0, -1.0]))
    env.reset(options={"start": start})
    obs, _, _, _, info = env.step(np.array([0.1, -0.1], np.float32))
    assert info["cost"] == 1.0 and np.linalg.norm(env.state - corner) == pytest.approx(point_envs.MAZE_RADIUS)


def _disc_box_distance(p, box):
    x0, x1, y0, y1 = box
    return np.hypot(np.maximum.reduce([x0 - p[:, 0], 0 * p[:, 0], p[:, 0] - x1]),
                    np.maximum.reduce([y0 - p[:, 1], 0 * p[:, 1], p[:, 1] - y1]))


full = st.sampled_from([-1.0, 1.0])
near = st.floats(-0.06, 0.06)


@st.composite
def maze_step_cases(draw):
    """A layout, a start (half of them close to a wall's end, where paths can clip a corner) and
    an action (often full speed)."""
    w1, w2 = draw(st.floats(-0.1, 0.1)), draw(st.floats(-0.1, 0.1))
    if draw(st.booleans()):
        x, y = draw(st.floats(-0.28, 0.28)), draw(st.floats(-0.28, 0.28))
    else:
        x0, x1, y0, y1 = draw(st.sampled_from(point_envs.maze_walls(w1, w2)))
        x = (x0 + x1) / 2 + draw(near)
        y = float(np.clip(draw(st.sampled_from([y0, y1])) + draw(near), -0.28, 0.28))
    return w1, w2, x, y, draw(full | st.floats(-1, 1)), draw(full | st.floats(-1, 1))


@settings(max_examples=400, deadline=None)
@given(case=maze_step_cases())
def test_maze_point_cannot_pass_through_a_wall(case):
    w1, w2, x, y, ax, ay = case
    env = point_envs.Maze(w=(w1, w2), terminate_on_violation=False)
    env.reset(options={"start": (x, y)})
    before = env.state.copy()
    bound = point_envs.MAZE_ACTION_BOUND
    action = (bound * np.array([ax, ay])).astype(np.float32)
    obs, _, _, _, info = env.step(action)
    if env.violates(before):
        assert np.array_equal(env.state, before)                    # touching: stays put
        return
    target = before + point_envs.MAZE_STEP * np.clip(action.astype(np.float64), -bound, bound) / bound
    path = before + np.linspace(0, 1, 801)[:, None] * (env.state - before)
    full_path = before + np.linspace(0, 1, 801)[:, None] * (target - before)
    # the disc never overlaps a wall or leaves the arena on the path it took ...
    for box in env.walls:
        assert _disc_box_distance(path, box).min() >= point_envs.MAZE_RADIUS - 1e-9
    assert np.abs(path).max() <= point_envs.MAZE_HALF - point_envs.MAZE_RADIUS + 1e-9
    # ... it moves along the action's line, and stops short only where the disc touched something
    (mx, my), (tx, ty) = env.state - before, target - before
    assert abs(mx * ty - my * tx) <= 1e-12 and mx * tx + my * ty >= 0.0
    if not np.allclose(env.state, target, atol=1e-12):
        assert info["cost"] == 1.0
    if info["cost"] == 0.0:
        for box in env.walls:
            assert _disc_box_distance(full_path, box).min() > point_envs.MAZE_RADIUS - 1e-9
        np.testing.assert_allclose(obs, target, atol=1e-6)


def test_maze_expert():
    env = envs.make_env("maze").unwrapped                      # the test layout: original waypoints
    first, second = env.expert_waypoints()
    assert first.tolist() == pytest.approx([-0.15, -0.125]) and second.tolist() == pytest.approx([0.15, 0.125])
    env.reset(options={"start": (-0.2, 0.0)})
    np.testing.assert_allclose(env.expert_action(), [0.0525, -0.1], atol=1e-6)  # 1.05 (wp - s), clipped
    env.reset(options={"start": (-0.15, -0.1)})                # past x = -0.151: the second waypoint
    np.testing.assert_allclose(env.expert_action(), [0.1, 0.1])
    env.reset(options={"start": (0.2, 0.05)})                  # past x = 0.149: the goal
    np.testing.assert_allclose(env.expert_action(), [0.0525, -0.0525], atol=1e-6)
    env.reset(options={"start": (-0.2, 0.0)})
    for _ in range(100):
        a = env.expert_action()
        assert a.dtype == np.float32 and np.all(np.abs(a) <= np.float32(0.1))
        _, _, term, _, info = env.step(a)
        if term:
            break
    assert info["success"] and info["cost"] == 0.0
    shifted = point_envs.Maze(w=(0.02, -0.05))                       # waypoints move with the gaps
    first, second = shifted.expert_waypoints()
    assert first.tolist() == pytest.approx([-0.15, -0.125 + 0.1]) and second.tolist() == pytest.approx([0.15, 0.125 - 0.13])


# ----------------------------------------------------------------------------- cartpole
def test_cartpole_physics_constants():
    env = envs.make_env("cartpole").unwrapped
    m = env.model
    assert m.opt.timestep == 0.02 and env.frame_skip == 2
    assert m.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    assert m.dof_damping.tolist() == [1.0, 1.0]
    slider, hinge = m.joint("slider").id, m.joint("hinge").id
    assert m.jnt_limited[slider] and m.jnt_range[slider].tolist() == [-2.5, 2.5]
    assert not m.jnt_limited[hinge]
    assert m.actuator_gear[0, 0] == 100 and m.actuator_ctrlrange[0].tolist() == [-3.0, 3.0]
    pole = geom_id(m, "pole")                                  # from (0, 0, 0) to (0.001, 0, L)
    np.testing.assert_allclose(m.geom_pos[pole], [0.0005, 0.0, 0.5], atol=1e-9)
    assert m.geom_size[pole][:2] == pytest.approx([0.049, np.hypot(0.001, 1.0) / 2])


def test_cartpole_violation_and_reward():
    env = mujoco_envs.CartpoleLength(length=0.6)
    obs, info = env.reset(seed=0)
    assert info["cost"] == 0.0 and np.all(np.abs(obs) <= 0.01)
    for s, bad in [((0, 1.6, 0, 0), True), ((0, -1.6, 0, 0), True), ((2.41, 0, 0, 0), True),
                   ((-2.4, 0, 0, 0), True), ((2.3, 1.5, 0, 0), False),
                   ((0, 2 * np.pi, 0, 0), True)]:                # the raw hinge angle counts
        _, info = env.reset(options={"start": s})
        assert info["cost"] == float(bad), s
    env.reset(options={"start": (0, 0, 0, 0)})
    _, r, term, _, info = env.step(np.zeros(1))
    assert r == pytest.approx(1.0, abs=1e-4) and not term and info["cost"] == 0.0
    env.reset(options={"start": (0, 0, 0, 0)})
    np.testing.assert_allclose(env.tip(), [0.0, 0.6], atol=1e-6)
    env.reset(options={"start": (0, 1.5, 0, 5.0)})
    _, _, term, _, info = env.step(np.zeros(1))
    assert info["cost"] == 1.0 and term


# ----------------------------------------------------------------------------- locomotion
def _flipped_cheetah(env, rootz):
    q = env.init_qpos.copy()
    q[1], q[2] = rootz, np.pi                                  # lowered, upside down
    env.set_state(q, env.init_qvel)


def test_halfcheetah_violation():
    env = mujoco_envs.HalfCheetahDisabled()
    _, info = env.reset(seed=0)
    assert info["cost"] == 0.0 and not env.violates()
    _flipped_cheetah(env, -0.55)                               # head pressed onto the floor
    assert env.violates()
    mujoco.mj_forward(env.model, env.data)
    assert mujoco_envs.geoms_touch(env.model, env.data, "head", "floor")
    _flipped_cheetah(env, -0.45)                               # head just above: falls onto it
    assert not env.violates()
    for _ in range(10):                                        # 0.01 s steps: a few to land
        _, _, term, _, info = env.step(np.zeros(6))
        if info["cost"]:
            break
    assert info["cost"] == 1.0 and term
    env = mujoco_envs.HalfCheetahDisabled(terminate_on_violation=False)
    env.reset(seed=0)
    _flipped_cheetah(env, -0.55)
    _, _, term, _, info = env.step(np.zeros(6))
    assert info["cost"] == 1.0 and not term


def test_ant_violation():
    env = mujoco_envs.AntDisabled()
    obs, info = env.reset(seed=0)
    assert obs.shape == (27,) and info["cost"] == 0.0
    q = env.init_qpos.copy()
    q[2], q[3:7] = 0.2, (0.0, 1.0, 0.0, 0.0)                   # upside down, torso on the floor
    env.set_state(q, env.init_qvel)
    assert env.violates()
    _, _, term, _, info = env.step(np.zeros(8))
    assert info["cost"] == 1.0 and term
    env.reset(seed=0)
    for _ in range(20):                                        # healthy-z termination is off
        _, _, term, _, _ = env.step(np.zeros(8))
    q = env.data.qpos.copy()
    q[2] = 1.5                                                 # "unhealthy" height, no contact
    env.set_state(q, env.data.qvel)
    _, _, term, _, info = env.step(np.zeros(8))
    assert not term and info["cost"] == 0.0


def _actuator_joints(model):
    return [model.joint(model.actuator_trnid[i, 0]).name for i in range(model.nu)]


def test_ant_legs_map_to_the_originals_actuators():
    model = mujoco_envs.AntDisabled().model
    names = _actuator_joints(model)
    assert names[:2] == ["hip_4", "ankle_4"]                    # Gymnasium's order = the original's
    expected = {0: (2, 3), 1: (4, 5), 2: (6, 7), 3: (0, 1)}
    for leg, pair in expected.items():
        assert mujoco_envs.ant_leg_actuators(model, leg) == pair
        assert [names[i] for i in pair] == [f"hip_{leg + 1}", f"ankle_{leg + 1}"]
        ant = envs.make_env("ant", {"leg": float(leg)}).unwrapped
        assert [i for i in range(8) if ant.torque_scale[i] == 0.0] == list(pair)
    test = envs.make_env("ant").unwrapped
    assert [names[i] for i in np.flatnonzero(test.torque_scale == 0)] == ["hip_4", "ankle_4"]
    assert model.body(model.geom_bodyid[geom_id(model, "rightback_leg_geom")]).name == "aux_4"


@pytest.mark.parametrize("leg", [0, 1, 2, 3])
def test_ant_faulty_leg_is_shrunk_on_its_own_model(leg):
    healthy = mujoco_envs.AntDisabled()
    ant = mujoco_envs.AntDisabled(leg=float(leg))
    thigh, shin = (geom_id(ant.model, g) for g in mujoco_envs.ANT_LEGS[leg][2:])
    for g in (thigh, shin):                                    # radius and half-length halved
        np.testing.assert_allclose(ant.model.geom_size[g, :2], healthy.model.geom_size[g, :2] / 2)
    assert healthy.model.geom_size[thigh, 0] == 0.08
    np.testing.assert_allclose(ant.model.geom_pos[shin], healthy.model.geom_pos[thigh])
    others = [i for i in range(ant.model.ngeom) if i not in (thigh, shin)]
    np.testing.assert_array_equal(ant.model.geom_size[others], healthy.model.geom_size[others])
    np.testing.assert_array_equal(ant.model.body_mass, healthy.model.body_mass)
    assert mujoco_envs.AntDisabled().model.geom_size[thigh, 0] == 0.08          # other instances intact
    for env in (healthy, ant):                                 # the simulation uses the new geometry
        env.reset(seed=0)
    body = ant.model.geom_bodyid[shin]                         # shin centred where the thigh's is, in its body
    expected = ant.data.xpos[body] + ant.data.xmat[body].reshape(3, 3) @ healthy.model.geom_pos[thigh]
    np.testing.assert_allclose(ant.data.geom_xpos[shin], expected, atol=1e-12)
    assert not np.allclose(ant.data.geom_xpos[shin], healthy.data.geom_xpos[shin])


@pytest.mark.parametrize("name,task,n_act,off", [
    ("halfcheetah", {"torque_scale": envs.disabled({2}, 6)}, 6, (2,)),
    ("ant", {"leg": 1.0}, 8, (4, 5)), ("ant", {"leg": 3.0}, 8, (0, 1))])
def test_disabled_joint_produces_no_force(name, task, n_act, off):
    env = envs.make_env(name, task).unwrapped
    env.reset(seed=0)
    env.step(np.full(n_act, 0.7, np.float32))
    force = env.data.actuator_force
    for i in range(n_act):
        assert (force[i] == 0.0) == (i in off), (i, force)
    jnt = env.model.actuator_trnid[list(off), 0]
    dofs = env.model.jnt_dofadr[jnt]
    assert np.all(env.data.qfrc_actuator[dofs] == 0.0)


def test_halfcheetah_partial_power_variant():
    env = envs.make_env("halfcheetah", envs.test_task("halfcheetah", "partial")).unwrapped
    env.reset(seed=0)
    env.step(np.ones(6, np.float32))
    np.testing.assert_allclose(env.data.ctrl, envs.PARTIAL_POWER_SCALE)


def test_reward_formulas():
    env = mujoco_envs.HalfCheetahDisabled()
    env.reset(seed=0)
    a = np.full(6, 0.5)
    _, r, _, _, info = env.step(a)
    assert r == pytest.approx(info["x_velocity"] - 0.05 * 6 * 0.25)
    ant = mujoco_envs.AntDisabled()
    ant.reset(seed=0)
    _, r, _, _, info = ant.step(np.full(8, 0.5))
    assert r == pytest.approx(info["x_velocity"] - 0.005 * 8 * 0.25 + 0.05)


# ----------------------------------------------------------------------------- tasks change dynamics
def _next_obs(name, task, start=None, seed=0):
    env = envs.make_env(name, task, terminate_on_violation=False)
    env.reset(seed=seed, options=None if start is None else {"start": start})
    return env.step(np.full(env.action_space.shape, 0.5, np.float32))[0]


@pytest.mark.parametrize("name", envs.ENV_NAMES)
def test_task_parameters_change_dynamics(name):
    tasks = envs.train_tasks(name)
    start = None
    if name == "maze":
        start = (-0.1, -0.05 + tasks[0]["w"][0] + 0.02)   # a point that touches wall 1 for one task but not for the other
        tasks = [tasks[0], {"w": (tasks[0]["w"][0] - 0.05, 0.0)}]
    a, b = _next_obs(name, tasks[0], start), _next_obs(name, tasks[1], start)
    assert np.array_equal(a, _next_obs(name, tasks[0], start))
    assert not np.allclose(a, b)


def test_halfcheetah_builds_without_mujoco_deprecation_output(tmp_path, monkeypatch, capfd):
    """Gymnasium's settotalmass warning neither reaches stderr nor writes MUJOCO_LOG.TXT; other
    MuJoCo warnings still pass through as Python warnings (the callback is restored afterwards)."""
    monkeypatch.chdir(tmp_path)
    envs.make_env("halfcheetah").close()
    assert capfd.readouterr().err == "" and not (tmp_path / "MUJOCO_LOG.TXT").exists()
    assert mujoco.get_mju_user_warning() is None
    with mujoco_envs.settotalmass_accepted(), pytest.warns(UserWarning, match="something else"):
        mujoco.get_mju_user_warning()("something else")
