"""The FR trainer: step, evaluate_batch, fit, checkpoints and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from veil.recognition import ModelConfig, Trainer, TrainerConfig, build_model, one_hot


def _trainer(name: str = "cnn", classes: int = 4, seed: int = 0, **cfg: object) -> Trainer:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name=name, num_classes=classes, width=8, embedding_dim=32))
    return Trainer(model, TrainerConfig(seed=seed, **cfg), num_classes=classes)


def _batch(n: int = 16, classes: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(n) % classes
    # each class has its own mean brightness pattern, so the task is learnable
    base = torch.rand(classes, 3, size, size, generator=g)
    x = (base[labels] + 0.1 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    return x, one_hot(labels, classes)


def _params(t: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.model.parameters()]


def test_repeated_steps_lower_the_loss() -> None:
    t = _trainer(lr=3e-3)
    x, y = _batch()
    first = t.step(x, y)
    for _ in range(15):
        last = t.step(x, y)
    assert last.loss < 0.5 * first.loss
    assert last.accuracy == 1.0
    assert first.grad_norm > 0 and t.global_step == 16


def test_step_changes_the_weights() -> None:
    t = _trainer()
    before = _params(t)
    t.step(*_batch())
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_evaluate_batch_changes_neither_parameters_nor_buffers(name: str) -> None:
    t = _trainer(name)
    t.step(*_batch())  # some optimizer state, BatchNorm running stats moved once
    params = _params(t)
    buffers = [b.clone() for b in t.model.buffers()]
    t.model.train()
    stats = t.evaluate_batch(*_batch())
    assert t.model.training
    assert all(torch.equal(a, b) for a, b in zip(params, t.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, t.model.buffers()))
    assert stats.loss > 0 and 0.0 <= stats.accuracy <= 1.0


def test_evaluate_batch_matches_soft_cross_entropy() -> None:
    t = _trainer()
    x, y = _batch()
    y = 0.7 * y + 0.3 * y.roll(1, dims=0)
    with torch.no_grad():
        t.model.eval()
        logits = t.model(x)["logits"]
    expected = -(y * logits.log_softmax(1)).sum(1).mean().item()
    assert t.evaluate_batch(x, y).loss == pytest.approx(expected, rel=1e-5)


def test_nan_images_are_rejected_with_a_clear_error() -> None:
    t = _trainer()
    x, y = _batch()
    x[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        t.step(x, y)


def test_targets_of_the_wrong_shape_are_rejected() -> None:
    t = _trainer()
    x, _ = _batch()
    with pytest.raises(ValueError, match="soft_targets must have shape"):
        t.step(x, torch.ones(16, 3) / 3)


def test_cosine_schedule_decays_to_one_percent() -> None:
    t = _trainer(lr=1e-2, total_steps=100)
    assert t.lr_at(0) == pytest.approx(1e-2)
    assert t.lr_at(50) == pytest.approx(1e-2 * (0.01 + 0.99 * 0.5))
    assert t.lr_at(100) == pytest.approx(1e-4)


def _uint8_set(n: int = 40, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _batch(n, classes)
    return (x * 255).round().to(torch.uint8), y.argmax(1)


def test_fit_learns_a_separable_set() -> None:
    t = _trainer(epochs=6, batch_size=8, lr=3e-3)
    x, y = _uint8_set()
    history = t.fit(x, y, x, y, progress=False)
    assert len(history) == 6
    assert history[-1]["test_top1"] == 1.0
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert t.evaluate(x, y)["top5"] == 1.0


def test_checkpoint_round_trip_restores_the_exact_state(tmp_path: Path) -> None:
    t = _trainer(epochs=2, batch_size=8)
    x, y = _uint8_set()
    t.fit(x, y, progress=False)
    path = t.save_checkpoint(tmp_path / "ck.pt", extra={"note": "hi"})
    u = _trainer(epochs=2, batch_size=8, seed=5)
    assert u.load_checkpoint(path) == {"note": "hi"}
    assert u.global_step == t.global_step and u.epoch == 2
    assert all(torch.equal(a, b) for a, b in zip(t.model.state_dict().values(), u.model.state_dict().values()))
    xb, yb = _batch()
    assert t.step(xb, yb).loss == pytest.approx(u.step(xb, yb).loss, rel=1e-6)


def test_resume_continues_exactly_where_training_stopped(tmp_path: Path) -> None:
    x, y = _uint8_set()
    straight = _trainer(epochs=4, batch_size=8)
    straight.fit(x, y, progress=False)

    first = _trainer(epochs=2, batch_size=8, total_steps=20)
    first.fit(x, y, checkpoint_path=tmp_path / "ck.pt", progress=False)
    resumed = _trainer(epochs=4, batch_size=8)
    resumed.load_checkpoint(tmp_path / "ck.pt")
    resumed.fit(x, y, progress=False)
    assert resumed.epoch == 4
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        _trainer().load_checkpoint(tmp_path / "bad.pt")


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = _trainer()
    path = t.save_checkpoint(tmp_path / "ck.pt")
    good = path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("veil.recognition.io.torch.save", crash)
    with pytest.raises(OSError):
        t.save_checkpoint(path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
