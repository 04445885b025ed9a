"""``AttackSettings``: the options one attack run takes (``veil attack``, ``veil benchmark``), typed,
and the one place where they become each attack's own config.

A setting left ``UNSET`` keeps the attack's own default; ``None`` is a value (``max_seconds=None``
lifts the GAN time cap), so "not given" needs its own marker. ``to_dict`` gives the settings that
were given, under the names MLflow runs, reports and benchmark cells have always recorded.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from .gan import GANConfig
from .gmi import GMIConfig
from .kedmi import KEDMIConfig
from .lomma import LOMMAConfig
from .pca import PCAAttackConfig
from .plgmi import PLGMIConfig
from .whitebox import WhiteBoxConfig


class Unset(enum.Enum):
    """The marker of a setting not given (``UNSET``), distinct from ``None``."""

    UNSET = "unset"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset.UNSET

AttackConfig = TypeVar("AttackConfig", PCAAttackConfig, WhiteBoxConfig, GMIConfig, KEDMIConfig, PLGMIConfig)

GAN_ATTACK_CONFIGS = (GMIConfig, KEDMIConfig, PLGMIConfig)  # the configs that take LOMMA

# AttackSettings field -> the field it sets in every attack's config / in the GAN prior's config
ATTACK_FIELDS = {"seeds": "seeds", "steps": "steps"}
GAN_FIELDS = {"max_seconds": "max_seconds", "gan_steps": "steps", "gan_latent_dim": "latent_dim",
              "gan_width": "width", "gan_batch_size": "batch_size"}


@dataclass(frozen=True)
class AttackSettings:
    """Args (each ``UNSET`` by default: the attack's own default):
        seeds: reconstructions (restarts) per identity, every attack's ``seeds``.
        steps: optimization steps of the inversion, every attack's ``steps``.
        lomma: GAN attacks: LOMMA's logit loss and model augmentation (``LOMMAConfig()``) when true.
        max_seconds: GAN attacks: time cap of GAN training (``None``: no cap).
        gan_steps, gan_latent_dim, gan_width, gan_batch_size: GAN attacks: ``GANConfig``'s
            ``steps``, ``latent_dim``, ``width`` and ``batch_size``.
    """

    seeds: int | Unset = UNSET
    steps: int | Unset = UNSET
    lomma: bool | Unset = UNSET
    max_seconds: float | None | Unset = UNSET
    gan_steps: int | Unset = UNSET
    gan_latent_dim: int | Unset = UNSET
    gan_width: int | Unset = UNSET
    gan_batch_size: int | Unset = UNSET

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str) -> AttackSettings:
        """Settings from a mapping of field names; an unknown key raises, naming it and ``where``
        the mapping came from (a misspelt option must not be dropped silently)."""
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                raise ValueError(f"unknown attack setting {key!r} in {where}; known: {known}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The settings given (``UNSET`` ones left out), as logged to MLflow and written into reports."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not UNSET}

    def _given(self, names: Mapping[str, str]) -> dict[str, Any]:
        """``{config field: value}`` of the settings in ``names`` that were given."""
        return {field: v for name, field in names.items() if (v := getattr(self, name)) is not UNSET}

    def attack_config(self, cls: type[AttackConfig]) -> AttackConfig:
        """The config ``cls`` of one attack: ``seeds`` and ``steps`` where given, LOMMA for the GAN
        attacks (``None`` unless ``lomma``); every other field keeps the attack's default."""
        given = self._given(ATTACK_FIELDS)
        if cls in GAN_ATTACK_CONFIGS:
            given["lomma"] = LOMMAConfig() if self.lomma is not UNSET and self.lomma else None
        return cls(**given)

    def gan_config(self, **defaults: Any) -> GANConfig:
        """The GAN prior's config: the attack's ``defaults`` (e.g. KEDMI's ``n_critic=1``) under
        the ``gan_*`` settings and ``max_seconds`` that were given."""
        return GANConfig(**{**defaults, **self._given(GAN_FIELDS)})
