"""The embedded synthetic face generator: shapes, determinism, identity structure."""

from __future__ import annotations

import torch

from veil.recognition.data import DataConfig, load_faces
from veil.recognition.synthetic import SyntheticConfig, generate_faces


def test_shapes_dtype_and_identity_major_order() -> None:
    images, labels = generate_faces(SyntheticConfig(n_identities=5, images_per_identity=4, image_size=40))
    assert images.shape == (20, 3, 40, 40) and images.dtype == torch.uint8
    assert labels.tolist() == [i for i in range(5) for _ in range(4)]


def test_same_config_gives_the_same_bytes_whatever_the_batch_size() -> None:
    cfg = SyntheticConfig(n_identities=6, images_per_identity=5, image_size=32, seed=3)
    a, _ = generate_faces(cfg, batch_size=7)
    b, _ = generate_faces(cfg, batch_size=1024)
    assert torch.equal(a, b)


def test_other_seed_gives_other_faces() -> None:
    a, _ = generate_faces(SyntheticConfig(n_identities=3, images_per_identity=2, image_size=32, seed=0))
    b, _ = generate_faces(SyntheticConfig(n_identities=3, images_per_identity=2, image_size=32, seed=1))
    assert not torch.equal(a, b)


def test_identity_does_not_depend_on_the_set_size() -> None:
    small, _ = generate_faces(SyntheticConfig(n_identities=3, images_per_identity=2, image_size=32))
    large, labels = generate_faces(SyntheticConfig(n_identities=6, images_per_identity=2, image_size=32))
    assert torch.equal(small, large[:6])


def test_images_of_one_identity_are_closer_than_images_of_two() -> None:
    images, labels = generate_faces(SyntheticConfig(n_identities=12, images_per_identity=8, image_size=32,
                                                    difficulty=0.3))
    x = images.float().flatten(1)
    d = torch.cdist(x, x)
    same = labels[:, None] == labels[None, :]
    off_diag = ~torch.eye(len(labels), dtype=torch.bool)
    assert d[same & off_diag].mean() < d[~same].mean()


def test_zero_difficulty_removes_most_nuisance() -> None:
    cfg = dict(n_identities=4, images_per_identity=6, image_size=32)
    easy, labels = generate_faces(SyntheticConfig(**cfg, difficulty=0.0))
    hard, _ = generate_faces(SyntheticConfig(**cfg, difficulty=1.0))

    def spread(x: torch.Tensor) -> float:
        x = x.float().view(4, 6, -1)
        return (x - x.mean(1, keepdim=True)).pow(2).mean().item()

    assert spread(easy) < 0.5 * spread(hard)


def test_default_source_is_the_cached_synthetic_set() -> None:
    cfg = DataConfig(synthetic_identities=4, synthetic_images=3, image_size=32)
    a = load_faces(cfg)
    b = load_faces(cfg)
    assert a.source == "synthetic" and a.images.shape == (12, 3, 32, 32)
    assert a.names[0] == "synthetic_0000" and torch.equal(a.images, b.images)
