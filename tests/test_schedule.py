"""Augmentation schedules: settings by training progress, boxes drawn per batch, their files, and
``veil train-fr --augment-schedule``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from veil.agents.cli import main
from veil.agents.schedules import ScheduleAugmenter, load_schedule, save_schedule, schedule_toml
from veil.defenses.params import AugmentParams
from veil.defenses.schedule import ParamBox, Phase, Schedule, two_phase

STRONG = AugmentParams(k=4, radius=0.2, erase_p=0.5, erase_area=0.26, label_follow=0.0)
RELAXED = replace(STRONG, radius=0.025)
BOX = ParamBox({"k": (1, 6), "alpha": (0.2, 5.0), "radius": (0.0125, 0.2), "high_band": (0, 0),
                "erase_p": (0.0, 1.0), "erase_area": (0.02, 0.5), "erase_aspect": (1.0, 3.3),
                "label_follow": (0.0, 0.0)})


def batch(n: int = 8, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 16, 16, generator=g)
    return images, torch.nn.functional.one_hot(torch.arange(n) % classes, classes).float()


def test_a_two_phase_schedule_switches_setting_at_its_fraction_of_the_run() -> None:
    s = two_phase(STRONG, RELAXED, 1 / 3)
    assert [s.params_at(p).radius for p in (0.0, 0.2, 0.333, 1 / 3, 0.5, 1.0)] == [0.2, 0.2, 0.2, 0.025, 0.025, 0.025]
    assert two_phase(STRONG, RELAXED, 2 / 3, strong_first=False).params_at(0.1).radius == 0.025


def test_a_box_draws_whole_k_log_uniform_radius_and_keeps_fixed_parameters() -> None:
    g = torch.Generator().manual_seed(0)
    draws = [BOX.sample(g) for _ in range(400)]
    assert {d.k for d in draws} == {1, 2, 3, 4, 5, 6}
    assert all(d.label_follow == 0.0 and not d.high_band for d in draws)
    radii = torch.tensor([d.radius for d in draws])
    assert radii.min() >= 0.0125 and radii.max() <= 0.2
    # log-uniform: the geometric midpoint 0.05 splits the draws in half (a uniform draw puts ~80% above it)
    assert 0.4 < (radii < 0.05).float().mean().item() < 0.6


def test_a_box_must_fix_the_band_switch_and_name_every_parameter() -> None:
    with pytest.raises(ValueError, match="high_band is a switch"):
        ParamBox({**BOX.ranges, "high_band": (0, 1)})
    with pytest.raises(ValueError, match="label_follow missing"):
        ParamBox({k: v for k, v in BOX.ranges.items() if k != "label_follow"})
    with pytest.raises(ValueError, match="radius .* leaves its range"):
        ParamBox({**BOX.ranges, "radius": (0.1, 1.5)})


@pytest.mark.parametrize("phases, message", [
    ((), "at least one phase"),
    ((Phase(0.5, params=STRONG),), "must end at 1"),
    ((Phase(0.6, params=STRONG), Phase(0.3, params=RELAXED), Phase(1.0, params=RELAXED)), "increasing order"),
])
def test_phases_must_cover_the_run_in_order(phases: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Schedule(phases)


def test_a_schedule_file_reads_back_equal_and_bad_files_name_the_entry(tmp_path: Path) -> None:
    s = Schedule((Phase(0.5, params=STRONG), Phase(1.0, box=BOX)))
    path = save_schedule(s, tmp_path / "s.toml", note="strong, then drawn")
    assert load_schedule(path) == s
    text = schedule_toml(s)
    (tmp_path / "bad.toml").write_text(text.replace("radius = 0.2\n", "radius = 2.0\n"))
    with pytest.raises(ValueError, match=r"bad.toml: phase 1: radius must be in \[0, 1\]"):
        load_schedule(tmp_path / "bad.toml")
    (tmp_path / "fmt.toml").write_text(text.replace("veil-schedule-1", "veil-schedule-9"))
    with pytest.raises(ValueError, match="format must be"):
        load_schedule(tmp_path / "fmt.toml")
    (tmp_path / "short.toml").write_text(text.replace("erase_p = 0.5\n", "", 1))
    with pytest.raises(ValueError, match="phase 1: give every parameter; erase_p missing"):
        load_schedule(tmp_path / "short.toml")
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_schedule(tmp_path / "missing.toml")


def test_the_augmenter_follows_the_step_and_is_seeded() -> None:
    aug = ScheduleAugmenter(two_phase(STRONG, replace(RELAXED, k=1, erase_p=0.0), 0.5), seed=3)
    x, y = batch()
    out_early, t_early = aug(x, y, step=0, total_steps=10)
    assert aug.last_params.radius == 0.2 and not torch.equal(out_early, x)
    out_late, t_late = aug(x, y, step=5, total_steps=10)
    assert aug.last_params.k == 1 and torch.equal(out_late, x) and torch.equal(t_late, y)  # no mixing, no erasing
    again = ScheduleAugmenter(two_phase(STRONG, replace(RELAXED, k=1, erase_p=0.0), 0.5), seed=3)
    assert torch.equal(again(x, y, step=0, total_steps=10)[0], out_early)
    means = aug.take_param_means()
    assert means["radius"] == pytest.approx((0.2 + 0.025) / 2) and aug.take_param_means() == {}


def test_label_preserving_phases_keep_each_sample_its_own_target() -> None:
    aug = ScheduleAugmenter(Schedule((Phase(1.0, box=BOX),)), seed=0)
    x, y = batch()
    _, targets = aug(x, y, step=0, total_steps=1)
    assert torch.equal(targets, y)


def test_train_fr_trains_with_a_schedule_and_refuses_it_beside_mixup(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = save_schedule(two_phase(STRONG, RELAXED, 0.5), tmp_path / "s.toml")
    tiny = ["train-fr", "--data", "synthetic", "--synthetic-identities", "6", "--synthetic-images", "6",
            "--image-size", "32", "--batch-size", "16", "--epochs", "2", "--threads", "1"]
    assert main([*tiny, "--augment-schedule", str(path)]) == 0
    out = capsys.readouterr().out
    assert "augment schedule:" in out and "schedule chose" in out and "radius 0.11" in out  # 0.2 then 0.025
    assert main([*tiny, "--augment-schedule", str(path), "--defense", "mixup"]) == 2
    assert "drop --policy and re/mixup/hybrid" in capsys.readouterr().err
