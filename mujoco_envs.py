"""The MuJoCo environments: Cartpole-Length, HalfCheetah-Disabled and Ant-Disabled (docs/environments.md).

What follows the authors' code (docs/environments.md gives file and line of each fact):
- Cartpole (MESA cartpole.py and its XML): timestep 0.02 s, frame skip 2, RK4, joint damping 1,
  slider limited to +-2.5, gear 100, ctrlrange [-3, 3], pole from (0, 0, 0) to (0.001, 0, L);
  violation |theta| > pi/2 on the raw (unwrapped) hinge angle, or |x| >= 2.4.
- HalfCheetah / Ant: Gymnasium v5 models stepped at the originals' rate (HalfCheetah frame_skip 1,
  Ant frame_skip 2); the MESA rewards; HalfCheetah joint faults 1-4 (train) and 5 (test); Ant legs
  numbered as in the original (leg 0, 1, 2 train; leg 3 = hip_4/ankle_4 test), a faulty leg has
  zero torque on its two actuators and a shrunk thigh and shin.

Where we deviate (docs/environments.md, "Paper vs. original code", says why):
- HalfCheetah / Ant: observations 17-D and 27-D (Gymnasium's), not the originals' 19-D and 43-D;
  forward velocity from the torso's position change; the control cost on the commanded (not the
  fault-masked) action; contacts recomputed on the post-step state; Gymnasium's reset pose and
  noise; Ant contacts slightly stiffer (Gymnasium's solimp) at 2 x 0.01 s instead of 1 x 0.02 s.
  Ant: Gymnasium's healthy-z termination and contact cost are off.
- Observations are float64.
"""
from __future__ import annotations

import contextlib
import warnings

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv


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
    CONTROL_COST, ALIVE_BONUS = 0.05, 0.0     # reward x-velocity - 0.05 ||a||^2 (carl.py plans with them)

    def __init__(self, torque_scale=(1.0,) * 6, terminate_on_violation: bool = True, **kwargs):
        with settotalmass_accepted():
            HalfCheetahEnv.__init__(self, **{"frame_skip": HALFCHEETAH_FRAME_SKIP, **kwargs})
        self.torque_scale = np.array(torque_scale, dtype=np.float64).reshape(self.model.nu)
        self.terminate_on_violation = terminate_on_violation

    def _reward(self, x_velocity, action):
        return float(x_velocity - self.CONTROL_COST * np.sum(action ** 2))


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
    CONTROL_COST, ALIVE_BONUS = 0.005, 0.05   # reward x-velocity - 0.005 ||a||^2 + 0.05 (carl.py plans with them)

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
        return float(x_velocity - self.CONTROL_COST * np.sum(action ** 2) + self.ALIVE_BONUS)
