"""The 2-D point environments: Navigation 1 and 2, and the Maze (docs/environments.md).

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

Where we deviate (docs/environments.md, "Paper vs. original code", says why):
- Maze: numpy geometry instead of a MuJoCo point mass: a step moves the point 0.02467 * clip(a)
  per axis in a straight line (the displacement the original's 500 MuJoCo substeps produce). The
  step is swept: a point whose path touches a wall or the border stops at the first touching point
  and the step costs 1, so it can never pass through a 0.01-thick wall.
- Maze: the original's expert waypoints fit its one layout w = (-0.08, 0.08); for other layouts
  they move in y with the gaps (unchanged on the test layout).
- Navigation: B is fixed per task (the original drew a random B at every construction).
- Observations are float32.
"""
from __future__ import annotations

import math

import gymnasium
import numpy as np
from gymnasium import spaces


class _PointEnv(gymnasium.Env):
    """Shared plumbing of the 2-D point envs: state, start options and the reset info."""

    metadata = {"render_modes": []}

    def __init__(self, terminate_on_violation: bool = True, action_bound: float = 1.0):
        self.terminate_on_violation = terminate_on_violation
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-action_bound, action_bound, (2,), np.float32)
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
MAZE_ACTION_BOUND = 0.1            # the original's action bound: a full action is 0.1 per axis
MAZE_WALL_X = (-0.1, 0.1)          # the two walls' centre lines
MAZE_WALL_HALF_THICKNESS = 0.005   # boxes 0.01 thick in x
MAZE_SEGMENT_HALF_LENGTH = 0.2     # each wall segment is 0.4 long in y
MAZE_GOAL = np.array([0.25, 0.0])
MAZE_GOAL_DISTANCE = 0.03          # RMS distance to the goal that ends the episode (success)
MAZE_START_LOW, MAZE_START_HIGH = np.array([-0.22, -0.22]), np.array([-0.13, 0.22])
MAZE_TEST_W = (-0.08, 0.08)        # the original's (only) layout: the test task
MAZE_TOUCH_TOLERANCE = 1e-9        # a point stopped at a contact counts as touching
# The scripted expert: waypoints left of wall 1 and right of wall 2 (the original's, for the
# test layout; they move with the gaps), its gain, and the x
# beyond which it switches to the next waypoint.
MAZE_EXPERT_WAYPOINTS = ((-0.15, -0.125), (0.15, 0.125))
MAZE_EXPERT_SWITCH_X = (-0.151, 0.149)
MAZE_EXPERT_GAIN = 1.05


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
        super().__init__(terminate_on_violation, MAZE_ACTION_BOUND)
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
        bound = MAZE_ACTION_BOUND
        target = self.state + MAZE_STEP * np.clip(np.asarray(action, dtype=np.float64), -bound, bound) / bound
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
        (gain 1.05) clipped to the action bounds."""
        before_wall1, after_wall2 = self.expert_waypoints()
        x = self.state[0]
        if x <= MAZE_EXPERT_SWITCH_X[0]:
            target = before_wall1
        elif x <= MAZE_EXPERT_SWITCH_X[1]:
            target = after_wall2
        else:
            target = MAZE_GOAL
        action = MAZE_EXPERT_GAIN * (target - self.state)
        return np.clip(action, -MAZE_ACTION_BOUND, MAZE_ACTION_BOUND).astype(np.float32)
