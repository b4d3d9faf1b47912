"""Tests of envs.py: API conformance, violation predicates, faults, task effects and seeding."""
import warnings

import gymnasium
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import envs

warnings.filterwarnings("ignore", module="gymnasium")


def rollout(env, n_steps, seed, actions_seed=0, reset_every=None):
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


@pytest.mark.parametrize("name", envs.ENV_NAMES)
def test_cost_on_every_step_and_same_seed_same_trajectory(name):
    n = 300 if name not in ("halfcheetah", "ant") else 150
    env = envs.make_env(name, terminate_on_violation=(name != "maze"))
    a, infos = rollout(env, n, seed=3)
    assert all(i["cost"] in (0.0, 1.0) for i in infos)
    assert all(isinstance(i["cost"], float) for i in infos)
    if envs.HAS_SUCCESS[name]:
        assert all(isinstance(i["success"], bool) for i in infos[1:])
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
        envs.make_env(name, tasks[0]).close()
    assert envs.train_tasks("navigation1", 0) != envs.train_tasks("navigation1", 1)
    bs = np.array([t["b"] for t in envs.train_tasks("navigation2", 0)])
    assert bs.shape == (25, 2) and bs.min() >= 0.5 and bs.max() <= 1.5
    ls = np.array([t["length"] for t in envs.train_tasks("cartpole", 0)])
    assert ls.min() >= 0.4 and ls.max() <= 0.8 and envs.test_task("cartpole")["length"] == 1.0
    zero = [t["torque_scale"].index(0.0) for t in envs.train_tasks("halfcheetah")]
    assert zero == [1, 2, 3, 4] and envs.test_task("halfcheetah")["torque_scale"][5] == 0.0
    k = np.random.default_rng(envs.PARTIAL_POWER_SEED).uniform(0.5, 0.95, 6).round(3)
    assert envs.test_task("halfcheetah", "partial")["torque_scale"] == tuple(k)
    with pytest.raises(ValueError):
        envs.test_task("ant", "partial")


# ----------------------------------------------------------------------------- violations
def test_navigation_violation_sticky_and_termination():
    env = envs.Navigation(layout=1, b=(1.0, 1.0))
    _, info = env.reset(seed=0)
    assert info["cost"] == 0.0                                 # normal start is safe
    assert env.violates(np.array([0.0, 7.0])) and env.violates(np.array([-90.0, 0.0]))
    assert env.violates(np.array([100.0, -6.0])) and not env.violates(np.array([100.0, 0.0]))
    env.reset(options={"start": (10.0, 4.9)})
    obs, _, term, _, info = env.step(np.array([0.0, 1.0]))
    assert info["cost"] == 1.0 and term and 5.0 <= obs[1] <= 10.0
    env = envs.Navigation(layout=1, b=(1.0, 1.0), terminate_on_violation=False)
    env.reset(seed=0, options={"start": (10.0, 4.9)})
    inside, _, term, _, info = env.step(np.array([0.0, 1.0]))
    assert info["cost"] == 1.0 and not term
    for _ in range(3):                                         # inside an obstacle: stays put
        obs, _, term, _, info = env.step(np.array([0.0, -1.0]))
        assert np.array_equal(obs, inside) and info["cost"] == 1.0 and not term
    nav2 = envs.Navigation(layout=2)
    assert nav2.violates(np.array([-25.0, 0.0])) and not nav2.violates(np.array([-35.0, 0.0]))
    assert nav2.reset(seed=1)[1]["cost"] == 0.0


def test_navigation_reward_goal_and_horizon():
    env = envs.make_env("navigation2", {"b": (1.0, 1.0)})
    env.reset(seed=0, options={"start": (3.0, 4.0)})
    _, r, term, _, info = env.step(np.array([-1.0, -1.0]))
    assert r == pytest.approx(-5.0) and not term             # -||s|| before the step
    env.reset(options={"start": (0.5, 0.5)})
    _, _, term, _, info = env.step(np.zeros(2))
    assert term and info["success"] and info["goal"]
    env.reset(seed=0)
    steps = 0
    while True:
        _, _, term, trunc, info = env.step(np.zeros(2, np.float32))
        steps += 1
        if term or trunc:
            break
    assert trunc and not term and steps == 100 and not info["success"]


def test_maze_violation():
    env = envs.Maze(w=(0.0, 0.0), terminate_on_violation=False)
    _, info = env.reset(seed=0)
    assert info["cost"] == 0.0
    assert env.violates(np.array([-0.1, -0.2]))                # inside wall 1
    assert env.violates(np.array([-0.1 + 0.02 + 0.024, -0.2]))  # disc touches wall 1's face
    assert not env.violates(np.array([-0.1 + 0.02 + 0.026, -0.2]))
    assert not env.violates(np.array([-0.1, 0.1]))             # in the gap above wall 1
    assert env.violates(np.array([0.1, 0.25])) and env.violates(np.array([0.1, -0.1]))
    assert not env.violates(np.array([0.1, 0.05]))             # the gap of wall 2
    assert env.violates(np.array([0.28, 0.0])) and env.violates(np.array([0.0, -0.29]))
    assert envs.Maze(w=(0.1, 0.0)).violates(np.array([-0.1, 0.0]))   # gap moved up by w1
    env.reset(options={"start": (0.24, 0.0)})
    _, r, term, _, info = env.step(np.array([0.2, 0.0]))
    assert info["success"] and r == pytest.approx(0.0, abs=1e-9) and not term


@settings(max_examples=40, deadline=None)
@given(x=st.floats(-0.29, 0.29), y=st.floats(-0.29, 0.29), ax=st.floats(-1, 1), ay=st.floats(-1, 1))
def test_maze_point_cannot_cross_a_wall_unseen(x, y, ax, ay):
    env = envs.Maze(w=(0.0, 0.0), terminate_on_violation=False)
    env.reset(options={"start": (x, y)})
    before = env.state.copy()
    obs, _, _, _, info = env.step(np.array([ax, ay]))
    if env.violates(before):
        assert np.array_equal(env.state, before)               # sticky
    else:
        assert np.allclose(obs, before + 0.05 * np.array([ax, ay]), atol=1e-6)
        # a step from free space that lands on the far side of a wall's span touched the wall
        for x0, x1, y0, y1 in env.walls:
            crossed = (before[0] < x0) != (env.state[0] < x0) or (before[0] > x1) != (env.state[0] > x1)
            if crossed and y0 <= env.state[1] <= y1 and y0 <= before[1] <= y1:
                assert info["cost"] == 1.0


def test_cartpole_violation_and_reward():
    env = envs.CartpoleLength(length=0.6)
    obs, info = env.reset(seed=0)
    assert info["cost"] == 0.0 and np.all(np.abs(obs) <= 0.01)
    for s, bad in [((0, 1.6, 0, 0), True), ((0, -1.6, 0, 0), True), ((2.41, 0, 0, 0), True),
                   ((-2.4, 0, 0, 0), True), ((2.3, 1.5, 0, 0), False), ((0, 2 * np.pi, 0, 0), False)]:
        _, info = env.reset(options={"start": s})
        assert info["cost"] == float(bad), s
    env.reset(options={"start": (0, 0, 0, 0)})
    _, r, term, _, info = env.step(np.zeros(1))
    assert r == pytest.approx(1.0, abs=1e-6) and not term and info["cost"] == 0.0
    np.testing.assert_allclose(env.tip(), [0.0, 0.6], atol=1e-6)
    env.reset(options={"start": (0, 1.5, 0, 5.0)})
    _, _, term, _, info = env.step(np.zeros(1))
    assert info["cost"] == 1.0 and term


def _flipped_cheetah(env, rootz):
    q = env.init_qpos.copy()
    q[1], q[2] = rootz, np.pi                                  # lowered, upside down
    env.set_state(q, env.init_qvel)


def test_halfcheetah_violation():
    env = envs.HalfCheetahDisabled()
    _, info = env.reset(seed=0)
    assert info["cost"] == 0.0 and not env.violates()
    _flipped_cheetah(env, -0.55)                               # head pressed onto the floor
    assert env.violates()
    mujoco.mj_forward(env.model, env.data)
    assert envs.geoms_touch(env.model, env.data, "head", "floor")
    _flipped_cheetah(env, -0.45)                               # head just above: falls onto it
    assert not env.violates()
    _, _, term, _, info = env.step(np.zeros(6))
    assert info["cost"] == 1.0 and term
    env = envs.HalfCheetahDisabled(terminate_on_violation=False)
    env.reset(seed=0)
    _flipped_cheetah(env, -0.45)
    _, _, term, _, info = env.step(np.zeros(6))
    assert info["cost"] == 1.0 and not term


def test_ant_violation():
    env = envs.AntDisabled()
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


# ----------------------------------------------------------------------------- faults and tasks
@pytest.mark.parametrize("name,n_act,off", [("halfcheetah", 6, (2,)), ("ant", 8, (4, 5))])
def test_disabled_joint_produces_no_force(name, n_act, off):
    env = envs.make_env(name, {"torque_scale": envs.disabled(set(off), n_act)}).unwrapped
    env.reset(seed=0)
    env.step(np.full(n_act, 0.7, np.float32))
    force = env.data.actuator_force
    for i in range(n_act):
        assert (force[i] == 0.0) == (i in off), (i, force)
    jnt = env.model.actuator_trnid[list(off), 0]
    dofs = env.model.jnt_dofadr[jnt]
    assert np.all(env.data.qfrc_actuator[dofs] == 0.0)


def test_reward_formulas():
    env = envs.HalfCheetahDisabled()
    env.reset(seed=0)
    a = np.full(6, 0.5)
    _, r, _, _, info = env.step(a)
    assert r == pytest.approx(info["x_velocity"] - 0.05 * 6 * 0.25)
    ant = envs.AntDisabled()
    ant.reset(seed=0)
    _, r, _, _, info = ant.step(np.full(8, 0.5))
    assert r == pytest.approx(info["x_velocity"] - 0.005 * 8 * 0.25 + 0.05)


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
