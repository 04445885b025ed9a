"""Whole-run episodes (``FaceScheduleEnv``) and ``veil learn-schedule``: the learner's policy is a
schedule, and what was learned replays exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from veil.agents.cli import main
from veil.agents.plan import load_plan
from veil.agents.schedules import load_schedule, save_schedule
from veil.agents.train_fr import FRJob, train_fr
from veil.env import FaceScheduleEnv, ScheduleGameConfig
from veil.recognition import DataConfig, SplitConfig, TrainerConfig

DATA = DataConfig(source="synthetic", synthetic_identities=6, synthetic_images=8, image_size=32)
FIX = {"label_follow": 0.0, "high_band": 0.0}


def game(**changes) -> ScheduleGameConfig:
    return ScheduleGameConfig(**{"data": DATA, "epochs": 3, "batch_size": 16, "segments": 3, "fixed_params": FIX,
                                 "seed": 5, **changes})


def play(env: FaceScheduleEnv, seed: int = 0) -> tuple[float, dict]:
    rng = np.random.default_rng(seed)
    env.reset()
    total, done, info = 0.0, False, {}
    while not done:
        _, reward, done, _, info = env.step(rng.uniform(-1, 1, 8).astype(np.float32))
        total += reward
    return total, info


def test_the_env_passes_gymnasiums_checker_and_observes_progress_only() -> None:
    env = FaceScheduleEnv(game(epochs=2, segments=2))
    check_env(env, skip_render_check=True)
    assert env.config.segment_ends() == [1, 2]
    assert env.config.observation(0).tolist() == [0.0, 1.0, 0.0]
    assert env.config.observation(1).tolist() == [0.5, 0.0, 1.0]


def test_the_reward_comes_at_the_end_and_prices_accuracy_beyond_the_budget() -> None:
    probe = lambda model, split, seed: 0.25  # noqa: E731
    env = FaceScheduleEnv(game(acc_reference=1.0, budget=2.0, penalty=5.0), probe=probe)
    env.reset()
    rewards = [env.step(np.zeros(8, dtype=np.float32))[1] for _ in range(2)]
    assert rewards == [0.0, 0.0]
    _, reward, done, _, info = env.step(np.zeros(8, dtype=np.float32))
    drop = 100 * (1.0 - info["acc_val"])
    assert done and info["probe_top1"] == 0.25 and info["drop"] == pytest.approx(drop)
    assert reward == pytest.approx(-0.25 - 5.0 * max(0.0, drop - 2.0) / 100)
    assert len(info["segment_params"]) == 3 and all(p.label_follow == 0.0 for p in info["segment_params"])


def test_the_played_schedule_replayed_by_train_fr_gives_the_same_model(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = FaceScheduleEnv(game())
    play(env)
    path = save_schedule(env.schedule, tmp_path / "played.toml")
    job = FRJob(data=DATA, split=SplitConfig(validation=True), train=TrainerConfig(epochs=3, batch_size=16, seed=5),
                augment_schedule=str(path), threads=2, checkpoint=str(tmp_path / "replay.pt"))
    train_fr(job)
    replay = torch.load(tmp_path / "replay.pt", weights_only=True)["model"]
    for key, value in env.model.state_dict().items():
        assert torch.equal(replay[key], value), key


def test_a_copied_game_state_continues_the_same_run() -> None:
    a, b = FaceScheduleEnv(game()), FaceScheduleEnv(game())
    a.reset()
    a.step(np.full(8, 0.3, dtype=np.float32))
    state = a.game_state()
    a.step(np.full(8, -0.4, dtype=np.float32))
    b.set_game_state(state)  # restores the global RNG too, as a resumed trainer does
    b.step(np.full(8, -0.4, dtype=np.float32))
    for key, value in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[key], value), key


PLAN = """
out_dir = "."
[data]
source = "synthetic"
synthetic_identities = 6
synthetic_images = 8
image_size = 32
[budget]
epochs = 2
batch_size = 16
threads = 2
[attacks]
names = ["pca"]
steps = 5
restarts = 1
attack_seeds = 1
eval_epochs = 1
[race]
validation_seeds = [0]
test_seeds = [5]
[learn.t1-ppo]
episodes = 2
segments = 2
acc_reference = 0.9
ppo_episodes_per_update = 1
out = "learned/t1-ppo.toml"
"""


def test_learn_schedule_writes_the_schedule_its_ppo_policy_plays(tmp_path: Path) -> None:
    (tmp_path / "plan.toml").write_text(PLAN)
    assert main(["learn-schedule", "--config", str(tmp_path / "plan.toml"), "--name", "t1-ppo"]) == 0
    schedule = load_schedule(tmp_path / "learned" / "t1-ppo.toml")
    record = json.loads((tmp_path / "learned" / "t1-ppo.json").read_text())
    assert len(schedule.phases) == 2 and [p.until for p in schedule.phases] == [0.5, 1.0]
    free = {"radius", "erase_p"}
    for phase in schedule.phases:  # only the free parameters move; the rest sit at the box's centre
        assert phase.params.k == 4 and phase.params.label_follow == 0.0 and not phase.params.high_band
        assert 0.0125 <= phase.params.radius <= 0.2
    assert record["fr_runs"] == 2 and len(record["episodes"]) == 2 and free <= set(record["episodes"][0]["params"][0])
    assert all(0.0 <= e["probe_top1"] <= 1.0 for e in record["episodes"])
    assert load_plan(tmp_path / "plan.toml").learn["t1-ppo"].out == str(tmp_path / "learned" / "t1-ppo.toml")


def test_learn_schedule_with_pbt_scores_members_on_privacy_at_every_segment(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    plan = PLAN.replace("[learn.t1-ppo]", "[learn.t1-pbt]\nlearner = \"pbt\"").replace("t1-ppo.toml", "t1-pbt.toml")
    (tmp_path / "plan.toml").write_text(plan)
    assert main(["learn-schedule", "--config", str(tmp_path / "plan.toml"), "--name", "t1-pbt"]) == 0
    schedule = load_schedule(tmp_path / "learned" / "t1-pbt.toml")
    record = json.loads((tmp_path / "learned" / "t1-pbt.json").read_text())
    assert len(schedule.phases) == 2 and record["fr_runs"] == 2 and len(record["episodes"]) == 2
    best = max(record["episodes"], key=lambda m: m["reward"])
    assert [p["radius"] for p in best["params"]] == [p.params.radius for p in schedule.phases]
