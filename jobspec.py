"""What one run is and where it lives: the Job (one env, method and seed under one configuration),
its run key, the files of its folder and whether it has finished.

<out>/<env>/<method>/seed<k>/ holds config.json, metrics.json, progress.csv and episodes.csv, which
write_run writes last: its presence beside a config.json with the job's run key marks a finished
run (finished()). Beside them lie the checkpoints a stopped run resumes from: phase2.pt (Phases 1-2;
CARL's phase1.pt), phase3.pt (Phase 3 so far) and CARL's pretraining.pt. experiment.py runs a job;
run.py and paper.py build jobs and skip the finished ones.
"""
from __future__ import annotations

import copy
import dataclasses
import glob
import hashlib
import json
import os
import platform
import subprocess
import sys

import gymnasium
import mujoco
import numpy as np
import torch

import carl
import report
from baselines import BASELINES
from common import atomic_write
from mesa import Hyperparameters
from presets import LATER_FIELDS

DATA_SEED = 0                 # one set of datasets for every run seed (datasets.get_datasets(seed=0))


@dataclasses.dataclass
class Job:
    env: str
    method: str
    seed: int
    preset: str
    hp: Hyperparameters
    episodes: int
    out: str
    data_root: str
    test_variant: str
    progress: str                # "bars" (tqdm), "lines" (periodic lines: parallel workers) or "none"
    test_fraction: float = 1.0   # share of D_test used (paper Figure 6)
    scale_inputs: bool = True    # standardise observations with D_test's statistics
    env_kwargs: dict = dataclasses.field(default_factory=dict)  # e.g. {"goal_radius": 4.0}
    oracle_variant: str = "mesa"  # RRL-oracle's generator ("rrl": Recovery RL's Navigation 2)
    checkpoint_every: int = 0    # Phase-3 checkpoint every this many episodes (0: experiment.CHECKPOINT_EVERY[env])
    keep_checkpoint: bool = False  # keep phase3.pt after the run finishes
    tensorboard: bool = False    # also write progress.csv's scalars for TensorBoard (optional package)
    position: str = ""           # e.g. "run 3 of 10": shown in its progress lines; not part of the run

    @property
    def folder(self) -> str:
        return os.path.join(self.out, self.env, self.method, f"seed{self.seed}")

    def key(self, phase3: bool = True) -> str:
        """Hash of what the result depends on; phase3=False: only what Phases 1-2 depend on."""
        return run_key(self.key_fields(), phase3)

    def key_fields(self) -> dict:
        """What run_key hashes, as config.json records it (finished() rebuilds it from there)."""
        return {"env": self.env, "method": self.method, "seed": self.seed, "preset": self.preset,
                "test_variant": self.test_variant, "data_seed": DATA_SEED, "hp": dataclasses.asdict(self.hp),
                "test_fraction": self.test_fraction, "scale_inputs": self.scale_inputs, "episodes": self.episodes,
                "env_kwargs": self.env_kwargs, "oracle_variant": self.oracle_variant}


# The configuration groups a method never reads, left out of its run key: changing one method's
# settings (e.g. quick's MESA meta-steps) leaves the other methods' runs valid. The baselines keep
# every group (mesa.phase1 / phase2 and experiment.fresh_networks say who reads what); CARL reads
# its own group alone (carl_run.run_carl).
NOT_CARL = ("sac", "recovery", "meta", "multitask", "rrl", "adapt", "baseline")
UNREAD_GROUPS = {"unconstrained": ("recovery", "meta", "multitask", "rrl", "adapt"),
                 "rrl": ("meta", "multitask"), "rrl_oracle": ("meta", "multitask"),
                 "multitask": ("meta", "rrl"), "mesa": ("multitask", "rrl"),
                 **{method: NOT_CARL for method in carl.CARL_METHODS}}
# CARL's settings that only Phase 3's caution reads (pretraining plans on the plain mean), left out
# of its Phase-1 key: CARL (Reward) and CARL (State) share one pretrained ensemble.
CARL_PHASE3_ONLY = ("risk", "catastrophe_penalty", "catastrophe_threshold", "percentile")
HP_GROUPS = {f.name: type(getattr(Hyperparameters(), f.name)) for f in dataclasses.fields(Hyperparameters)}


def run_key(fields: dict, phase3: bool = True) -> str:
    """The run key of Job.key_fields() (or of a config.json's record of them): a hash of the
    configuration groups the method reads, where fields added after runs existed (LATER_FIELDS)
    count only away from their defaults, as do env_kwargs and the oracle variant."""
    hp = copy.deepcopy(fields["hp"])
    method = fields["method"]
    for group in UNREAD_GROUPS.get(method, ()):
        hp.pop(group, None)
    for group, names in LATER_FIELDS.items():
        if group in hp:
            defaults = dataclasses.asdict(HP_GROUPS[group]())
            for name in names:
                if name in hp[group] and hp[group][name] == defaults[name]:
                    del hp[group][name]
    if method not in BASELINES:     # absent: the other methods' keys stay as they were
        hp.pop("baseline", None)
    if method not in carl.CARL_METHODS:
        hp.pop("carl", None)
    if method != "mesa" and "meta" in hp:     # MESA's alone (mesa.Hyperparameters.phase2_tau)
        hp["meta"].pop("adapted_tau_risk", None)
    if not phase3:   # Phases 1-2 see SAC only through the initial policy's network shape,
        if "sac" in hp:                                  # and never filter, so never use eps_risk
            hp["sac"] = {"hidden": hp["sac"]["hidden"]}
        if "recovery" in hp:
            hp["recovery"] = {k: v for k, v in hp["recovery"].items() if k != "eps_risk"}
        if "carl" in hp:
            hp["carl"] = {k: v for k, v in hp["carl"].items() if k not in CARL_PHASE3_ONLY}
    what = {"env": fields["env"], "method": method, "seed": fields["seed"], "preset": fields["preset"],
            "test_variant": fields["test_variant"], "data_seed": fields["data_seed"], "hp": hp,
            "test_fraction": fields["test_fraction"], "scale_inputs": fields["scale_inputs"],
            "episodes": fields["episodes"] if phase3 else None}
    env_kwargs, oracle_variant = fields.get("env_kwargs") or {}, fields.get("oracle_variant", "mesa")
    if env_kwargs or oracle_variant != "mesa":   # absent keys keep older run keys valid
        what.update(env_kwargs=env_kwargs, oracle_variant=oracle_variant)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def pretraining_path(job: Job) -> str:
    """The Phase-1 checkpoint of MESA's meta-learning and CARL's pretraining: removed once Phase 1
    is saved (phase2.pt; CARL's phase1.pt)."""
    return os.path.join(job.folder, "pretraining.pt")


def checkpoint_path(job: Job) -> str:
    return os.path.join(job.folder, "phase3.pt")


# ----------------------------------------------------------------------------- damaged files
# A file of a run that cannot be read stops the command with one line that names it and says what to
# do (run.py: exit status 2); nothing is deleted or overwritten. run.py checks every job's files
# before the first job starts (check_files), so a damaged one never stops a sweep half way.

PHASE2_ADVICE = "delete it to run this run's Phases 1-2 again"
PHASE3_ADVICE = "delete it to restart this run's Phase 3 from its cached Phases 1-2"
PRETRAINING_ADVICE = "delete it to restart this run's Phase 1"


class DamagedFile(ValueError):
    """A run's file that cannot be read; the message names it and what to do."""


def load_checkpoint(path: str, advice: str) -> dict:
    """torch.load(path, weights_only=True), or a DamagedFile "<path> is damaged (...): <advice>"."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:    # truncated or overwritten: torch raises RuntimeError, EOFError, pickle errors
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
        raise DamagedFile(f"{path} is damaged ({reason}): {advice}") from None


def phase2_paths(job: Job) -> list[str]:
    """Where cached Phases 1-2 of this run may lie: its own phase2.pt (CARL's: phase1.pt, its
    pretrained agent), then the same run's in the other configuration folders beside it."""
    name = "phase1.pt" if job.method in carl.CARL_METHODS else "phase2.pt"
    own = os.path.join(job.folder, name)
    siblings = sorted(glob.glob(os.path.join(os.path.dirname(job.out), "*", job.env, job.method,
                                             f"seed{job.seed}", name)))
    return [own, *(s for s in siblings if os.path.abspath(s) != os.path.abspath(own))]


def check_files(job: Job) -> None:
    """A DamagedFile for the first file this unfinished job would read that cannot be read: its
    cached Phases 1-2 (its own or a sibling configuration's phase2.pt; CARL's phase1.pt), CARL's
    pretraining checkpoint or its Phase-3 checkpoint."""
    for path in phase2_paths(job):
        if os.path.exists(path):
            load_checkpoint(path, PHASE2_ADVICE)
    for path, advice in ((pretraining_path(job), PRETRAINING_ADVICE), (checkpoint_path(job), PHASE3_ADVICE)):
        if os.path.exists(path):
            load_checkpoint(path, advice)


def resume_phase3(job: Job, restore) -> tuple[list, float]:
    """(episode rows so far, Phase-3 seconds so far) of this run's checkpoint, which restore(state)
    puts into the fresh objects (recovery_rl's or carl's restore_phase3); ([], 0) where there is
    none or it belongs to another configuration."""
    path = checkpoint_path(job)
    if not os.path.exists(path):
        return [], 0.0
    state = load_checkpoint(path, PHASE3_ADVICE)
    if state["key"] != job.key():
        return [], 0.0
    restore(state)
    print(f"resumed {job.env}/{job.method}/seed{job.seed} at episode {len(state['rows'])}", flush=True)
    return state["rows"], state["seconds"]


def versions() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__, "git_commit": commit or "unknown"}


def write_run(job: Job, info: dict, rows: list[dict]) -> None:
    """config.json and metrics.json first, episodes.csv last: its presence marks a finished run."""
    config = {"env": job.env, "method": job.method, "seed": job.seed, "preset": job.preset,
              "episodes": job.episodes, "test_variant": job.test_variant, "data_seed": DATA_SEED,
              "data_root": job.data_root, "hyperparameters": dataclasses.asdict(job.hp),
              "env_kwargs": job.env_kwargs, "test_fraction": job.test_fraction, "scale_inputs": job.scale_inputs,
              "oracle_variant": job.oracle_variant,
              "phase2_lr": job.hp.phase2_lr(job.method), "run_key": job.key(), "torch_threads":
              torch.get_num_threads(), "versions": versions(), "command": sys.argv}
    report.write_json(os.path.join(job.folder, "config.json"), config)
    report.write_json(os.path.join(job.folder, "metrics.json"), info)
    atomic_write(os.path.join(job.folder, "episodes.csv"), report.episodes_csv(rows))


def stored_key(config: dict) -> str:
    """The run key, under today's run_key, of the configuration a config.json records: a run made
    before a change to the key (e.g. UNREAD_GROUPS) is still recognised by what it ran with."""
    fields = {"env": config["env"], "method": config["method"], "seed": config["seed"],
              "preset": config["preset"], "test_variant": config["test_variant"], "data_seed": config["data_seed"],
              "hp": config["hyperparameters"], "test_fraction": config.get("test_fraction", 1.0),
              "scale_inputs": config.get("scale_inputs", True), "episodes": config["episodes"],
              "env_kwargs": config.get("env_kwargs") or {}, "oracle_variant": config.get("oracle_variant", "mesa")}
    return run_key(fields)


def finished(job: Job) -> bool:
    """A run is finished when its episodes.csv exists and its config.json records the same run key,
    or a configuration with the same key today (stored_key).

    A DamagedFile where episodes.csv exists beside a config.json that cannot be read: a finished
    run's results are never run over."""
    path = os.path.join(job.folder, "config.json")
    if not os.path.exists(os.path.join(job.folder, "episodes.csv")):
        return False
    try:
        with open(path) as f:
            config = json.load(f)
        return config["run_key"] == job.key() or stored_key(config) == job.key()
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = "missing" if isinstance(e, FileNotFoundError) else "cannot be read"
        raise DamagedFile(f"{path} is damaged ({reason}) beside a finished run's episodes.csv: restore it, "
                          f"or move {job.folder} away to run this run again") from None
