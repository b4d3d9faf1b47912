"""The six MESA environments (SPEC section 7) as gymnasium.Env classes, plus task sampling.

Every env returns the 5-tuple API, puts info["cost"] in {0.0, 1.0} on every step (and in the reset
info), and takes a `terminate_on_violation` switch: True ends the episode on a violation
(terminated=True, used for learning); False lets it go on (data collection, as in the paper).
Task parameters (B matrix, maze gap offsets, pole length, per-actuator torque scales) go in through
the constructor and never appear in the observation. `info["success"]` exists where the paper
defines success (navigation, maze, cartpole): on every step it holds the success predicate for the
episode so far, so its value on an episode's last step is the episode's success.

| name        | class                  | task keyword                    | horizon |
|-------------|------------------------|---------------------------------|---------|
| navigation1 | Navigation(layout=1)   | b = (b1, b2), B = diag(b)       | 100     |
| navigation2 | Navigation(layout=2)   | b                               | 100     |
| maze        | Maze                   | w = (w1, w2), the gap offsets   | 100     |
| cartpole    | CartpoleLength         | length = L (metres)             | 200     |
| halfcheetah | HalfCheetahDisabled    | torque_scale, 6 values in [0,1] | 1000    |
| ant         | AntDisabled            | torque_scale, 8 values in [0,1] | 1000    |

Choices where the papers are silent, and deviations from the authors' code:
- Navigation / Maze: a step moves the point to s'; the cost is C(s') (s' inside an obstacle box /
  the disc touching a wall or the border). "Inside an obstacle the point stays put": a point that is
  already in violation does not move (so with terminate_on_violation=False it stays in the box and
  every later step costs 1). The cost is thus a function of the next state only (SPEC section 1).
  Navigation reward -||s|| uses the state before the step; Maze reward -||s' - goal|| the state
  after it. The maze is pure numpy geometry (the original used a MuJoCo point mass); it has no
  noise; a step moves at most 0.05 per axis, less than a wall's 0.09 swept width, so the point
  cannot tunnel through a wall. Maze starts that touch a wall are redrawn.
- Cartpole: built in memory from an XML string (no file). Physics timestep 0.01 s, frame skip 2,
  so one env step is dt = 0.02 s. theta = 0 is upright; the violation uses cos(theta) < 0 (i.e.
  |theta| > pi/2 after wrapping to (-pi, pi]) so a pole that spun a full turn is not "upright".
  Success is the paper's episode-level "return > 160"; rewards are >= 0, so "return so far > 160"
  on the last step is the episode's success.
- HalfCheetah / Ant: subclasses of Gymnasium's v5 envs (unmodified models). A fault is a
  per-actuator torque scale multiplying the action before it reaches MuJoCo (0 = disabled joint);
  the control cost uses the commanded action. Violation: the named geom pair is in MuJoCo's contact
  list, recomputed on the post-step state (mj_kinematics + mj_collision; the list includes pairs
  within the geom margin, 1 cm for the Ant). Ant: Gymnasium's healthy-z termination is turned off
  (terminate_when_unhealthy=False) and its contact cost dropped; the torso-floor contact is the only
  thing that ends an episode early. Ant "leg i" is the actuator pair (2i, 2i+1) in the model's
  actuator order: leg 0 = hip_4/ankle_4 (body "right_back_leg"), 1 = hip_1/ankle_1
  ("front_left_leg"), 2 = hip_2/ankle_2 ("front_right_leg"), 3 = hip_3/ankle_3 ("back_leg").
- Observations: float32 for the point envs, float64 for the MuJoCo ones (Gymnasium's convention).
"""
from __future__ import annotations

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

ENV_NAMES = ("navigation1", "navigation2", "maze", "cartpole", "halfcheetah", "ant")
ENV_IDS = {
    "navigation1": "mesa/Navigation1-v0", "navigation2": "mesa/Navigation2-v0",
    "maze": "mesa/Maze-v0", "cartpole": "mesa/CartpoleLength-v0",
    "halfcheetah": "mesa/HalfCheetahDisabled-v0", "ant": "mesa/AntDisabled-v0",
}
HORIZON = {"navigation1": 100, "navigation2": 100, "maze": 100, "cartpole": 200,
           "halfcheetah": 1000, "ant": 1000}
HAS_SUCCESS = {"navigation1": True, "navigation2": True, "maze": True, "cartpole": True,
               "halfcheetah": False, "ant": False}

# HalfCheetah partial power loss (paper 6.2): k ~ U(0.5, 0.95) per joint, drawn once with
# np.random.default_rng(2021).uniform(0.5, 0.95, 6), rounded to 3 decimals (checked by a test).
PARTIAL_POWER_SEED = 2021
PARTIAL_POWER_SCALE = (0.841, 0.924, 0.767, 0.643, 0.782, 0.516)


def _validate_name(name: str) -> None:
    if name not in ENV_NAMES:
        raise ValueError(f"unknown environment {name!r}; valid names: {', '.join(ENV_NAMES)}")


# ----------------------------------------------------------------------------- point envs
# Obstacles as axis-aligned boxes (x_min, x_max, y_min, y_max).
NAV_OBSTACLES = {
    1: ((-100.0, 150.0, 5.0, 10.0), (-100.0, -80.0, -10.0, 10.0), (-100.0, 150.0, -10.0, -5.0)),
    2: ((-30.0, -20.0, -7.5, 7.5),),
}


def in_boxes(xy: np.ndarray, boxes) -> bool:
    """True if the point lies in (or on the border of) any box."""
    x, y = float(xy[0]), float(xy[1])
    return any(x0 <= x <= x1 and y0 <= y <= y1 for x0, x1, y0, y1 in boxes)


class _PointEnv(gymnasium.Env):
    """Shared plumbing of the 2-D point envs: state, start options, cost and termination."""

    metadata = {"render_modes": []}

    def __init__(self, terminate_on_violation: bool = True):
        self.terminate_on_violation = terminate_on_violation
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.state = np.zeros(2)

    def violates(self, xy: np.ndarray) -> bool:
        raise NotImplementedError

    def reset(self, *, seed=None, options=None):
        """options={"start": (x, y)} starts there exactly (used for data collection)."""
        super().reset(seed=seed)
        if options is not None and "start" in options:
            self.state = np.array(options["start"], dtype=np.float64).reshape(2)
        else:
            self.state = self._sample_start()
        cost = float(self.violates(self.state))
        return self.state.astype(np.float32), {"cost": cost, "success": self._success()}


class Navigation(_PointEnv):
    """s' = A s + B a + 0.05 N(0, I), A = I, B = diag(b); goal the origin (Recovery RL nav 1/2)."""

    def __init__(self, layout: int = 1, b=(1.0, 1.0), terminate_on_violation: bool = True):
        super().__init__(terminate_on_violation)
        self.layout, self.b = layout, np.array(b, dtype=np.float64).reshape(2)
        self.boxes = NAV_OBSTACLES[layout]

    def violates(self, xy):
        return in_boxes(xy, self.boxes)

    def _sample_start(self):
        return np.array([-50.0, 0.0]) + self.np_random.standard_normal(2)

    def _success(self):
        return bool(np.linalg.norm(self.state) < 4.0)

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        reward = -float(np.linalg.norm(self.state))          # reward of the state before the step
        if not self.violates(self.state):                     # inside an obstacle: stays put
            self.state = self.state + self.b * a + 0.05 * self.np_random.standard_normal(2)
        cost = float(self.violates(self.state))
        at_goal = bool(np.linalg.norm(self.state) < 1.0)
        terminated = at_goal or (cost > 0 and self.terminate_on_violation)
        info = {"cost": cost, "success": self._success() and cost == 0.0, "goal": at_goal}
        return self.state.astype(np.float32), reward, terminated, False, info


MAZE_GOAL = np.array([0.25, 0.0])
MAZE_RADIUS, MAZE_HALF, MAZE_WALL = 0.025, 0.3, 0.04


def maze_walls(w1: float, w2: float):
    """The maze's wall boxes (x_min, x_max, y_min, y_max) for gap offsets w1, w2."""
    h = MAZE_WALL / 2
    return ((-0.1 - h, -0.1 + h, -MAZE_HALF, -0.05 + w1),
            (0.1 - h, 0.1 + h, -MAZE_HALF, -0.05 + w2),
            (0.1 - h, 0.1 + h, 0.2 + w2, MAZE_HALF))


class Maze(_PointEnv):
    """A disc of radius 0.025 moving 0.05 a per step in [-0.3, 0.3]^2 past two walls with gaps."""

    def __init__(self, w=(0.0, 0.0), terminate_on_violation: bool = True):
        super().__init__(terminate_on_violation)
        self.w = np.array(w, dtype=np.float64).reshape(2)
        self.walls = maze_walls(*self.w)

    def violates(self, xy):
        x, y = float(xy[0]), float(xy[1])
        if max(abs(x), abs(y)) >= MAZE_HALF - MAZE_RADIUS:            # touches the border
            return True
        for x0, x1, y0, y1 in self.walls:                             # disc-box distance
            dx, dy = max(x0 - x, 0.0, x - x1), max(y0 - y, 0.0, y - y1)
            if dx * dx + dy * dy <= MAZE_RADIUS ** 2:
                return True
        return False

    def _sample_start(self):
        while True:                                                    # redraw starts on a wall
            s = self.np_random.uniform([-0.22, -0.22], [-0.13, 0.22])
            if not self.violates(s):
                return s

    def _success(self):
        return bool(np.linalg.norm(self.state - MAZE_GOAL) < 0.03)

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if not self.violates(self.state):
            self.state = self.state + 0.05 * a
        cost = float(self.violates(self.state))
        reward = -float(np.linalg.norm(self.state - MAZE_GOAL))
        terminated = cost > 0 and self.terminate_on_violation
        info = {"cost": cost, "success": self._success() and cost == 0.0}
        return self.state.astype(np.float32), reward, terminated, False, info


# ----------------------------------------------------------------------------- cartpole
CARTPOLE_XML = """
<mujoco model="cartpole_length">
  <compiler inertiafromgeom="true"/>
  <option timestep="0.01" integrator="RK4" gravity="0 0 -9.81"/>
  <default><joint damping="0.05"/><geom contype="0" conaffinity="0"/></default>
  <worldbody>
    <body name="cart">
      <joint name="slider" type="slide" axis="1 0 0"/>
      <geom name="cart" type="capsule" size="0.1 0.1" quat="0.707107 0 0.707107 0"/>
      <body name="pole">
        <joint name="hinge" type="hinge" axis="0 1 0"/>
        <geom name="pole" type="capsule" fromto="0 0 0 0 0 {length}" size="0.049"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor name="slide" joint="slider" gear="100" ctrllimited="true" ctrlrange="-3 3"/>
  </actuator>
</mujoco>
"""


class CartpoleLength(gymnasium.Env):
    """Balance a pole of length L on a cart; obs [x, theta, x', theta'], action force in [-3, 3]."""

    metadata = {"render_modes": []}
    frame_skip = 2

    def __init__(self, length: float = 0.6, terminate_on_violation: bool = True):
        self.length = float(length)
        self.terminate_on_violation = terminate_on_violation
        self.model = mujoco.MjModel.from_xml_string(CARTPOLE_XML.format(length=self.length))
        self.data = mujoco.MjData(self.model)
        self.dt = self.model.opt.timestep * self.frame_skip
        self.observation_space = spaces.Box(-np.inf, np.inf, (4,), np.float64)
        self.action_space = spaces.Box(-3.0, 3.0, (1,), np.float32)
        self.episode_return = 0.0

    def _obs(self):
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def tip(self) -> np.ndarray:
        """Pole tip (x, z); theta = 0 is upright, positive theta leans towards +x."""
        x, theta = self.data.qpos
        return np.array([x + self.length * np.sin(theta), self.length * np.cos(theta)])

    def violates(self) -> bool:
        x, theta = self.data.qpos
        return bool(np.cos(theta) < 0.0 or abs(x) >= 2.4)

    def reset(self, *, seed=None, options=None):
        """options={"start": [x, theta, x', theta']} starts there exactly."""
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        if options is not None and "start" in options:
            s = np.asarray(options["start"], dtype=np.float64).reshape(4)
        else:
            s = self.np_random.uniform(-0.01, 0.01, 4)
        self.data.qpos[:], self.data.qvel[:] = s[:2], s[2:]
        mujoco.mj_forward(self.model, self.data)
        self.episode_return = 0.0
        return self._obs(), {"cost": float(self.violates()), "success": False}

    def step(self, action):
        self.data.ctrl[:] = np.clip(np.asarray(action, dtype=np.float64).reshape(1), -3.0, 3.0)
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        # r = exp(-||ee - (0, L)||^2 / L^2) on the state after the step
        err = self.tip() - np.array([0.0, self.length])
        reward = float(np.exp(-err @ err / self.length ** 2))
        self.episode_return += reward
        cost = float(self.violates())
        terminated = cost > 0 and self.terminate_on_violation
        info = {"cost": cost, "success": self.episode_return > 160.0}
        return self._obs(), reward, terminated, False, info


# ----------------------------------------------------------------------------- locomotion
def geoms_touch(model, data, geom_a: str, geom_b: str) -> bool:
    """True if the two named geoms are in MuJoCo's current contact list."""
    a = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, geom_a)
    b = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, geom_b)
    g1, g2 = data.contact.geom1[: data.ncon], data.contact.geom2[: data.ncon]
    return bool(np.any(((g1 == a) & (g2 == b)) | ((g1 == b) & (g2 == a))))


class _FaultMixin:
    """Per-actuator torque scales, a contact violation and the MESA rewards for v5 locomotion."""

    violation_geoms: tuple[str, str]

    def _init_fault(self, torque_scale, terminate_on_violation):
        self.torque_scale = np.array(torque_scale, dtype=np.float64).reshape(self.model.nu)
        self.terminate_on_violation = terminate_on_violation

    def violates(self) -> bool:
        """C(s) on the current qpos: recompute positions and contacts, then look up the pair."""
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_collision(self.model, self.data)
        return geoms_touch(self.model, self.data, *self.violation_geoms)

    def _reward(self, x_velocity: float, action) -> float:
        raise NotImplementedError

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        xy_before = self.data.body("torso").xpos[:2].copy()
        self.do_simulation(action * self.torque_scale, self.frame_skip)   # faulty actuators
        cost = float(self.violates())                    # also brings xpos up to the new qpos
        x_velocity = (self.data.body("torso").xpos[0] - xy_before[0]) / self.dt
        terminated = cost > 0 and self.terminate_on_violation
        info = {"cost": cost, "x_velocity": x_velocity, "x_position": self.data.qpos[0]}
        return self._get_obs(), self._reward(x_velocity, action), terminated, False, info

    def _get_reset_info(self):
        return {"cost": float(self.violates()), "x_position": self.data.qpos[0]}


class HalfCheetahDisabled(_FaultMixin, HalfCheetahEnv):
    """HalfCheetah-v5 with faulty joints; violation = "head" touches "floor" (it flipped over)."""

    violation_geoms = ("head", "floor")

    def __init__(self, torque_scale=(1.0,) * 6, terminate_on_violation: bool = True, **kwargs):
        HalfCheetahEnv.__init__(self, **kwargs)
        self._init_fault(torque_scale, terminate_on_violation)

    def _reward(self, x_velocity, action):
        return float(x_velocity - 0.05 * np.sum(action ** 2))        # [code]


class AntDisabled(_FaultMixin, AntEnv):
    """Ant-v5 (27-dim obs, no contact forces) with faulty legs; violation = torso on the floor."""

    violation_geoms = ("torso_geom", "floor")

    def __init__(self, torque_scale=(1.0,) * 8, terminate_on_violation: bool = True, **kwargs):
        kwargs = {"include_cfrc_ext_in_observation": False, "terminate_when_unhealthy": False,
                  **kwargs}
        AntEnv.__init__(self, **kwargs)
        self._init_fault(torque_scale, terminate_on_violation)

    def _reward(self, x_velocity, action):
        return float(x_velocity - 0.005 * np.sum(action ** 2) + 0.05)  # [code]


def disabled(joints, n: int) -> tuple[float, ...]:
    """Torque-scale vector of n actuators with the given actuator indices set to 0."""
    return tuple(0.0 if i in joints else 1.0 for i in range(n))


# ----------------------------------------------------------------------------- registry and tasks
_ENTRY_POINTS = {
    "navigation1": (Navigation, {"layout": 1}), "navigation2": (Navigation, {"layout": 2}),
    "maze": (Maze, {}), "cartpole": (CartpoleLength, {}),
    "halfcheetah": (HalfCheetahDisabled, {}), "ant": (AntDisabled, {}),
}


def register_envs() -> None:
    """Register the six ids with gymnasium (runs at import; calling it again is a no-op)."""
    for name, (cls, kwargs) in _ENTRY_POINTS.items():
        if ENV_IDS[name] not in gymnasium.registry:
            gymnasium.register(ENV_IDS[name], entry_point=cls, kwargs=kwargs,
                               max_episode_steps=HORIZON[name])


register_envs()

N_TRAIN_TASKS = {"navigation1": 20, "navigation2": 25, "maze": 20, "cartpole": 20,
                 "halfcheetah": 4, "ant": 3}
HALFCHEETAH_TRAIN_JOINTS = (1, 2, 3, 4)     # bshin, bfoot, fthigh, fshin; test: 5 (ffoot)
ANT_TRAIN_LEGS = (0, 1, 2)                  # test: leg 3


def _floats(values) -> tuple[float, ...]:
    """Plain Python floats rounded to 6 decimals (readable in manifests and logs)."""
    return tuple(round(float(v), 6) for v in values)


def train_tasks(name: str, seed: int = 0) -> list[dict]:
    """The training tasks' parameters, drawn from a generator seeded with `seed`."""
    _validate_name(name)
    rng = np.random.default_rng(seed)
    n = N_TRAIN_TASKS[name]
    if name in ("navigation1", "navigation2"):
        return [{"b": _floats(rng.uniform(0.5, 1.5, 2))} for _ in range(n)]
    if name == "maze":
        return [{"w": _floats(rng.uniform(-0.1, 0.1, 2))} for _ in range(n)]
    if name == "cartpole":
        return [{"length": _floats(rng.uniform(0.4, 0.8, 1))[0]} for _ in range(n)]
    if name == "halfcheetah":
        return [{"torque_scale": disabled({j}, 6)} for j in HALFCHEETAH_TRAIN_JOINTS]
    return [{"torque_scale": disabled({2 * leg, 2 * leg + 1}, 8)} for leg in ANT_TRAIN_LEGS]


TEST_TASKS = {
    ("navigation1", "default"): {"b": (1.3, 0.7)},
    ("navigation2", "default"): {"b": (0.7, 1.3)},
    ("maze", "default"): {"w": (0.08, -0.08)},
    ("cartpole", "default"): {"length": 1.0},
    ("halfcheetah", "default"): {"torque_scale": disabled({5}, 6)},
    ("halfcheetah", "partial"): {"torque_scale": PARTIAL_POWER_SCALE},
    ("ant", "default"): {"torque_scale": disabled({6, 7}, 8)},
}


def test_task(name: str, variant: str = "default") -> dict:
    """The fixed, held-out test task (see TEST_TASKS); halfcheetah also has variant "partial"."""
    _validate_name(name)
    if (name, variant) not in TEST_TASKS:
        raise ValueError(f"no test variant {variant!r} for {name!r}")
    return dict(TEST_TASKS[(name, variant)])


test_task.__test__ = False                  # not a pytest test, even when imported into one


def make_env(name: str, task: dict | None = None, terminate_on_violation: bool = True,
             **kwargs) -> gymnasium.Env:
    """gymnasium.make of the named env with a task (None = the default test task), time-limited."""
    _validate_name(name)
    task = test_task(name) if task is None else task
    return gymnasium.make(ENV_IDS[name], terminate_on_violation=terminate_on_violation,
                          **task, **kwargs)


def scaled_observations(env: gymnasium.Env, mean: np.ndarray, std: np.ndarray) -> gymnasium.Env:
    """env whose observations are (o - mean) / std, the scaling the datasets got (datasets.scaled)."""
    space = spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
    return gymnasium.wrappers.TransformObservation(env, lambda o: ((o - mean) / std).astype(np.float32), space)
