"""The six MESA environments (docs/environments.md) as gymnasium.Env classes, plus their tasks.

Every env returns the 5-tuple API, puts info["cost"] in {0.0, 1.0} on every step (and in the reset
info), and takes a `terminate_on_violation` switch: True ends the episode on a violation
(terminated=True, used for learning); False lets it go on (data collection). Task parameters go in
through the constructor and never appear in the observation. `info["success"]` exists where the
paper defines success (navigation, maze, cartpole); its value on an episode's last step is the
episode's success. The registered ids (ENV_IDS) and make_env(name) build the paper's TEST task;
train_tasks(name) gives the training tasks' constructor keywords.

| name        | class                | task keyword (floats)                         | s per step | horizon |
|-------------|----------------------|-----------------------------------------------|------------|---------|
| navigation1 | Navigation(layout=1) | b = (b1, b2), B = diag(b)                     | -          | 100     |
| navigation2 | Navigation(layout=2) | b                                             | -          | 100     |
| maze        | Maze                 | w = (w1, w2), the two walls' gap offsets      | -          | 100     |
| cartpole    | CartpoleLength       | length = L (metres)                           | 0.04       | 200     |
| halfcheetah | HalfCheetahDisabled  | torque_scale, 6 values in [0, 1]              | 0.01       | 1000    |
| ant         | AntDisabled          | leg = 0., 1., 2. or 3. (the authors' numbers) | 0.02       | 1000    |

What follows the authors' code (docs/environments.md gives file and line of each fact):
- Navigation (MESA simplepointbot0/1, Recovery RL navigation1/2): s' = s + B a + 0.05 N(0, I);
  inside an obstacle the point stays put; reward -||s|| and the goal test both use the state
  BEFORE the step. Default: the episode ends at distance < 1 from the goal and succeeds when the
  last step started within 4 (MESA). goal_radius=4.0 gives Recovery RL's variant: the episode ends,
  and succeeds, within 4.
- Maze (Recovery RL's maze.py and simple_maze.xml): arena [-0.3, 0.3]^2; a disc of radius 0.025;
  walls at x = -0.1 and x = 0.1, 0.01 thick, made of the original's four 0.4-long segments placed
  by the gap offsets; goal (0.25, 0) reached at RMS distance < 0.03 (ends the episode, success);
  reward minus that RMS distance after the step; test layout w = (-0.08, 0.08); the scripted
  expert of the original's offline data (Maze.expert_action).
- Cartpole (MESA cartpole.py and its XML): timestep 0.02 s, frame skip 2, RK4, joint damping 1,
  slider limited to +-2.5, gear 100, ctrlrange [-3, 3], pole from (0, 0, 0) to (0.001, 0, L);
  violation |theta| > pi/2 on the raw (unwrapped) hinge angle, or |x| >= 2.4.
- HalfCheetah / Ant: Gymnasium v5 models stepped at the originals' rate (HalfCheetah frame_skip 1,
  Ant frame_skip 2); the MESA rewards; HalfCheetah joint faults 1-4 (train) and 5 (test); Ant legs
  numbered as in the original (leg 0, 1, 2 train; leg 3 = hip_4/ankle_4 test), a faulty leg has
  zero torque on its two actuators and a shrunk thigh and shin.

Where we deviate (docs/environments.md, "Paper vs. original code", says why):
- Maze: numpy geometry instead of a MuJoCo point mass: a step moves the point 0.02467 * clip(a)
  per axis in a straight line (the displacement the original's 500 MuJoCo substeps produce). The
  step is swept: a point whose path touches a wall or the border stops at the first touching point
  and the step costs 1, so it can never pass through a 0.01-thick wall.
- Maze: the original's expert waypoints fit its one layout w = (-0.08, 0.08); for other layouts
  they move in y with the gaps (unchanged on the test layout).
- Navigation: B is fixed per task (the original drew a random B at every construction).
- HalfCheetah / Ant: observations 17-D and 27-D (Gymnasium's), not the originals' 19-D and 43-D;
  forward velocity from the torso's position change; the control cost on the commanded (not the
  fault-masked) action; contacts recomputed on the post-step state; Gymnasium's reset pose and
  noise; Ant contacts slightly stiffer (Gymnasium's solimp) at 2 x 0.01 s instead of 1 x 0.02 s.
  Ant: Gymnasium's healthy-z termination and contact cost are off.
- Observations are float32 for the point envs, float64 for the MuJoCo ones.
"""
from __future__ import annotations

import contextlib
import math
import warnings

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


# ============================================================================= point environments
class _PointEnv(gymnasium.Env):
    """Shared plumbing of the 2-D point envs: state, start options and the reset info."""

    metadata = {"render_modes": []}

    def __init__(self, terminate_on_violation: bool = True):
        self.terminate_on_violation = terminate_on_violation
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.state = np.zeros(2)

    def violates(self, xy: np.ndarray) -> bool:
        raise NotImplementedError

    def _sample_start(self) -> np.ndarray:
        raise NotImplementedError

    def reset(self, *, seed=None, options=None):
        """options={"start": (x, y)} starts there exactly (used for data collection)."""
        super().reset(seed=seed)
        if options is not None and "start" in options:
            self.state = np.array(options["start"], dtype=np.float64).reshape(2)
        else:
            self.state = self._sample_start()
        return self.state.astype(np.float32), {"cost": float(self.violates(self.state)),
                                               "success": False}


# ----------------------------------------------------------------------------- navigation
# Obstacles as closed axis-aligned boxes (x_min, x_max, y_min, y_max).
NAV_OBSTACLES = {
    1: ((-100.0, 150.0, 5.0, 10.0), (-100.0, -80.0, -10.0, 10.0), (-100.0, 150.0, -10.0, -5.0)),
    2: ((-30.0, -20.0, -7.5, 7.5),),
}
NAV_START = np.array([-50.0, 0.0])       # + N(0, I)
NAV_NOISE = 0.05                         # std of the dynamics noise
NAV_GOAL_RADIUS = 1.0                    # MESA: the episode ends when a step starts this close
NAV_SUCCESS_RADIUS = 4.0                 # success: the last step started this close
RRL_NAV_GOAL_RADIUS = 4.0                # Recovery RL: ends and succeeds this close


def in_boxes(xy: np.ndarray, boxes) -> bool:
    """True if the point lies in (or on the border of) any box."""
    x, y = float(xy[0]), float(xy[1])
    return any(x0 <= x <= x1 and y0 <= y <= y1 for x0, x1, y0, y1 in boxes)


class Navigation(_PointEnv):
    """s' = s + B a + 0.05 N(0, I), B = diag(b); goal the origin (navigation 1 and 2).

    goal_radius: the episode ends when a step starts closer than this to the goal (1 = MESA's
    simplepointbot, 4 = Recovery RL's navigation envs). Success: the step started within
    max(4, goal_radius) of the goal; the last step's value is the episode's success.
    """

    def __init__(self, layout: int = 1, b=(1.0, 1.0), terminate_on_violation: bool = True,
                 goal_radius: float = NAV_GOAL_RADIUS):
        super().__init__(terminate_on_violation)
        self.layout, self.b = int(layout), np.array(b, dtype=np.float64).reshape(2)
        self.boxes = NAV_OBSTACLES[self.layout]
        self.goal_radius = float(goal_radius)
        self.success_radius = max(NAV_SUCCESS_RADIUS, self.goal_radius)

    def violates(self, xy):
        return in_boxes(xy, self.boxes)

    def _sample_start(self):
        return NAV_START + self.np_random.standard_normal(2)

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        distance = float(np.linalg.norm(self.state))          # of the state before the step
        if not self.violates(self.state):                     # inside an obstacle: stays put
            self.state = self.state + self.b * a + NAV_NOISE * self.np_random.standard_normal(2)
        cost = float(self.violates(self.state))
        at_goal = distance < self.goal_radius
        terminated = at_goal or (cost > 0 and self.terminate_on_violation)
        info = {"cost": cost, "success": distance < self.success_radius, "goal": at_goal}
        return self.state.astype(np.float32), -distance, terminated, False, info


# ----------------------------------------------------------------------------- maze
MAZE_HALF = 0.3                    # arena [-0.3, 0.3]^2 (border planes at +-0.3)
MAZE_RADIUS = 0.025                # the point is a cylinder of radius 0.025
MAZE_STEP = 0.02467                # displacement per axis of a full action (measured on the original)
MAZE_WALL_X = (-0.1, 0.1)          # the two walls' centre lines
MAZE_WALL_HALF_THICKNESS = 0.005   # boxes 0.01 thick in x
MAZE_SEGMENT_HALF_LENGTH = 0.2     # each wall segment is 0.4 long in y
MAZE_GOAL = np.array([0.25, 0.0])
MAZE_GOAL_DISTANCE = 0.03          # RMS distance to the goal that ends the episode (success)
MAZE_START_LOW, MAZE_START_HIGH = np.array([-0.22, -0.22]), np.array([-0.13, 0.22])
MAZE_TEST_W = (-0.08, 0.08)        # the original's (only) layout: the test task
MAZE_TOUCH_TOLERANCE = 1e-9        # a point stopped at a contact counts as touching
# The scripted expert: waypoints left of wall 1 and right of wall 2 (the original's, for the
# test layout; they move with the gaps), its gain in the original's action units, and the x
# beyond which it switches to the next waypoint.
MAZE_EXPERT_WAYPOINTS = ((-0.15, -0.125), (0.15, 0.125))
MAZE_EXPERT_SWITCH_X = (-0.151, 0.149)
MAZE_EXPERT_GAIN = 1.05
MAZE_ACTION_SCALE = 0.1            # the original's action bound: our a = 1 is its 0.1


def maze_wall_segments(w1: float, w2: float) -> tuple[tuple[float, float], ...]:
    """(x centre, y centre) of the four segments: upper and lower at x = -0.1, then at x = 0.1."""
    return ((MAZE_WALL_X[0], 0.5 + w1), (MAZE_WALL_X[0], -0.25 + w1),
            (MAZE_WALL_X[1], 0.4 + w2), (MAZE_WALL_X[1], -0.25 + w2))


def maze_walls(w1: float, w2: float) -> tuple[tuple[float, float, float, float], ...]:
    """The wall boxes (x_min, x_max, y_min, y_max) inside the arena, for gap offsets w1, w2.

    Segments are cut at the arena's border; one that lies wholly outside (the upper segment at
    x = -0.1 when w1 >= 0) is left out.
    """
    walls = []
    for xc, yc in maze_wall_segments(w1, w2):
        y0 = max(yc - MAZE_SEGMENT_HALF_LENGTH, -MAZE_HALF)
        y1 = min(yc + MAZE_SEGMENT_HALF_LENGTH, MAZE_HALF)
        if y0 < y1:
            walls.append((xc - MAZE_WALL_HALF_THICKNESS, xc + MAZE_WALL_HALF_THICKNESS, y0, y1))
    return tuple(walls)


def maze_goal_distance(xy: np.ndarray) -> float:
    """The original's goal distance: the root-mean-square of (goal - xy), i.e. ||goal - xy|| / sqrt 2."""
    return float(np.sqrt(np.mean((MAZE_GOAL - xy) ** 2)))


def _slab_entry(p, d, low, high) -> float | None:
    """Smallest t in [0, 1] with p + t d inside the closed box [low, high]; None if never."""
    t_in, t_out = 0.0, 1.0
    for axis in range(2):
        if d[axis] == 0.0:
            if not low[axis] <= p[axis] <= high[axis]:
                return None
            continue
        t0, t1 = (low[axis] - p[axis]) / d[axis], (high[axis] - p[axis]) / d[axis]
        t_in, t_out = max(t_in, min(t0, t1)), min(t_out, max(t0, t1))
        if t_in > t_out:
            return None
    return t_in


def _circle_entry(p, d, centre, radius: float) -> float | None:
    """Smallest t in [0, 1] with |p + t d - centre| <= radius; None if never."""
    fx, fy = p[0] - centre[0], p[1] - centre[1]
    a, b, c = d[0] * d[0] + d[1] * d[1], 2.0 * (fx * d[0] + fy * d[1]), fx * fx + fy * fy - radius ** 2
    if c <= 0.0:
        return 0.0
    disc = b * b - 4.0 * a * c
    if a == 0.0 or disc < 0.0:
        return None
    t = (-b - math.sqrt(disc)) / (2.0 * a)
    return t if 0.0 <= t <= 1.0 else None


def first_contact(p: np.ndarray, q: np.ndarray, walls, radius: float = MAZE_RADIUS) -> float | None:
    """Smallest t in [0, 1] at which a disc moving from p to q touches a wall box or the border.

    A disc touches a box when its centre enters the box grown by the radius (a rounded
    rectangle: two crossed boxes and four corner circles); it touches the border when a
    coordinate of its centre reaches +-(MAZE_HALF - radius).
    """
    p, d = (float(p[0]), float(p[1])), (float(q[0] - p[0]), float(q[1] - p[1]))
    lo_x, hi_x = min(p[0], p[0] + d[0]) - radius, max(p[0], p[0] + d[0]) + radius
    lo_y, hi_y = min(p[1], p[1] + d[1]) - radius, max(p[1], p[1] + d[1]) + radius
    hits = []
    for x0, x1, y0, y1 in walls:
        if x0 > hi_x or x1 < lo_x or y0 > hi_y or y1 < lo_y:      # the swept disc cannot reach it
            continue
        hits.append(_slab_entry(p, d, (x0 - radius, y0), (x1 + radius, y1)))
        hits.append(_slab_entry(p, d, (x0, y0 - radius), (x1, y1 + radius)))
        hits += [_circle_entry(p, d, corner, radius) for corner in ((x0, y0), (x0, y1), (x1, y0), (x1, y1))]
    inner = MAZE_HALF - radius
    for axis in range(2):
        if d[axis] != 0.0:
            t = (math.copysign(inner, d[axis]) - p[axis]) / d[axis]
            hits.append(t if 0.0 <= t <= 1.0 else None)
    hits = [t for t in hits if t is not None]
    return min(hits) if hits else None


class Maze(_PointEnv):
    """Recovery RL's maze: a disc in [-0.3, 0.3]^2 crossing two walls through gaps to (0.25, 0).

    A full action moves the point MAZE_STEP per axis; a path that touches a wall or the border
    stops at the first touching point (cost 1). Reaching the goal ends the episode (success).
    """

    def __init__(self, w=(0.0, 0.0), terminate_on_violation: bool = True):
        super().__init__(terminate_on_violation)
        self.w = np.array(w, dtype=np.float64).reshape(2)
        self.walls = maze_walls(*self.w)

    def violates(self, xy):
        """The disc touches a wall (centre within the radius of a box) or the border."""
        x, y = float(xy[0]), float(xy[1])
        reach = MAZE_RADIUS + MAZE_TOUCH_TOLERANCE
        if max(abs(x), abs(y)) >= MAZE_HALF - reach:
            return True
        for x0, x1, y0, y1 in self.walls:
            dx, dy = max(x0 - x, 0.0, x - x1), max(y0 - y, 0.0, y - y1)
            if dx * dx + dy * dy <= reach ** 2:
                return True
        return False

    def _sample_start(self):
        while True:                                       # the original redraws starts on a wall
            s = self.np_random.uniform(MAZE_START_LOW, MAZE_START_HIGH)
            if not self.violates(s):
                return s

    def move(self, action) -> np.ndarray:
        """Where one step of `action` takes the point (it stays put if already touching)."""
        if self.violates(self.state):
            return self.state
        target = self.state + MAZE_STEP * np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        t = first_contact(self.state, target, self.walls)
        return target if t is None else self.state + t * (target - self.state)

    def step(self, action):
        self.state = self.move(action)
        cost = float(self.violates(self.state))
        distance = maze_goal_distance(self.state)
        at_goal = distance < MAZE_GOAL_DISTANCE
        terminated = at_goal or (cost > 0 and self.terminate_on_violation)
        info = {"cost": cost, "success": at_goal}
        return self.state.astype(np.float32), -distance, terminated, False, info

    def expert_waypoints(self) -> tuple[np.ndarray, np.ndarray]:
        """The expert's two waypoints: the original's for the test layout w = (-0.08, 0.08),
        moved in y with each wall's gap offset for other layouts."""
        (x1, y1), (x2, y2) = MAZE_EXPERT_WAYPOINTS
        shift = self.w - np.array(MAZE_TEST_W)
        return np.array([x1, y1 + shift[0]]), np.array([x2, y2 + shift[1]])

    def expert_action(self) -> np.ndarray:
        """The original's scripted expert: head for a point left of the first wall's gap, then
        for one right of the second wall's gap, then for the goal; a proportional controller
        (gain 1.05 in the original's units) clipped to the action bounds."""
        before_wall1, after_wall2 = self.expert_waypoints()
        x = self.state[0]
        if x <= MAZE_EXPERT_SWITCH_X[0]:
            target = before_wall1
        elif x <= MAZE_EXPERT_SWITCH_X[1]:
            target = after_wall2
        else:
            target = MAZE_GOAL
        action = MAZE_EXPERT_GAIN * (target - self.state) / MAZE_ACTION_SCALE
        return np.clip(action, -1.0, 1.0).astype(np.float32)


# ============================================================================= cartpole
CARTPOLE_XML = """
<mujoco model="cartpole_length">
  <compiler inertiafromgeom="true"/>
  <option timestep="0.02" integrator="RK4" gravity="0 0 -9.81"/>
  <default>
    <joint armature="0" damping="1" limited="true"/>
    <geom contype="0" conaffinity="0"/>
    <motor ctrllimited="true" ctrlrange="-3 3"/>
  </default>
  <worldbody>
    <geom name="rail" type="capsule" size="0.02 3" quat="0.707 0 0.707 0"/>
    <body name="cart">
      <joint name="slider" type="slide" axis="1 0 0" range="-2.5 2.5"/>
      <geom name="cart" type="capsule" size="0.1 0.1" quat="0.707 0 0.707 0"/>
      <body name="pole">
        <joint name="hinge" type="hinge" axis="0 1 0" limited="false"/>
        <geom name="pole" type="capsule" fromto="0 0 0 0.001 0 {length}" size="0.049"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor name="slide" joint="slider" gear="100"/>
  </actuator>
</mujoco>
"""
CARTPOLE_FRAME_SKIP = 2
CARTPOLE_SUCCESS_RETURN = 160.0


class CartpoleLength(gymnasium.Env):
    """Balance a pole of length L on a cart; obs [x, theta, x', theta'], action force in [-3, 3]."""

    metadata = {"render_modes": []}
    frame_skip = CARTPOLE_FRAME_SKIP

    def __init__(self, length: float = 0.6, terminate_on_violation: bool = True):
        self.length = float(length)
        self.terminate_on_violation = terminate_on_violation
        self.model = mujoco.MjModel.from_xml_string(CARTPOLE_XML.format(length=self.length))
        self.data = mujoco.MjData(self.model)
        self.dt = self.model.opt.timestep * self.frame_skip       # 0.04 s per env step
        self.observation_space = spaces.Box(-np.inf, np.inf, (4,), np.float64)
        self.action_space = spaces.Box(-3.0, 3.0, (1,), np.float32)
        self.episode_return = 0.0

    def _obs(self):
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def tip(self) -> np.ndarray:
        """Pole tip (x, z) as the reward sees it; theta = 0 is upright, positive leans to +x."""
        x, theta = self.data.qpos
        return np.array([x + self.length * np.sin(theta), self.length * np.cos(theta)])

    def violates(self) -> bool:
        """|theta| > pi/2 on the raw hinge angle (a full turn stays a violation) or |x| >= 2.4."""
        x, theta = self.data.qpos
        return bool(abs(theta) > np.pi / 2 or abs(x) >= 2.4)

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
        # r = exp(-||tip - (0, L)||^2 / L^2) on the state after the step
        err = self.tip() - np.array([0.0, self.length])
        reward = float(np.exp(-err @ err / self.length ** 2))
        self.episode_return += reward
        cost = float(self.violates())
        terminated = cost > 0 and self.terminate_on_violation
        info = {"cost": cost, "success": self.episode_return > CARTPOLE_SUCCESS_RETURN}
        return self._obs(), reward, terminated, False, info


# ============================================================================= locomotion
HALFCHEETAH_FRAME_SKIP = 1      # v5 timestep 0.01 s: 0.01 s per env step, as the original
ANT_FRAME_SKIP = 2              # v5 timestep 0.01 s: 0.02 s per env step, as the original at 1f3bc9d


def geoms_touch(model, data, geom_a: str, geom_b: str) -> bool:
    """True if the two named geoms are in MuJoCo's current contact list."""
    a = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, geom_a)
    b = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, geom_b)
    g1, g2 = data.contact.geom1[: data.ncon], data.contact.geom2[: data.ncon]
    return bool(np.any(((g1 == a) & (g2 == b)) | ((g1 == b) & (g2 == a))))


class _FaultMixin:
    """Per-actuator torque scales, a contact violation and the MESA rewards for v5 locomotion."""

    violation_geoms: tuple[str, str]
    torque_scale: np.ndarray

    def violates(self) -> bool:
        """C(s) on the current qpos: recompute positions and contacts, then look up the pair."""
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_collision(self.model, self.data)
        return geoms_touch(self.model, self.data, *self.violation_geoms)

    def _reward(self, x_velocity: float, action) -> float:
        raise NotImplementedError

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)
        xy_before = self.data.body("torso").xpos[:2].copy()
        self.do_simulation(action * self.torque_scale, self.frame_skip)   # faulty actuators
        cost = float(self.violates())                    # also brings xpos up to the new qpos
        x_velocity = (self.data.body("torso").xpos[0] - xy_before[0]) / self.dt
        terminated = cost > 0 and self.terminate_on_violation
        info = {"cost": cost, "x_velocity": x_velocity, "x_position": self.data.qpos[0]}
        return self._get_obs(), self._reward(x_velocity, action), terminated, False, info

    def _get_reset_info(self):
        return {"cost": float(self.violates()), "x_position": self.data.qpos[0]}


@contextlib.contextmanager
def settotalmass_accepted():
    """MuJoCo >= 3.3 warns (on stderr and into MUJOCO_LOG.TXT) that the compiler attribute
    settotalmass of Gymnasium's half_cheetah.xml is deprecated; it still compiles the same masses.
    This drops that one warning while the model compiles and passes every other one on."""
    previous = mujoco.get_mju_user_warning()

    def forward(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", stacklevel=2)

    mujoco.set_mju_user_warning(forward)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class HalfCheetahDisabled(_FaultMixin, HalfCheetahEnv):
    """HalfCheetah-v5 at 0.01 s per step with faulty joints; violation = "head" touches "floor"."""

    violation_geoms = ("head", "floor")

    def __init__(self, torque_scale=(1.0,) * 6, terminate_on_violation: bool = True, **kwargs):
        with settotalmass_accepted():
            HalfCheetahEnv.__init__(self, **{"frame_skip": HALFCHEETAH_FRAME_SKIP, **kwargs})
        self.torque_scale = np.array(torque_scale, dtype=np.float64).reshape(self.model.nu)
        self.terminate_on_violation = terminate_on_violation

    def _reward(self, x_velocity, action):
        return float(x_velocity - 0.05 * np.sum(action ** 2))


# The original's Ant legs (ant_disabled.py reset_task): leg -> (hip joint, ankle joint, thigh geom,
# shin geom). Legs 0-2 are the training faults, leg 3 (actuators 0 and 1) the test fault.
ANT_LEGS = {
    0: ("hip_1", "ankle_1", "left_leg_geom", "left_ankle_geom"),
    1: ("hip_2", "ankle_2", "right_leg_geom", "right_ankle_geom"),
    2: ("hip_3", "ankle_3", "back_leg_geom", "third_ankle_geom"),
    3: ("hip_4", "ankle_4", "rightback_leg_geom", "fourth_ankle_geom"),
}
ANT_TRAIN_LEGS = (0, 1, 2)
ANT_TEST_LEG = 3


def ant_leg_index(leg) -> int:
    """The leg number as an int; accepts the float (or 0-d array) a stored task holds."""
    value = float(leg)
    if value not in ANT_LEGS:
        raise ValueError(f"unknown Ant leg {leg!r}; valid legs: {', '.join(map(str, ANT_LEGS))}")
    return int(value)


def ant_leg_actuators(model, leg: int) -> tuple[int, int]:
    """Indices of the actuators that drive the leg's hip and ankle joints."""
    joints = [model.joint(model.actuator_trnid[i, 0]).name for i in range(model.nu)]
    hip, ankle = ANT_LEGS[leg][:2]
    return joints.index(hip), joints.index(ankle)


def shrink_ant_leg(model, leg: int) -> None:
    """The original's removed leg, on this model only: thigh and shin capsules get half their
    radius and half-length, and the shin capsule is placed at the thigh's local position.
    Masses and inertias stay as compiled (the original changed geometry only). MuJoCo 3 places a
    geom that shares its body's inertial frame from that frame, ignoring geom_pos, so the moved
    geom is marked as having a frame of its own."""
    thigh, shin = (mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, g) for g in ANT_LEGS[leg][2:])
    model.geom_size[[thigh, shin], :2] /= 2.0
    model.geom_pos[shin] = model.geom_pos[thigh]
    model.geom_sameframe[shin] = mujoco.mjtSameFrame.mjSAMEFRAME_NONE


class AntDisabled(_FaultMixin, AntEnv):
    """Ant-v5 at 0.02 s per step (27-dim obs, no contact forces) with one faulty leg; violation =
    "torso_geom" touches "floor". leg=None: a healthy ant."""

    violation_geoms = ("torso_geom", "floor")

    def __init__(self, leg=None, terminate_on_violation: bool = True, **kwargs):
        kwargs = {"frame_skip": ANT_FRAME_SKIP, "include_cfrc_ext_in_observation": False,
                  "terminate_when_unhealthy": False, **kwargs}
        AntEnv.__init__(self, **kwargs)
        self.leg = None if leg is None else ant_leg_index(leg)
        self.torque_scale = np.ones(self.model.nu)
        if self.leg is not None:
            self.torque_scale[list(ant_leg_actuators(self.model, self.leg))] = 0.0
            shrink_ant_leg(self.model, self.leg)
        self.terminate_on_violation = terminate_on_violation

    def _reward(self, x_velocity, action):
        return float(x_velocity - 0.005 * np.sum(action ** 2) + 0.05)


def disabled(joints, n: int) -> tuple[float, ...]:
    """Torque-scale vector of n actuators with the given actuator indices set to 0."""
    return tuple(0.0 if i in joints else 1.0 for i in range(n))


# ============================================================================= tasks
N_TRAIN_TASKS = {"navigation1": 20, "navigation2": 25, "maze": 20, "cartpole": 20,
                 "halfcheetah": 4, "ant": 3}
HALFCHEETAH_TRAIN_JOINTS = (1, 2, 3, 4)     # bshin, bfoot, fthigh, fshin; test: 5 (ffoot)
HALFCHEETAH_TEST_JOINT = 5

TEST_TASKS = {
    ("navigation1", "default"): {"b": (1.3, 0.7)},
    ("navigation2", "default"): {"b": (0.7, 1.3)},
    ("maze", "default"): {"w": MAZE_TEST_W},
    ("cartpole", "default"): {"length": 1.0},
    ("halfcheetah", "default"): {"torque_scale": disabled({HALFCHEETAH_TEST_JOINT}, 6)},
    ("halfcheetah", "partial"): {"torque_scale": PARTIAL_POWER_SCALE},
    ("ant", "default"): {"leg": float(ANT_TEST_LEG)},
}


def _floats(values) -> tuple[float, ...]:
    """Plain Python floats rounded to 6 decimals (readable in manifests and logs)."""
    return tuple(round(float(v), 6) for v in values)


def train_tasks(name: str, seed: int = 0) -> list[dict]:
    """The training tasks' constructor keywords, drawn from a generator seeded with `seed`."""
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
    return [{"leg": float(leg)} for leg in ANT_TRAIN_LEGS]


def test_task(name: str, variant: str = "default") -> dict:
    """The fixed, held-out test task (see TEST_TASKS); halfcheetah also has variant "partial"."""
    _validate_name(name)
    if (name, variant) not in TEST_TASKS:
        raise ValueError(f"no test variant {variant!r} for {name!r}")
    return dict(TEST_TASKS[(name, variant)])


test_task.__test__ = False                  # not a pytest test, even when imported into one


# ============================================================================= registry
_ENTRY_POINTS = {
    "navigation1": (Navigation, {"layout": 1}), "navigation2": (Navigation, {"layout": 2}),
    "maze": (Maze, {}), "cartpole": (CartpoleLength, {}),
    "halfcheetah": (HalfCheetahDisabled, {}), "ant": (AntDisabled, {}),
}


def register_envs() -> None:
    """Register the six ids with gymnasium, each building its test task by default (runs at
    import; calling it again is a no-op)."""
    for name, (cls, kwargs) in _ENTRY_POINTS.items():
        if ENV_IDS[name] not in gymnasium.registry:
            gymnasium.register(ENV_IDS[name], entry_point=cls, kwargs={**kwargs, **test_task(name)},
                               max_episode_steps=HORIZON[name])


register_envs()


def make_env(name: str, task: dict | None = None, terminate_on_violation: bool = True,
             **kwargs) -> gymnasium.Env:
    """gymnasium.make of the named env with a task (None = the default test task), time-limited.
    Extra keywords go to the constructor (e.g. goal_radius=4.0 for the navigation envs)."""
    _validate_name(name)
    task = test_task(name) if task is None else task
    return gymnasium.make(ENV_IDS[name], terminate_on_violation=terminate_on_violation,
                          **task, **kwargs)


def scaled_observations(env: gymnasium.Env, mean: np.ndarray, std: np.ndarray) -> gymnasium.Env:
    """env whose observations are (o - mean) / std, the scaling the datasets got (datasets.scaled)."""
    space = spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
    return gymnasium.wrappers.TransformObservation(env, lambda o: ((o - mean) / std).astype(np.float32), space)
