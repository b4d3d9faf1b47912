"""CARL and CARL-Offline (carl.py): the ensemble and its loss against hand computations and a known
linear system, trajectory sampling's particle bookkeeping, CEM on a known quadratic, the cautious
scores, the rewards against the environments', CARL-Offline's data, and both methods end to end."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import carl
import ensemble
import envs
import evaluate
import carl_run
import experiment
import jobspec
import presets
import run
import timing
from carl import CARLConfig
from ensemble import ProbabilisticEnsemble
from conftest import random_dataset

SMALL = CARLConfig(ensemble=2, hidden=(32, 32), weight_decays=(0.0, 0.0, 0.0), particles=4, horizon=3,
                   population=64, elites=8, iterations=5, batch_size=64)


# ----------------------------------------------------------------------------- the loss

def test_gaussian_nll_is_twice_the_normal_nll_without_its_constant():
    mean = torch.tensor([[[0.5, -1.0]], [[2.0, 0.0]]])             # (B=2, N=1, 2)
    logvar = torch.tensor([[[0.0, math.log(4.0)]], [[-1.0, 1.0]]])
    target = torch.tensor([[[1.5, 1.0]], [[2.0, -3.0]]])
    by_hand = ((1.0 ** 2 / 1 + 0.0) + (2.0 ** 2 / 4 + math.log(4.0))) / 2 \
        + ((0.0 + -1.0) + (3.0 ** 2 / math.e + 1.0)) / 2              # per member: mean over dimensions
    assert ensemble.gaussian_nll(mean, logvar, target).item() == pytest.approx(by_hand, rel=1e-6)
    normal = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    reference = (-2 * normal.log_prob(target) - math.log(2 * math.pi)).mean((-1, -2)).sum()
    assert ensemble.gaussian_nll(mean, logvar, target).item() == pytest.approx(reference.item(), rel=1e-6)


def test_log_variance_stays_between_its_bounds_and_is_free_between_them():
    low, high = torch.tensor(-10.0), torch.tensor(0.5)
    out = ensemble.bounded_logvar(torch.tensor([-1e3, -4.0, 1e3]), low, high)
    assert out[0].item() == pytest.approx(-10.0, abs=1e-4) and out[2].item() == pytest.approx(0.5, abs=1e-4)
    assert out[1].item() == pytest.approx(-4.0, abs=0.02)           # far from both bounds: about itself


def test_catastrophe_loss_weights_positives_by_negatives_per_positive():
    logit, label = torch.tensor([0.3, -1.0, 2.0, 0.0]), torch.tensor([1.0, 0.0, 0.0, 0.0])
    p = torch.sigmoid(logit)
    by_hand = -(3.0 * torch.log(p[0]) + torch.log(1 - p[1:]).sum()) / 4
    assert ensemble.catastrophe_loss(logit, label).item() == pytest.approx(by_hand.item(), rel=1e-6)
    none = ensemble.catastrophe_loss(logit, torch.zeros(4))             # no positive: the negatives alone
    assert none.item() == pytest.approx((-torch.log(1 - p)).mean().item(), rel=1e-6)


def test_ensemble_learns_a_linear_system_and_its_noise():
    """s' = s + 0.1 A s + 0.2 b a + 0.05 eps: the mean of s' - s within a few per cent of its
    variance, and the predicted noise standard deviation near 0.05."""
    rng = np.random.default_rng(0)
    A, b = np.array([[0.0, 1.0], [-1.0, -0.5]]), np.array([0.0, 1.0])
    s, a = rng.uniform(-1, 1, (3000, 2)), rng.uniform(-1, 1, (3000, 1))
    delta = 0.1 * s @ A.T + 0.2 * a * b + 0.05 * rng.normal(size=(3000, 2))
    data = {"observations": s.astype(np.float32), "actions": a.astype(np.float32),
            "next_observations": (s + delta).astype(np.float32), "costs": np.zeros(3000, np.float32)}
    torch.manual_seed(0)
    agent = carl.CARLAgent(2, 1, [-1.0], [1.0], dataclasses.replace(SMALL, lr=3e-3), carl.reward_function("navigation1", {}), 0)
    agent.fit(data, epochs=40)
    test_s, test_a = rng.uniform(-1, 1, (500, 2)), rng.uniform(-1, 1, (500, 1))
    truth = 0.1 * test_s @ A.T + 0.2 * test_a * b
    with torch.no_grad():
        mean, logvar, _ = agent.model(torch.tensor(test_s, dtype=torch.float32).expand(2, -1, -1),
                                      torch.tensor(test_a, dtype=torch.float32).expand(2, -1, -1))
    error = ((mean.numpy() - truth) ** 2).mean()
    assert error < 0.03 * truth.var(), (error, truth.var())
    assert 0.035 < torch.exp(0.5 * logvar).mean().item() < 0.07


def test_a_turned_over_pole_looks_the_same_to_the_model():
    obs = torch.tensor([[0.3, 0.2, -1.0, 0.5], [0.3, 0.2 + 2 * math.pi, -1.0, 0.5]])
    features = ensemble.angle_features(obs, carl.ANGLES["cartpole"])
    assert features.shape == (2, 5) and torch.allclose(features[0], features[1], atol=1e-5)
    assert torch.allclose(features[0], torch.tensor([0.3, -1.0, 0.5, math.sin(0.2), math.cos(0.2)]))


# ----------------------------------------------------------------------------- planning

def constant_ensemble(steps=(1.0, 2.0)) -> ProbabilisticEnsemble:
    """Two members that move the first coordinate by steps[b] per step, with (almost) no noise."""
    model = ProbabilisticEnsemble(2, 1, SMALL.ensemble, SMALL.hidden, SMALL.weight_decays)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.min_logvar.fill_(-40.0)
        model.max_logvar.fill_(-39.0)
        out = model.layers[-1].bias                                  # (B, 1, 2 obs + 2 logvar + 1 logit)
        out[:, 0, 2:4] = -40.0
        for member, step in enumerate(steps):
            out[member, 0, 0] = step
    return model


def test_each_particle_keeps_one_member_and_its_own_candidates_actions():
    model = constant_ensemble()
    actions = torch.arange(3 * 4, dtype=torch.float32).view(3, 4, 1)   # (N=3, H=4, 1): all different
    rewards, _ = carl.propagate(model, torch.zeros(2), actions, 4, lambda s, a, s2: s2[..., 0])
    assert rewards.shape == (3, 4, 4)
    expected = torch.tensor([[1.0, 2, 3, 4]] * 2 + [[2.0, 4, 6, 8]] * 2)   # particles 0-1: member 0; 2-3: member 1
    assert torch.allclose(rewards, expected.expand(3, 4, 4), atol=1e-4)
    taken, _ = carl.propagate(model, torch.zeros(2), actions, 4, lambda s, a, s2: a[..., 0])
    assert torch.equal(taken, actions[:, None, :, 0].expand(3, 4, 4))  # reward of step t sees a_t of its candidate


def test_cem_finds_the_optimum_of_a_known_quadratic():
    torch.manual_seed(0)
    target = torch.tensor([[0.6, -0.3], [-0.8, 0.1], [0.2, 0.9]])        # (H=3, act_dim=2), inside [-1, 1]
    low, high = -torch.ones(3, 2), torch.ones(3, 2)
    cfg = dataclasses.replace(SMALL, population=200, elites=20, iterations=30)
    found = carl.cem(lambda x: -((x - target) ** 2).sum((1, 2)), torch.zeros(3, 2), torch.full((3, 2), 0.25),
                     low, high, cfg, min_var=1e-6)
    assert torch.allclose(found, target, atol=0.05), found


def scores(rewards_of_particles, catastrophe_of_particles, risk, **changes):
    cfg = dataclasses.replace(SMALL, **changes)
    return carl.cautious_score(torch.tensor(rewards_of_particles), torch.tensor(catastrophe_of_particles), cfg, risk)


def test_state_caution_ranks_a_sequence_with_catastrophic_particles_below_a_safe_one():
    rewards = [[[1.0, 1.0]] * 4, [[0.9, 0.9]] * 4]                    # (N=2, P=4, H=2): sequence 0 earns more
    catastrophe = [[[0.1, 0.9], [0.1, 0.1], [0.2, 0.1], [0.1, 0.1]],  # one particle of four crosses 0.5
                   [[0.1, 0.4]] * 4]                                  # none does
    state = scores(rewards, catastrophe, "state")
    assert state[1] > state[0]
    assert state[0].item() == pytest.approx(2.0 - 1e4 * 0.25)
    assert scores(rewards, catastrophe, "none")[0] > scores(rewards, catastrophe, "none")[1]  # PETS: the reward alone


def test_reward_caution_plans_on_the_worst_particles():
    rewards = [[[5.0], [5.0], [5.0], [-9.0]],                          # higher mean (1.5), a bad tail
               [[1.0], [1.0], [1.0], [1.0]]]                          # mean 1, no tail
    none = torch.zeros(2, 4, 1).tolist()
    assert scores(rewards, none, "none")[0] > scores(rewards, none, "none")[1]
    cautious = scores(rewards, none, "reward", percentile=50.0)       # the worst 2 of 4 particles
    assert cautious.tolist() == pytest.approx([-2.0, 1.0])
    assert scores(rewards, none, "reward", percentile=100.0).tolist() == pytest.approx([1.5, 1.0])  # all: PETS


def test_plan_respects_the_action_bounds_and_moves_the_warm_start():
    torch.manual_seed(0)
    agent = carl.CARLAgent(2, 1, [-3.0], [3.0], SMALL, lambda s, a, s2: a[..., 0], 0)   # reward: push right
    action = agent.plan(np.zeros(2, np.float32), "state")
    assert -3.0 <= action[0] <= 3.0 and action[0] > 1.0
    assert agent.previous.shape == (SMALL.horizon, 1) and agent.previous[-1, 0] == 0.0


# ----------------------------------------------------------------------------- the environments' rewards

@pytest.mark.parametrize("name", ["cartpole", "halfcheetah", "ant", "navigation1", "maze"])
def test_planner_reward_is_the_environments(name):
    task = envs.test_task(name)
    env, reward_fn = envs.make_env(name, task, terminate_on_violation=False), carl.reward_function(name, task)
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(5):
        action = env.action_space.sample()
        next_obs, reward, *_ = env.step(action)
        s, a, s2 = (torch.tensor(np.asarray(x), dtype=torch.float64) for x in (obs, action, next_obs))
        planned = reward_fn(s, a, s2).item()
        if name in ("halfcheetah", "ant"):   # the same formula, on s''s x-velocity instead of the torso's displacement
            velocity = env.observation_space.shape[0] - env.unwrapped.model.nv
            reward = env.unwrapped._reward(next_obs[velocity], np.clip(action, -1, 1))
        assert planned == pytest.approx(reward, rel=1e-5, abs=1e-6)
        obs = next_obs


# ----------------------------------------------------------------------------- the methods

def test_carl_offline_pretrains_on_the_offline_datasets_alone(monkeypatch):
    def no_env(*args, **kwargs):
        raise AssertionError("CARL-Offline's Phase 1 touched an environment")
    monkeypatch.setattr(envs, "make_env", no_env)
    monkeypatch.setattr(envs, "train_tasks", no_env)
    train = [random_dataset(300, 4, 1, seed=i) for i in range(3)]
    test = random_dataset(100, 4, 1, seed=9)
    hp, _ = presets.job_config("cartpole", "carl_offline", "smoke", "paper", {})
    job = jobspec.Job("cartpole", "carl_offline", 0, "smoke", hp, 2, "out", "data", "default", "none")
    agent = carl.CARLAgent(4, 1, [-3.0], [3.0], hp.carl, lambda s, a, s2: s[..., 0], 0)
    carl_run.carl_phase1(job, agent, train, test, bar=type("Bar", (), {"update": lambda self, n: None})())
    pooled = np.concatenate([d["observations"] for d in [*train, test]])
    assert np.allclose(agent.model.input_mean[:4].numpy(), pooled.mean(0), atol=1e-5)


def test_carl_pretrains_in_training_tasks_only(monkeypatch):
    cfg = dataclasses.replace(SMALL, pretrain_episodes=1, epochs=1, population=8, elites=2, iterations=1,
                              particles=2, hidden=(8, 8), horizon=2)
    test_reward = carl.reward_function("cartpole", envs.test_task("cartpole"))
    agent = carl.CARLAgent(4, 1, [-3.0], [3.0], cfg, test_reward, 0)
    made, make_env = [], envs.make_env
    monkeypatch.setattr(envs, "make_env", lambda name, task, **kw: made.append(task) or make_env(name, task, **kw))
    data = carl.pretrain_online("cartpole", agent, seed=0)
    assert len(made) >= 2 and all(task in envs.train_tasks("cartpole") for task in made)   # envs and their rewards
    assert len(data["observations"]) == 2 * 200 and agent.reward_fn is test_reward      # episodes go on after a fall


def test_config_refuses_nonsense_in_one_line():
    with pytest.raises(ValueError, match="multiple of the ensemble"):
        CARLConfig(particles=7)
    with pytest.raises(ValueError, match="one weight decay per layer"):
        CARLConfig(hidden=(10, 10))
    with pytest.raises(ValueError, match="carl risk"):
        CARLConfig(risk="cautious")


def test_both_methods_end_to_end_on_cartpole(tmp_path):
    run.main(["--preset", "smoke", "--env", "cartpole", "--methods", "carl,carl_offline", "--seeds", "1",
              "--workers", "1", "--threads", "1", "--no-progress", "--out", str(tmp_path / "runs"),
              "--data-root", str(tmp_path / "data"), "--carl-risk", "reward"])
    folder = tmp_path / "runs" / "smoke_carl.risk-reward" / "cartpole"
    for method in carl.CARL_METHODS:
        rows = (folder / method / "seed0" / "episodes.csv").read_text().splitlines()
        assert rows[0].split(",") == list(experiment.report.COLUMNS) and len(rows) == 3
        assert (folder / method / "seed0" / "final.pt").exists()
    assert "| CARL-Offline | 1 |" in (folder / "summary.md").read_text()


def test_run_help_lists_both_methods_and_every_carl_option(capsys):
    with pytest.raises(SystemExit):
        run.main(["--help"])
    text = capsys.readouterr().out
    assert "carl_offline" in text
    for name in ("risk", "population", "particles", "horizon", "weight-decays", "pretrain-episodes"):
        assert f"--carl-{name}" in text


def test_presets_shrink_carl_only_where_documented():
    paper, _ = presets.preset_config("halfcheetah", "paper")
    quick, _ = presets.preset_config("halfcheetah", "quick")
    assert (paper.carl.population, paper.carl.particles, paper.carl.horizon, paper.carl.hidden) == (500, 20, 10, (200,) * 4)
    kept = ("horizon", "ensemble", "epochs", "catastrophe_penalty", "catastrophe_threshold", "pretrain_episodes", "lr")
    assert all(getattr(quick.carl, k) == getattr(paper.carl, k) for k in kept)
    assert quick.carl.weight_decays == (2.5e-5, 7.5e-5, 1e-4) and quick.carl.hidden == (200, 200)


def test_fine_tuning_keeps_the_pretrained_input_statistics():
    agent = carl.CARLAgent(4, 1, [-3.0], [3.0], dataclasses.replace(SMALL, epochs=1), lambda s, a, s2: s[..., 0], 0)
    agent.fit(random_dataset(500, 4, 1))
    before = agent.model.input_std.clone()
    env = envs.make_env("cartpole", envs.test_task("cartpole"))
    rows = list(carl.learn_online(env, agent, 1, seed=0))
    assert len(rows) == 1 and rows[0]["recovery_fraction"] == 0.0
    assert torch.equal(agent.model.input_std, before)   # not refitted to the few test transitions


# ----------------------------------------------------------------------------- resuming

CUT = ("--env", "cartpole", "--episodes", "5", "--checkpoint-every", "2", "--carl-pretrain-episodes", "3")


def smoke_carl(out, data_root, method, *extra):
    run.main(["--preset", "smoke", "--methods", method, "--seeds", "1", "--workers", "1", "--threads", "1",
              "--no-progress", "--out", str(out), "--data-root", str(data_root), *CUT, *extra])


def run_folder(out, method, *extra):
    args = run.build_parser().parse_args(["--preset", "smoke", *CUT, *extra])
    return out / run.config_name(args) / "cartpole" / method / "seed0"


@pytest.mark.parametrize("method", carl.CARL_METHODS)
def test_an_interrupted_carl_run_resumes_exactly(tmp_path, monkeypatch, capsys, method):
    """CARL stopped at its pretraining checkpoint (episode 2 of 4), then at its Phase-3 checkpoint
    (episode 4 of 5), and rerun each time, writes the same episodes.csv as an uninterrupted run;
    the checkpoints are then gone and phase1.pt stays. A configuration that changes only Phase 3
    (another episode count) reuses that phase1.pt and repeats the run's first episodes."""
    data = tmp_path / "data"
    smoke_carl(tmp_path / "whole", data, method)
    real_save = carl_run.save_checkpoint

    def stop_at(name, episode):
        def save_then_stop(state, path):
            real_save(state, path)
            done = state["pretraining"]["episode"] if name == "pretraining.pt" else state.get("episode")
            if str(path).endswith(name) and done == episode:
                raise KeyboardInterrupt
        monkeypatch.setattr(carl_run, "save_checkpoint", save_then_stop)

    folder = run_folder(tmp_path / "cut", method)
    if method == "carl":
        stop_at("pretraining.pt", 2)
        with pytest.raises(SystemExit):
            smoke_carl(tmp_path / "cut", data, method)
        assert (folder / "pretraining.pt").exists() and not (folder / "phase1.pt").exists()
        whole_file = (folder / "pretraining.pt").read_bytes()
        (folder / "pretraining.pt").write_bytes(whole_file[:100])           # damaged: one line, nothing lost
        with pytest.raises(SystemExit) as stop:
            smoke_carl(tmp_path / "cut", data, method)
        assert stop.value.code == 2 and "pretraining.pt is damaged" in capsys.readouterr().err
        (folder / "pretraining.pt").write_bytes(whole_file)
    stop_at("phase3.pt", 4)
    with pytest.raises(SystemExit):
        smoke_carl(tmp_path / "cut", data, method)
    assert ("resumed cartpole/carl/seed0 pretraining at episode 2" in capsys.readouterr().out) == (method == "carl")
    assert (folder / "phase3.pt").exists() and (folder / "phase1.pt").exists()
    assert not (folder / "pretraining.pt").exists() and not (folder / "episodes.csv").exists()
    monkeypatch.undo()
    smoke_carl(tmp_path / "cut", data, method)
    assert f"resumed cartpole/{method}/seed0 at episode 4" in capsys.readouterr().out
    whole = (run_folder(tmp_path / "whole", method) / "episodes.csv").read_text()
    assert (folder / "episodes.csv").read_text() == whole
    assert not (folder / "phase3.pt").exists() and (folder / "phase1.pt").exists()

    smoke_carl(tmp_path / "cut", data, method, "--episodes", "3")
    shorter = run_folder(tmp_path / "cut", method, "--episodes", "3")
    assert json.loads((shorter / "metrics.json").read_text()).get("phase1_cached") is True
    assert (shorter / "episodes.csv").read_text().splitlines() == whole.splitlines()[:4]


def test_carls_run_keys_read_carls_settings_alone_and_phase1_leaves_out_the_caution():
    hp, episodes = presets.job_config("cartpole", "carl", "quick", "paper", {})
    job = lambda h: jobspec.Job("cartpole", "carl", 0, "quick", h, episodes, "runs", "data", "default", "none")  # noqa: E731
    mesa_steps = dataclasses.replace(hp, meta=dataclasses.replace(hp.meta, steps=7))
    assert job(mesa_steps).key() == job(hp).key()                  # quick's MESA settings leave CARL's runs valid
    for change, phase1_reads in (({"risk": "reward"}, False), ({"catastrophe_penalty": 1.0}, False),
                                 ({"population": 50}, True), ({"pretrain_episodes": 2}, True)):
        other = job(dataclasses.replace(hp, carl=dataclasses.replace(hp.carl, **change)))
        assert other.key() != job(hp).key()
        assert (other.key(phase3=False) != job(hp).key(phase3=False)) == phase1_reads, change


# ----------------------------------------------------------------------------- evaluate.py

def test_evaluate_replays_a_carl_run_with_its_planner(tmp_path, capsys):
    """evaluate.py on a CARL run: its final ensemble planning with the run's caution on raw
    observations, the same episodes for the same seed, and one line where a critic is asked for."""
    smoke_carl(tmp_path / "runs", tmp_path / "data", "carl", "--carl-risk", "reward")
    folder = run_folder(tmp_path / "runs", "carl", "--carl-risk", "reward")
    saved = evaluate.SavedAgent(str(folder))
    final = torch.load(folder / "final.pt", weights_only=True)["carl"]["model"]
    assert all(torch.equal(final[k], v) for k, v in saved.planner.model.state_dict().items())
    assert saved.planner.cfg.risk == "reward" and saved.env is saved.raw_env and saved.safety is None
    first, again = (evaluate.run_episodes(saved, 2, False, 5) for _ in range(2))
    assert first["return"] == again["return"] and first["return"] != 0.0
    capsys.readouterr()
    evaluate.main([str(folder), "--episodes", "1"])
    out = capsys.readouterr().out
    assert "planner (risk reward)" in out and "  planner " in out and "pi_rec" not in out
    with pytest.raises(SystemExit) as stop:
        evaluate.main([str(folder), "--levels"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "needs a run with a critic" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- time estimates

def test_time_estimates_count_carls_pretraining_episodes(tmp_path):
    """quick CARL jobs have an estimate (timing.QUICK_SECONDS); a finished run's metrics.json gives
    seconds per pretraining episode (the random one included) and per Phase-3 episode."""
    hp, episodes = presets.job_config("cartpole", "carl", "quick", "paper", {})
    quick = jobspec.Job("cartpole", "carl", 0, "quick", hp, episodes, str(tmp_path / "none" / "quick"), "data",
                           "default", "none")
    per_pretraining, per_episode = timing.QUICK_SECONDS["cartpole"]["carl"]
    assert timing.estimate_seconds(quick) == pytest.approx(51 * per_pretraining + 200 * per_episode)
    assert all(timing.estimate_seconds(dataclasses.replace(quick, env=e, method=m)) > 3600
               for e in ("cartpole", "halfcheetah", "ant") for m in carl.CARL_METHODS)
    folder = tmp_path / "runs" / "smoke_x" / "cartpole" / "carl" / "seed0"
    folder.mkdir(parents=True)
    smoke_hp = presets.job_config("cartpole", "carl", "smoke", "paper", {"carl.pretrain_episodes": 4})[0]
    (folder / "config.json").write_text(json.dumps({"preset": "smoke", "episodes": 10,
                                                    "hyperparameters": dataclasses.asdict(smoke_hp)}))
    (folder / "metrics.json").write_text(json.dumps({"timings": {"phase1": 10.0, "phase3": 30.0}}))
    job = jobspec.Job("cartpole", "carl", 1, "smoke", smoke_hp, 7, str(tmp_path / "runs" / "smoke_y"), "data",
                         "default", "none")
    assert timing.measured_rates(job) == (2.0, 3.0) and timing.estimate_seconds(job) == 5 * 2.0 + 7 * 3.0
