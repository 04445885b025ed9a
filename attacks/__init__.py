"""Model-inversion attacks and privacy metrics.

In place: the PCA-prior attack (`pca`), the metrics (`metrics`: evaluation-model top-1/top-5,
KNN feature distance, nearest-neighbour identity in feature and pixel space, PSNR with the mean
face's reference, sink-class share) and the cheap `probe` the environment calls every K steps.
To come (attack-harness issue): the cached evaluation model, white-box inversion, GMI, KEDMI,
PLG-MI, SSIM, the Fréchet distance, DDCS and the report.
"""

from .metrics import evaluate_reconstructions, psnr
from .pca import FacePrior, PCAAttackConfig, pca_attack
from .probe import PrivacyProbe, ProbeConfig

__all__ = ["FacePrior", "PCAAttackConfig", "PrivacyProbe", "ProbeConfig", "evaluate_reconstructions", "pca_attack",
           "psnr"]
