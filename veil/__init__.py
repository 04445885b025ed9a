"""veil: train face-recognition models that leak no faces.

The package maps the repository's top-level folders to one namespace: ``veil.recognition`` (FR
data, models, trainer; knows nothing of RL), ``veil.defenses`` (batched augmentation and training
defenses), ``veil.attacks`` (model-inversion attacks and their report), ``veil.env`` (the Gymnasium
game) and ``veil.agents`` (SB3, export, MLflow and the ``veil`` commands).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("veil")
except PackageNotFoundError:  # imported from a checkout that was not installed
    __version__ = "0+unknown"
