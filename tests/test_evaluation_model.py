"""The evaluation model: a different architecture, trained on private train, cached."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from veil.attacks.evaluation import EvalModelConfig, _arch, _key, random_crop_shift, train_eval_model
from veil.recognition import DataConfig, ModelConfig, SplitConfig, build_model, load_faces, split_identities


@pytest.fixture(scope="module")
def split():
    data = load_faces(DataConfig(synthetic_identities=8, synthetic_images=12, image_size=32))
    return split_identities(data, SplitConfig(n_private=4))


def test_random_crop_shift_is_per_sample_and_keeps_shape_and_range() -> None:
    x = torch.rand(6, 3, 16, 16)
    y = torch.eye(6)
    out, ty = random_crop_shift(x, y, torch.Generator().manual_seed(0), scale_min=0.8, shift=0.1)
    assert out.shape == x.shape and torch.equal(ty, y)
    assert out.min() >= 0 and out.max() <= 1
    same = x[:1].expand(6, -1, -1, -1)
    moved, _ = random_crop_shift(same, y, torch.Generator().manual_seed(0), scale_min=0.8, shift=0.1)
    assert len({round(float(m.sum()), 3) for m in moved}) > 1  # different draws per sample


def test_identity_transform_when_no_zoom_and_no_shift() -> None:
    x = torch.rand(2, 1, 8, 8)
    out, _ = random_crop_shift(x, torch.eye(2), torch.Generator(), scale_min=1.0, shift=0.0)
    assert torch.allclose(out, x, atol=1e-5)


def test_eval_model_trains_learns_and_is_reused_from_the_cache(split) -> None:
    cfg = EvalModelConfig(model="cnn", epochs=12, batch_size=8, lr=3e-3)
    first = train_eval_model(split, cfg, progress=False)
    assert not first.cached and first.path is not None and first.path.is_file()
    assert first.metrics["top1"] > 1 / split.num_private  # above chance on the private test split
    second = train_eval_model(split, cfg, progress=False)
    assert second.cached and second.metrics == first.metrics
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_two_fresh_trainings_give_the_same_judge_whatever_the_caller_drew_before(split) -> None:
    cfg = EvalModelConfig(model="cnn", epochs=1, batch_size=8)
    torch.manual_seed(1)
    first = train_eval_model(split, cfg, cache=False, progress=False)
    torch.manual_seed(2)
    torch.rand(1000)  # another history of draws before the call
    second = train_eval_model(split, cfg, cache=False, progress=False)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_training_the_judge_leaves_the_callers_random_stream_alone(split) -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_eval_model(split, EvalModelConfig(model="cnn", epochs=1, batch_size=8), cache=False, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_a_damaged_cache_entry_is_retrained(split, capsys) -> None:
    cfg = EvalModelConfig(model="cnn", epochs=1, batch_size=8)
    first = train_eval_model(split, cfg, progress=False)
    first.path.write_bytes(b"not a checkpoint")
    again = train_eval_model(split, cfg, progress=False)
    assert not again.cached and "unreadable" in capsys.readouterr().out


def test_a_cache_that_cannot_be_written_keeps_the_fresh_model_with_a_warning(split, monkeypatch) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("veil.recognition.io.torch.save", read_only)
    with pytest.warns(UserWarning, match="could not write the evaluation-model cache"):
        ev = train_eval_model(split, EvalModelConfig(model="cnn", epochs=1, batch_size=8), progress=False)
    assert ev.path is None and not ev.cached and 0.0 <= ev.metrics["top1"] <= 1.0


def test_bad_config_names_the_value() -> None:
    with pytest.raises(ValueError, match="scale_min"):
        EvalModelConfig(scale_min=0.0)


# ----------------------------------------------------------------------------------- pretrained judge

def _pretrained_file(path: Path, split, classes: int = 9) -> Path:
    """A small-CNN state dict of another head size, as a user's pretrained file."""
    torch.manual_seed(123)
    torch.save(build_model(ModelConfig(num_classes=classes, image_size=32)).state_dict(), path)
    return path


def test_the_judge_starts_from_the_eval_weights_file(split, tmp_path: Path) -> None:
    file = _pretrained_file(tmp_path / "judge.pt", split)
    stored = torch.load(file, weights_only=True)
    cfg = EvalModelConfig(model="cnn", epochs=1, batch_size=8, lr=1e-9, weights=str(file))  # a step that moves nothing
    with pytest.warns(UserWarning, match="classifier head of another shape"):
        ev = train_eval_model(split, cfg, cache=False, progress=False)
    own = ev.model.state_dict()
    assert torch.allclose(own["stages.0.0.weight"], stored["stages.0.0.weight"], atol=1e-6)
    assert own["head.weight"].shape == (split.num_private, 128)
    scratch = train_eval_model(split, EvalModelConfig(model="cnn", epochs=1, batch_size=8, lr=1e-9), cache=False,
                               progress=False)
    assert not torch.allclose(scratch.model.state_dict()["stages.0.0.weight"], stored["stages.0.0.weight"])


def test_the_judges_cache_key_follows_the_weights_files_content_not_its_path(split, tmp_path: Path) -> None:
    a = _pretrained_file(tmp_path / "a.pt", split)
    same = tmp_path / "copy.pt"
    same.write_bytes(a.read_bytes())
    other = _pretrained_file(tmp_path / "b.pt", split, classes=7)
    key = lambda w: _key(split, EvalModelConfig(model="cnn", weights=w))  # noqa: E731
    assert key(str(a)) == key(str(same))
    assert key(str(a)) != key(str(other)) and key(str(a)) != key(None)


def test_a_judge_without_weights_keeps_its_cache_key_from_before_weights_existed(split) -> None:
    cfg = EvalModelConfig(model="cnn")
    h = hashlib.sha256()  # the key as veil 0.17 computed it
    for t in (split.train_images, split.train_labels, split.test_images, split.test_labels):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    old_config = {k: v for k, v in asdict(cfg).items() if k != "weights"}
    h.update(json.dumps({"config": old_config, "arch": asdict(_arch(split, cfg)), "v": "1"}, sort_keys=True).encode())
    assert _key(split, cfg) == h.hexdigest()[:20]


def test_a_missing_eval_weights_file_is_a_one_line_error_naming_it(split, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"weights file .*nowhere\.pt"):
        train_eval_model(split, EvalModelConfig(model="cnn", epochs=1, weights=str(tmp_path / "nowhere.pt")),
                         progress=False)
