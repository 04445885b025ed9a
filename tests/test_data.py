"""Face data: loaders, bad input, cache and the private/public split."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from veil.recognition import ModelConfig, Trainer, TrainerConfig, build_model
from veil.recognition.data import (
    DataConfig,
    DataError,
    FaceData,
    MappedImages,
    SplitConfig,
    _Aligner,
    _folder_entries,
    cache_entry,
    load_faces,
    split_identities,
    to_float,
)


def _write_face(path: Path, value: int, size: tuple[int, int] = (40, 50), mode: str = "RGB") -> None:
    rng = np.random.default_rng(value)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    arr = np.clip(rng.normal(value, 20, shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr, mode).save(path)


@pytest.fixture
def folder_set(tmp_path: Path) -> Path:
    """4 identities x 5 images of mixed sizes and modes, and a stray top-level file."""
    root = tmp_path / "faces"
    for i in range(4):
        d = root / f"person_{i}"
        d.mkdir(parents=True)
        for j in range(5):
            _write_face(d / f"{j}.png", 40 * i + j, size=(30 + 10 * j, 60), mode="L" if i == 0 else "RGB")
    (root / "README.txt").write_text("not an identity")
    return root


def test_folder_loader_resizes_every_image_to_the_configured_square(folder_set: Path) -> None:
    data = load_faces(DataConfig(source=str(folder_set), image_size=24))
    assert data.images.shape == (20, 3, 24, 24)
    assert data.images.dtype == torch.uint8
    assert data.names == [f"person_{i}" for i in range(4)]
    assert data.labels.tolist() == [i for i in range(4) for _ in range(5)]
    assert all(Path(p).parent.name == data.names[l] for p, l in zip(data.paths, data.labels.tolist()))


def test_empty_identity_folder_is_skipped_with_a_warning(folder_set: Path) -> None:
    (folder_set / "empty_person").mkdir()
    with pytest.warns(UserWarning, match="empty_person"):
        data = load_faces(DataConfig(source=str(folder_set), image_size=16))
    assert "empty_person" not in data.names and data.num_identities == 4


def test_grey_image_becomes_three_equal_channels(folder_set: Path) -> None:
    data = load_faces(DataConfig(source=str(folder_set), image_size=16))
    grey = data.images[data.labels == 0]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])


def test_one_channel_option_gives_grey_images(folder_set: Path) -> None:
    data = load_faces(DataConfig(source=str(folder_set), image_size=16, channels=1))
    assert data.images.shape == (20, 1, 16, 16)


def test_corrupt_image_is_skipped_with_a_warning_naming_it(folder_set: Path) -> None:
    bad = folder_set / "person_1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        data = load_faces(DataConfig(source=str(folder_set), image_size=16))
    assert len(data) == 20
    assert not any("broken" in p for p in data.paths)


def test_corrupt_image_is_an_error_in_strict_mode(folder_set: Path) -> None:
    (folder_set / "person_2" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="broken.png"):
        load_faces(DataConfig(source=str(folder_set), image_size=16, strict=True))


def test_a_strict_load_is_not_bypassed_by_a_lenient_loads_cache(folder_set: Path) -> None:
    (folder_set / "person_2" / "broken.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="broken.png"):
        load_faces(DataConfig(source=str(folder_set), image_size=16))  # lenient: skips it, caches the rest
    with pytest.raises(DataError, match="broken.png"):
        load_faces(DataConfig(source=str(folder_set), image_size=16, strict=True))


@pytest.mark.parametrize("side", [7000, 14000])  # 49 Mpx: over veil's limit; 196 Mpx: over PIL's own too
def test_a_decompression_bomb_is_skipped_with_a_warning_before_it_is_decoded(folder_set: Path, side: int) -> None:
    bomb = folder_set / "person_1" / "bomb.png"
    Image.new("1", (side, side)).save(bomb, optimize=True)  # tens of KB on disk
    assert bomb.stat().st_size < 100_000
    with pytest.warns(UserWarning, match="(?i)bomb.png.*decompression bomb"):
        data = load_faces(DataConfig(source=str(folder_set), image_size=16))
    assert len(data) == 20 and not any(Path(p).name == "bomb.png" for p in data.paths)
    with pytest.raises(DataError, match="bomb.png"):
        load_faces(DataConfig(source=str(folder_set), image_size=16, strict=True))


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), OSError(30, "Read-only file system")])
def test_a_cache_that_cannot_be_written_only_warns(folder_set: Path, monkeypatch: pytest.MonkeyPatch,
                                                   error: Exception) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("veil.recognition.data.np.save", fail)  # a full disk, a read-only cache
    with pytest.warns(UserWarning, match="could not write the data cache"):
        data = load_faces(DataConfig(source=str(folder_set), image_size=16))
    assert len(data) == 20
    assert not list(Path(os.environ["VEIL_CACHE_DIR"]).glob("*.tmp")) and not list(
        Path(os.environ["VEIL_CACHE_DIR"]).glob(".faces-*"))  # no half-written file left


def test_path_without_identities_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "stray.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no identities"):
        load_faces(DataConfig(source=str(tmp_path)))


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_faces(DataConfig(source=str(tmp_path / "nowhere")))


def test_second_load_comes_from_the_cache(folder_set: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = DataConfig(source=str(folder_set), image_size=16)
    first = load_faces(cfg)
    assert len(list((tmp_path / "cache").glob("faces-*.npy"))) == 1
    assert len(list((tmp_path / "cache").glob("faces-*.json"))) == 1

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("images were decoded again instead of read from the cache")

    monkeypatch.setattr("veil.recognition.data._read_images", no_decoding)
    second = load_faces(cfg)
    assert torch.equal(first.images, second.images) and first.names == second.names


def test_changed_file_invalidates_the_cache(folder_set: Path) -> None:
    cfg = DataConfig(source=str(folder_set), image_size=16)
    first = load_faces(cfg)
    _write_face(folder_set / "person_3" / "0.png", 250)
    second = load_faces(cfg)
    assert not torch.equal(first.images, second.images)


def test_celeba_identity_file_layout(tmp_path: Path) -> None:
    img_dir = tmp_path / "img_align_celeba"
    img_dir.mkdir()
    lines = []
    for k in range(9):
        _write_face(img_dir / f"{k:06d}.jpg", 20 * k, size=(44, 54))
        lines.append(f"{k:06d}.jpg {k % 3 + 10}")
    (tmp_path / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    data = load_faces(DataConfig(source=str(tmp_path), image_size=20))
    assert data.names == ["10", "11", "12"]
    assert data.images.shape == (9, 3, 20, 20)
    assert np.bincount(data.labels.numpy()).tolist() == [3, 3, 3]


def test_split_is_deterministic_and_identity_disjoint(folder_set: Path) -> None:
    data = load_faces(DataConfig(source=str(folder_set), image_size=16))
    a = split_identities(data, SplitConfig(n_private=2, test_fraction=0.4, seed=3))
    b = split_identities(data, SplitConfig(n_private=2, test_fraction=0.4, seed=3))
    assert a.private_names == b.private_names and torch.equal(a.train_index, b.train_index)
    assert set(a.private_names).isdisjoint(a.public_names)
    assert len(a.private_names) + len(a.public_names) == 4
    assert set(a.train_index.tolist()).isdisjoint(a.test_index.tolist())
    assert len(a.train_labels) == 6 and len(a.test_labels) == 4  # 5 images -> 3 train / 2 test each
    assert sorted(a.train_labels.unique().tolist()) == [0, 1]
    c = split_identities(data, SplitConfig(n_private=2, seed=4))
    assert c.private_names != a.private_names or not torch.equal(c.test_index, a.test_index)


def test_a_validation_split_comes_from_the_training_images_and_leaves_the_test_images_out(folder_set: Path) -> None:
    data = load_faces(DataConfig(source=str(folder_set), image_size=16))
    real = split_identities(data, SplitConfig(n_private=2, test_fraction=0.4, seed=3))
    val = split_identities(data, SplitConfig(n_private=2, test_fraction=0.4, seed=3, validation=True))
    assert val.private_names == real.private_names and val.kind == "validation" and real.kind == "test"
    used = set(val.train_index.tolist()) | set(val.test_index.tolist())
    assert used == set(real.train_index.tolist())  # 5 images: 2 test set aside, 3 train -> 2 train / 1 validation
    assert set(real.test_index.tolist()).isdisjoint(used)
    assert len(val.train_labels) == 4 and len(val.test_labels) == 2
    assert val.summary()["split_kind"] == "validation"


def test_a_validation_split_needs_two_training_images_per_identity(tmp_path: Path) -> None:
    for name in ("ann", "bob", "cy"):
        (tmp_path / name).mkdir()
        for i in range(2):  # 2 images: 1 test, 1 train -> nothing left to validate on
            Image.fromarray(np.full((16, 16), 40 * i + 10, np.uint8)).save(tmp_path / name / f"{i}.png")
    data = load_faces(DataConfig(source=str(tmp_path), image_size=16, use_cache=False))
    with pytest.raises(DataError, match="training image.*validation split needs >= 2"):
        split_identities(data, SplitConfig(n_private=2, validation=True))


def test_split_keeps_images_with_their_identity(folder_set: Path) -> None:
    data = load_faces(DataConfig(source=str(folder_set), image_size=16))
    s = split_identities(data, SplitConfig(n_private=2))
    for img, lab in zip(s.test_images, s.test_labels):
        src = (data.images == img).flatten(1).all(1).nonzero().flatten()
        assert data.names[data.labels[src[0]]] == s.private_names[lab]


def test_att_faces_load_as_40_identities_of_10(att_root: Path) -> None:
    data = load_faces(DataConfig(source="att", image_size=64))
    assert data.images.shape == (400, 3, 64, 64)
    assert data.num_identities == 40
    assert np.bincount(data.labels.numpy()).tolist() == [10] * 40
    split = split_identities(data, SplitConfig(n_private=20))
    assert (len(split.train_labels), len(split.test_labels)) == (140, 60)


def test_cfp_lists_300_identities_with_10_frontal_images(cfp_root: Path) -> None:
    entries = _folder_entries(cfp_root, pose="frontal")
    assert len(entries) == 300
    assert all(len(f) == 10 and all(x.name.startswith("frontal") for x in f) for f in entries.values())
    profiles = _folder_entries(cfp_root, pose="profile")
    assert all(len(f) == 4 for f in profiles.values())


def test_cfp_images_load_as_rgb_squares(cfp_root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_faces(DataConfig(source="cfp", image_size=48, max_identities=6))
    assert data.images.shape == (60, 3, 48, 48)
    assert data.images.float().std() > 10  # real pictures, not blank squares


def test_mtcnn_alignment_gives_aligned_squares(cfp_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "two"
    for ident in sorted(p.name for p in cfp_root.iterdir() if p.is_dir())[:2]:
        (root / ident).mkdir(parents=True)
        for f in sorted((cfp_root / ident).glob("frontal_0[12].jpg")):
            (root / ident / f.name).symlink_to(f)
    data = load_faces(DataConfig(source=str(root), image_size=64, align=True))
    assert data.images.shape == (4, 3, 64, 64)
    plain = load_faces(DataConfig(source=str(root), image_size=64))
    assert not torch.equal(data.images, plain.images)


# ----------------------------------------------------------------------------------- memory-mapped sets

def _mapped_and_in_memory(root: Path, **kw: object) -> tuple[FaceData, FaceData]:
    mapped = load_faces(DataConfig(source=str(root), image_size=16, in_memory=False, **kw))
    in_memory = load_faces(DataConfig(source=str(root), image_size=16, in_memory=True, **kw))
    return mapped, in_memory


def test_a_memory_mapped_set_holds_the_same_images_labels_and_names(folder_set: Path) -> None:
    mapped, in_memory = _mapped_and_in_memory(folder_set)
    assert isinstance(mapped.images, MappedImages) and isinstance(in_memory.images, torch.Tensor)
    assert mapped.images.shape == in_memory.images.shape == (20, 3, 16, 16)
    assert torch.equal(mapped.images[:], in_memory.images) and torch.equal(mapped.labels, in_memory.labels)
    assert mapped.names == in_memory.names and mapped.paths == in_memory.paths


def test_splitting_a_memory_mapped_set_copies_indices_not_images(folder_set: Path) -> None:
    mapped, in_memory = _mapped_and_in_memory(folder_set)
    a, b = (split_identities(d, SplitConfig(n_private=2, seed=1)) for d in (mapped, in_memory))
    for name in ("train_images", "test_images", "public_images"):
        m = getattr(a, name)
        assert isinstance(m, MappedImages) and m._array is mapped.images._array  # one mapping, no copy
        assert torch.equal(m[:], getattr(b, name))
    assert torch.equal(a.train_labels, b.train_labels) and torch.equal(a.train_index, b.train_index)


def test_the_memory_mapped_loader_gives_the_same_batches_as_the_in_memory_one(folder_set: Path) -> None:
    mapped, in_memory = _mapped_and_in_memory(folder_set, workers=2)
    a, b = (split_identities(d, SplitConfig(n_private=3, seed=0)) for d in (mapped, in_memory))
    trainer = Trainer(build_model(ModelConfig(num_classes=3, image_size=16, width=4)), TrainerConfig(batch_size=4), 3)
    order = torch.randperm(len(a.train_labels), generator=torch.Generator().manual_seed(5))
    got = list(trainer.batches(a.train_images, a.train_labels, order))
    want = list(trainer.batches(b.train_images, b.train_labels, order))
    assert [len(y) for _, y in got] == [4, 4, 1]
    for (xa, ya), (xb, yb) in zip(got, want, strict=True):
        assert xa.dtype == torch.uint8 and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_training_on_a_memory_mapped_set_is_bit_identical_to_training_in_memory(folder_set: Path) -> None:
    mapped, in_memory = _mapped_and_in_memory(folder_set, workers=1)
    runs = []
    for data in (mapped, in_memory):
        split = split_identities(data, SplitConfig(n_private=3, seed=0))
        torch.manual_seed(0)
        trainer = Trainer(build_model(ModelConfig(num_classes=3, image_size=16, width=4)),
                          TrainerConfig(epochs=2, batch_size=4, seed=3), 3)
        history = trainer.fit(split.train_images, split.train_labels, split.test_images, split.test_labels,
                              progress=False)
        kept = [{k: v for k, v in h.items() if k != "images_per_s"} for h in history]
        runs.append((kept, trainer.model.state_dict()))
    (h1, w1), (h2, w2) = runs
    assert h1 == h2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_a_set_over_the_size_threshold_is_streamed_into_a_mapped_cache_entry(folder_set: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    in_memory = load_faces(DataConfig(source=str(folder_set), image_size=16, use_cache=False))
    (folder_set / "person_1" / "9.png").write_bytes(b"not a png")  # a skipped file leaves a row no index names
    monkeypatch.setattr("veil.recognition.data.IN_MEMORY_MAX_BYTES", 100)
    monkeypatch.setattr("veil.recognition.data._read_images", lambda *a: pytest.fail("the set was read into memory"))
    with pytest.warns(UserWarning, match="9.png"):
        mapped = load_faces(DataConfig(source=str(folder_set), image_size=16))
    assert isinstance(mapped.images, MappedImages) and mapped.images._array.shape[0] == 21
    assert torch.equal(mapped.images[:], in_memory.images) and torch.equal(mapped.labels, in_memory.labels)
    again = load_faces(DataConfig(source=str(folder_set), image_size=16))  # now from the cache, still mapped
    assert isinstance(again.images, MappedImages) and torch.equal(again.images[:], in_memory.images)


def test_tensor_operations_on_a_mapped_set_read_it_into_memory(folder_set: Path) -> None:
    mapped, in_memory = _mapped_and_in_memory(folder_set)
    assert torch.equal(to_float(mapped.images), to_float(in_memory.images))
    assert torch.equal(torch.cat([mapped.images[:2], mapped.images[2:]]), in_memory.images)
    assert torch.equal(mapped.images[3], in_memory.images[3]) and mapped.images[3].shape == (3, 16, 16)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "metadata"])
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning_naming_the_file(folder_set: Path, tmp_path: Path,
                                                                          damage: str) -> None:
    first = load_faces(DataConfig(source=str(folder_set), image_size=16))
    npy = next((tmp_path / "cache").glob("faces-*.npy"))
    bad = npy.with_suffix(".json") if damage == "metadata" else npy
    if damage == "truncate":
        npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    else:
        bad.write_bytes(b"\x00garbage")
    for in_memory in (True, False):
        with pytest.warns(UserWarning, match=f"ignoring damaged cache file {bad}") as seen:
            again = load_faces(DataConfig(source=str(folder_set), image_size=16, in_memory=in_memory))
        assert len([w for w in seen if "damaged" in str(w.message)]) == 1
        assert "\n" not in str(next(w for w in seen if "damaged" in str(w.message)).message)
        assert torch.equal(again.images[:], first.images)
        if damage == "truncate":
            npy.write_bytes(npy.read_bytes()[:100])
        else:
            bad.write_bytes(b"\x00garbage")


def test_an_old_torch_cache_entry_is_still_read(folder_set: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_faces(DataConfig(source=str(folder_set), image_size=16))
    npy = next((tmp_path / "cache").glob("faces-*.npy"))
    old = npy.with_suffix(".pt")
    torch.save({"images": data.images, "labels": data.labels, "names": data.names, "paths": data.paths,
                "source": data.source}, old)  # the entry veil < 0.18 wrote
    npy.unlink()
    npy.with_suffix(".json").unlink()
    monkeypatch.setattr("veil.recognition.data._read_images", lambda *a: pytest.fail("the old entry was not read"))
    again = load_faces(DataConfig(source=str(folder_set), image_size=16))
    assert torch.equal(again.images, data.images) and again.names == data.names
    assert not npy.exists() and old.is_file()  # a small set reads it as it is, rewriting nothing
    mapped = load_faces(DataConfig(source=str(folder_set), image_size=16, in_memory=False))
    assert isinstance(mapped.images, MappedImages) and torch.equal(mapped.images[:], data.images)
    assert old.is_file()  # converted beside it, never removed


def test_a_set_given_as_its_preprocessed_file_loads_without_the_raw_images(folder_set: Path, tmp_path: Path) -> None:
    config = DataConfig(source=str(folder_set), image_size=16)
    data = load_faces(config)
    entry = cache_entry(config)
    assert entry is not None and entry.is_file() and entry.with_suffix(".json").is_file()
    carried = tmp_path / "carried"
    carried.mkdir()
    for f in (entry, entry.with_suffix(".json")):
        (carried / f.name).write_bytes(f.read_bytes())
    for f in folder_set.rglob("*.png"):
        f.unlink()  # the other machine has no raw images
    for in_memory in (True, False):
        again = load_faces(DataConfig(source=str(carried / entry.name), image_size=16, in_memory=in_memory))
        assert torch.equal(again.images[:], data.images) and torch.equal(again.labels, data.labels)
        assert again.names == data.names and isinstance(again.images, MappedImages) is (not in_memory)


def test_a_preprocessed_file_of_another_image_size_is_an_error_naming_it(folder_set: Path) -> None:
    config = DataConfig(source=str(folder_set), image_size=16)
    load_faces(config)
    entry = cache_entry(config)
    with pytest.raises(DataError, match=f"preprocessed set {entry} holds 3-channel 16x16 images; this run wants "
                                        "3-channel 32x32"):
        load_faces(DataConfig(source=str(entry), image_size=32))


@pytest.mark.parametrize("damage", ["no metadata", "pickled object"])
def test_a_damaged_preprocessed_file_given_as_data_is_a_one_line_error_naming_it(folder_set: Path, damage: str) -> None:
    config = DataConfig(source=str(folder_set), image_size=16)
    load_faces(config)
    entry = cache_entry(config)
    if damage == "no metadata":
        entry.with_suffix(".json").unlink()
        bad = entry.with_suffix(".json")
    else:  # an object array: loading it would unpickle (run code); it is refused unread
        np.save(entry, np.array([object()], dtype=object), allow_pickle=True)
        bad = entry
    with pytest.raises(DataError, match=f"^preprocessed set {bad}: [^\n]+$"):
        load_faces(DataConfig(source=str(entry), image_size=16))


def test_batched_mtcnn_alignment_gives_the_per_image_faces_and_falls_back_where_none_is_found(att_root: Path) -> None:
    files = sorted((att_root / "s1").glob("*.pgm"))[:3] + sorted((att_root / "s2").glob("*.pgm"))[:2]
    imgs = [Image.open(f).convert("RGB") for f in files] + [Image.new("RGB", (92, 112), (128, 128, 128))]
    paths = [*files, Path("flat.png")]
    aligner = _Aligner(64, device="cpu")  # the GPU's batched path, run on the CPU
    with pytest.warns(UserWarning, match="no face found in flat.png"):
        one_by_one = [np.asarray(aligner(im, p)) for im, p in zip(imgs, paths)]
    with pytest.warns(UserWarning, match="no face found in flat.png"):
        batched = [np.asarray(im) for im in aligner.align_batch(imgs, paths)]
    assert len(batched) == 6 and all(b.shape == (64, 64, 3) for b in batched)
    assert all(np.array_equal(a, b) for a, b in zip(one_by_one, batched))
