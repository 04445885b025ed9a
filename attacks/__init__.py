"""Model-inversion attacks, privacy metrics and the report.

Attacks (each ``(target, ..., classes, config, generator) -> (images in [0, 1], labels)``):
the PCA prior (`pca`, the default probe), white-box inversion (`whitebox`), GMI (`gmi`, on the
WGAN-GP prior of `gan`), KEDMI (`kedmi`), PLG-MI (`plgmi`), with LOMMA as an option (`lomma`).
`evaluation` trains and caches the independent evaluation model; `metrics` and `ddcs` score
reconstructions; `harness.run_attack` runs an attack over several seeds into a `report.AttackReport`,
its options typed as `settings.AttackSettings`; `probe.PrivacyProbe` is the cheap version the
environment calls every K steps; `cache` keeps trained GANs and surrogates on disk.
"""

from .ddcs import ddcs, ddcs_veil
from .evaluation import EvalModel, EvalModelConfig, train_eval_model
from .harness import ATTACKS, HarnessConfig, register, run_attack
from .metrics import evaluate_reconstructions, feature_frechet, frechet_distance, per_identity, psnr, ssim, summarize
from .pca import FacePrior, PCAAttackConfig, pca_attack
from .probe import PrivacyProbe, ProbeConfig
from .report import AttackReport
from .settings import UNSET, AttackSettings
from .whitebox import WhiteBoxConfig, whitebox_attack

__all__ = ["ATTACKS", "UNSET", "AttackReport", "AttackSettings", "EvalModel", "EvalModelConfig", "FacePrior",
           "HarnessConfig", "PCAAttackConfig", "PrivacyProbe", "ProbeConfig", "WhiteBoxConfig", "ddcs", "ddcs_veil",
           "evaluate_reconstructions", "feature_frechet", "frechet_distance", "pca_attack", "per_identity", "psnr",
           "register", "run_attack", "ssim", "summarize", "train_eval_model", "whitebox_attack"]
