"""Face recognition for veil: face data (synthetic default, folder-per-identity sets, CelebA)
with the private/public identity split, backbones (small CNN, ResNet-18, InceptionResnetV1) and
the `Trainer`. Nothing here knows about RL, defenses or MLflow."""

from .data import (DataConfig, DataError, FaceData, FaceSplit, SplitConfig, load_faces, one_hot, random_hflip,
                   split_identities, to_float)
from .device import DeviceConfig, module_device, resolve_device
from .models import MODEL_NAMES, ModelConfig, build_model, model_config_from_checkpoint
from .trainer import StepStats, Trainer, TrainerConfig, soft_cross_entropy

__all__ = ["DataConfig", "DataError", "DeviceConfig", "FaceData", "FaceSplit", "MODEL_NAMES", "ModelConfig",
           "SplitConfig", "StepStats", "Trainer", "TrainerConfig", "build_model", "load_faces",
           "model_config_from_checkpoint", "module_device", "one_hot", "random_hflip", "resolve_device",
           "soft_cross_entropy", "split_identities", "to_float"]
