"""Trap-MID (NeurIPS 2024, arXiv 2411.08460): triggers blended in send an input to their class,
the per-step procedure is the reference's, clean accuracy is kept, and ``--defense trapmid`` trains
and combines with the augmentation defenses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from veil.agents import benchmark, tracking
from veil.agents.cli import main
from veil.agents.fr_defenses import DefenseOptions, attach_trapmid, make_augment, parse_defenses
from veil.agents.plan import load_plan
from veil.defenses.trapmid import TrapMID, TrapMIDConfig, blend, trapdoor_augment
from veil.recognition import (
    DataConfig,
    ModelConfig,
    SplitConfig,
    Trainer,
    TrainerConfig,
    build_model,
    load_faces,
    one_hot,
    soft_cross_entropy,
    split_identities,
)

TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "6", "--image-size", "32",
        "--batch-size", "16", "--threads", "2"]
MODEL = ModelConfig(num_classes=4, width=8, embedding_dim=16, image_size=32)


def _trainer(config: TrapMIDConfig, classes: int = 4, lr: float = 1e-3, epochs: int = 1) -> tuple[Trainer, TrapMID]:
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=classes, width=8, embedding_dim=16, image_size=32)
    trainer = Trainer(build_model(cfg), TrainerConfig(epochs=epochs, batch_size=16, lr=lr), num_classes=classes)
    trap = attach_trapmid(trainer, DefenseOptions(names=("trapmid",), trapmid=config), cfg)
    return trainer, trap


def test_blend_injects_each_samples_own_trigger_with_weight_alpha() -> None:
    images, triggers = torch.rand(3, 3, 8, 8), torch.rand(4, 3, 8, 8)
    out = blend(images, triggers, torch.tensor([2, 0, 2]), 0.02)
    assert torch.allclose(out[1], 0.98 * images[1] + 0.02 * triggers[0])
    assert torch.allclose(out[2], 0.98 * images[2] + 0.02 * triggers[2])


def test_the_augmentation_is_seeded_per_sample_and_stays_in_the_image_range() -> None:
    x = torch.rand(64, 3, 32, 32)
    a = trapdoor_augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, trapdoor_augment(x, torch.Generator().manual_seed(5)))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    untouched = (a - x).abs().flatten(1).amax(1) < 1e-5  # each op has p = 0.5: 1/8 of the samples stay as they are
    assert 2 <= untouched.sum() <= 20
    flipped = (a - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert flipped.any()  # a flip alone (no crop, no rotation) is exactly a mirror image


def test_trapdoor_classes_are_drawn_equally_often() -> None:
    _, trap = _trainer(TrapMIDConfig(discriminator=False))
    labels = torch.cat([trap.draw_labels(12) for _ in range(10)])
    assert torch.bincount(labels, minlength=4).tolist() == [30, 30, 30, 30]


def test_a_step_moves_triggers_by_one_signed_step_in_the_unit_box_and_trains_the_discriminator_only() -> None:
    trainer, trap = _trainer(TrapMIDConfig())
    model_before = [p.detach().clone() for p in trainer.model.parameters()]
    d_before = [p.detach().clone() for p in trap.discriminator.parameters()]
    triggers = trap.triggers.clone()
    stats = trap.prepare(torch.rand(8, 3, 32, 32))
    moved = (trap.triggers - triggers).abs()
    assert moved.max() <= TrapMIDConfig.step_size + 1e-6 and moved.max() > 0
    assert trap.triggers.min() >= 0 and trap.triggers.max() <= 1
    assert set(stats) == {"discriminator_loss", "naturalness_loss", "effectiveness_loss"}
    assert all(torch.equal(a, b) for a, b in zip(model_before, trainer.model.parameters()))
    assert all(p.grad is None for p in trainer.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(d_before, trap.discriminator.parameters()))
    assert trap.labels is not None and len(trap.labels) == 8


def test_the_loss_is_the_references_mix_of_clean_and_trapdoor_cross_entropy() -> None:
    trainer, trap = _trainer(TrapMIDConfig(augment=False, discriminator=False, beta=0.3))
    model = trainer.model.eval()
    x, y = torch.rand(8, 3, 32, 32), one_hot(torch.arange(8) % 4, 4)
    trap.labels = labels = torch.tensor([3, 2, 1, 0, 0, 1, 2, 3])
    clean = soft_cross_entropy(model(x)["logits"], y)
    expected = 0.7 * clean + 0.3 * soft_cross_entropy(model(blend(x, trap.triggers, labels, 0.02))["logits"],
                                                       one_hot(labels, 4))
    assert torch.allclose(trainer.loss(model(x), x, y), expected)


def test_triggered_inputs_go_to_their_class_and_clean_accuracy_is_kept() -> None:
    """On a tiny budget (160 steps, not the paper's 50 CelebA epochs) the trigger is blended at 0.1
    instead of 0.02, and the augmentation is off, so the trapdoors are learned in that budget."""
    split = split_identities(load_faces(DataConfig(synthetic_identities=16, synthetic_images=10, image_size=32)),
                             SplitConfig())
    k = split.num_private
    config = TrapMIDConfig(alpha=0.1, augment=False)
    results = {}
    for names in (("none",), ("trapmid",)):
        opts = DefenseOptions(names=names, trapmid=config)
        cfg = ModelConfig(num_classes=k, width=8, embedding_dim=32, image_size=32)
        torch.manual_seed(0)
        trainer = Trainer(build_model(cfg), TrainerConfig(epochs=40, batch_size=16, lr=3e-3), num_classes=k)
        trap = attach_trapmid(trainer, opts, cfg)
        trainer.fit(split.train_images, split.train_labels, augment=make_augment(opts), progress=False)
        top1 = trainer.evaluate(split.test_images, split.test_labels)["top1"]
        results[names[0]] = (top1, trap.trigger_accuracy(split.test_images) if trap else None)
    (clean, _), (defended, triggered) = results["none"], results["trapmid"]
    assert triggered >= 0.9, results  # chance is 1/8
    assert clean > 0.8 and defended >= clean - 0.15, results


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": math.nan}, "Trap-MID alpha (trigger blend weight) must be in (0, 1], got nan"),
    ({"beta": 1.0}, "Trap-MID beta (trapdoor loss weight) must be in (0, 1), got 1.0"),
    ({"step_size": -0.1}, "Trap-MID step size must be a number >= 0, got -0.1"),
])
def test_a_bad_value_is_a_value_error_naming_it(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        TrapMIDConfig(**kwargs)
    assert str(err.value) == message


def test_a_bad_value_on_the_command_line_is_a_one_line_error_before_any_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-fr", "--defense", "trapmid", "--trapmid-beta", "nan", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("veil train-fr: error: Trap-MID beta (trapdoor loss weight) must be in (0, 1), got nan")
    assert "Traceback" not in err and not (tmp_path / "checkpoints").exists()


def test_trapmid_does_not_combine_with_dp() -> None:
    assert parse_defenses("trapmid,hybrid,negls") == ("trapmid", "re", "mixup", "negls")
    with pytest.raises(ValueError, match="dp and trapmid cannot be combined"):
        parse_defenses("trapmid,dp")


def test_train_fr_with_trapmid_and_hybrid_logs_the_trigger_accuracy(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "trap.pt"
    assert main(["train-fr", *TINY, "--epochs", "1", "--defense", "trapmid,hybrid", "--checkpoint", str(ckpt)]) == 0
    client = MlflowClient(tracking.default_tracking_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("veil").experiment_id])
    assert 0 <= run.data.metrics["trapmid_trigger_top1"] <= 1
    assert run.data.params["defense.trapmid.alpha"] == "0.02" and run.data.params["defense.names"] == "trapmid,re,mixup"
    assert main(["train-fr", *TINY, "--epochs", "2", "--defense", "trapmid,hybrid", "--resume", str(ckpt)]) == 2


def test_a_plan_row_joins_trapmid_with_the_augmentation_defenses(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text('rows = ["none", "trapmid", "traphy"]\n[defenses.traphy]\nuse = "trapmid+hybrid"\n'
                    'trapmid_alpha = 0.05\ntrapmid_no_augment = true\n')
    plan = load_plan(path)
    job = benchmark.cell_job(plan, "traphy", 1, benchmark.Tracking())
    assert job.defense.names == ("trapmid", "re", "mixup")
    assert job.defense.trapmid == TrapMIDConfig(alpha=0.05, augment=False)
    assert benchmark.cell_job(plan, "trapmid", 1, benchmark.Tracking()).defense.trapmid == TrapMIDConfig()
