"""LoFt, low-rank feature filtering (arXiv 2410.05814): the classifier reads features of the stated
rank, the backbone is left as it is, and ``--defense loft`` trains, combines, saves and reloads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from veil.agents import benchmark
from veil.agents.attack_cli import model_from_checkpoint
from veil.agents.cli import main
from veil.agents.fr_defenses import DefenseOptions, make_augment, parse_defenses, wrap_model
from veil.agents.plan import load_plan
from veil.attacks.cache import model_fingerprint, tensor_fingerprint
from veil.defenses.loft import LoFtConfig, LoFtModel
from veil.recognition import (
    DataConfig,
    ModelConfig,
    SplitConfig,
    Trainer,
    TrainerConfig,
    build_model,
    load_faces,
    split_identities,
)

TINY = ["--data", "synthetic", "--synthetic-identities", "8", "--synthetic-images", "6", "--image-size", "32",
        "--batch-size", "16", "--threads", "2"]


def _backbone(classes: int = 10, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(num_classes=classes, width=8, embedding_dim=32, image_size=32))


def test_the_classifier_reads_features_of_exactly_the_stated_rank() -> None:
    model = LoFtModel(_backbone(), embedding_dim=32, num_classes=10, config=LoFtConfig(rank=3)).eval()
    with torch.no_grad():
        out = model(torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert out["filtered"].shape == (64, 3) and torch.linalg.matrix_rank(out["filtered"]) == 3
    assert torch.linalg.matrix_rank(out["embedding"]) > 3  # what is filtered has more
    assert torch.linalg.matrix_rank(out["logits"] - model.up.bias) == 3  # 10 logits, 3 directions
    assert out["hidden"][-1] is out["filtered"]


def test_at_full_rank_without_activation_the_neck_filters_nothing() -> None:
    model = LoFtModel(_backbone(), embedding_dim=32, num_classes=10, config=LoFtConfig(rank=32, activation="none"))
    with torch.no_grad():
        logits = model.eval()(torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)))["logits"]
    assert torch.linalg.matrix_rank(logits - model.up.bias) == 10  # all the classes' directions


def test_the_backbone_and_its_embedding_are_the_undefended_models() -> None:
    x = torch.rand(4, 3, 32, 32)
    plain = _backbone(seed=3).eval()
    loft = wrap_model(_backbone(seed=3), DefenseOptions(names=("loft",)), 32, 10).eval()
    assert isinstance(loft, LoFtModel) and loft.up.in_features == LoFtConfig.rank == 50  # the paper's neck
    assert torch.equal(loft(x)["embedding"], plain(x)["embedding"])
    added = {n for n, _ in loft.named_parameters()} - {f"base.{n}" for n, _ in plain.named_parameters()}
    assert added == {"norm.weight", "norm.bias", "down.weight", "down.bias", "up.weight", "up.bias"}


def test_loft_keeps_clean_accuracy_close_to_the_undefended_model_trained_the_same_way() -> None:
    data = load_faces(DataConfig(synthetic_identities=16, synthetic_images=10, image_size=32))
    split = split_identities(data, SplitConfig())
    k = split.num_private
    top1 = {}
    for names in (("none",), ("loft",)):  # rank 8 of the 32-dim embedding: one direction per class
        model = wrap_model(_backbone(k), DefenseOptions(names=names, loft=LoFtConfig(rank=8)), 32, k)
        trainer = Trainer(model, TrainerConfig(epochs=15, batch_size=16, lr=3e-3), num_classes=k)
        trainer.fit(split.train_images, split.train_labels, progress=False)
        top1[names[0]] = trainer.evaluate(split.test_images, split.test_labels)["top1"]
    assert top1["none"] > 0.7 and top1["loft"] >= top1["none"] - 0.15, top1


@pytest.mark.parametrize("rank", [0, -3])
def test_a_rank_below_one_is_a_value_error_naming_it(rank: int) -> None:
    with pytest.raises(ValueError, match=f"LoFt rank must be a whole number >= 1, got {rank}"):
        LoFtConfig(rank=rank)
    with pytest.raises(ValueError, match="activation must be one of"):
        LoFtConfig(activation="gelu")


def test_loft_replaces_the_head_so_it_does_not_combine_with_mid() -> None:
    assert parse_defenses("loft,hybrid") == ("loft", "re", "mixup")
    with pytest.raises(ValueError, match="mid and loft cannot be combined"):
        parse_defenses("mid,loft")


def test_a_bad_rank_on_the_command_line_is_a_one_line_error_before_any_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-fr", "--defense", "loft", "--loft-rank", "0", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("veil train-fr: error: LoFt rank must be a whole number >= 1, got 0")
    assert "Traceback" not in err and not (tmp_path / "checkpoints").exists()


def test_train_fr_with_loft_and_hybrid_finishes_and_its_checkpoint_reloads_as_loft(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "loft.pt"
    assert main(["train-fr", *TINY, "--epochs", "1", "--defense", "loft,hybrid", "--loft-rank", "4",
                 "--checkpoint", str(ckpt)]) == 0
    model, run_id = model_from_checkpoint(ckpt)  # what an attack loads
    assert isinstance(model, LoFtModel) and model.down.out_features == 4 and run_id
    assert model(torch.rand(2, 3, 32, 32))["logits"].shape == (2, 4)
    augment = make_augment(DefenseOptions(names=parse_defenses("loft,hybrid")))
    assert augment is not None  # the augmentation defenses still act


def test_a_plan_row_joins_loft_with_the_augmentation_defenses(tmp_path: Path) -> None:
    path = tmp_path / "plan.toml"
    path.write_text('rows = ["none", "loft", "lofthy"]\n[defenses.lofthy]\nuse = "loft+hybrid"\nloft_rank = 8\n')
    plan = load_plan(path)
    job = benchmark.cell_job(plan, "lofthy", 0, benchmark.Tracking())
    assert job.defense.names == ("loft", "re", "mixup") and job.defense.loft == LoFtConfig(rank=8)
    assert benchmark.cell_job(plan, "loft", 0, benchmark.Tracking()).defense.loft == LoFtConfig()


def test_an_attack_rebuilds_a_mid_target_as_before_through_the_same_path(tmp_path: Path) -> None:
    from dataclasses import asdict

    from veil.defenses.baselines import MIDModel

    cfg = ModelConfig(num_classes=4, width=8, embedding_dim=16, image_size=32)
    opts = DefenseOptions(names=("mid",))
    trainer = Trainer(wrap_model(build_model(cfg), opts, 16, 4), TrainerConfig(), num_classes=4)
    trainer.save_checkpoint(tmp_path / "mid.pt", {"model_config": asdict(cfg), "defense": opts.params()})
    model, _ = model_from_checkpoint(tmp_path / "mid.pt")
    x = torch.rand(2, 3, 32, 32)
    assert isinstance(model, MIDModel) and torch.equal(model(x)["logits"], trainer.model.eval()(x)["logits"])


def test_a_loft_target_has_a_gan_cache_key_though_its_batchnorm_holds_a_0d_counter() -> None:
    model = LoFtModel(_backbone(), embedding_dim=32, num_classes=10, config=LoFtConfig(rank=3))
    assert any(v.dim() == 0 for v in model.state_dict().values())  # num_batches_tracked
    key = model_fingerprint(model)
    assert len(key) == 16 and key == model_fingerprint(model)
    next(v for v in model.state_dict().values() if v.dim() == 0).add_(1)
    assert model_fingerprint(model) != key  # the counter is part of the state it hashes


def test_flattening_leaves_the_key_of_an_nd_tensor_as_it_was() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # not contiguous
    h = hashlib.sha1(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.contiguous().view(torch.uint8).numpy().tobytes())  # the key before 0-d tensors were handled
    assert tensor_fingerprint(t) == h.hexdigest()[:16]
