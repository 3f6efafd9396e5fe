"""The fine-tuning config schema: every key of configs/finetune/base.yaml, typed (see common/schema.py)."""

from dataclasses import dataclass
from typing import Literal, Optional, Union

from common import schema
from common.schema import INTERPOLATIONS, Trainer, key

MODES = ("finetune", "linear_probe", "few_shot")
AUGMENT_PRESETS = ("none", "basic", "thesis", "augmix", "mixup_cutmix", "segmentation")
FORMATS = ("cifar10", "cifar100", "plant_pathology", "imagefolder", "stl10")


@dataclass
class Data:
    format: Literal[FORMATS] = key()
    path: Optional[str] = key()
    workers: int = key(ge=0)
    multilabel: bool = key()
    train_per_class: Optional[int] = key(ge=1)   # low-data regime
    subset_seed: int = key(ge=0)
    holdout: Optional[float] = key(gt=0, lt=1)   # evaluate on held-out training images instead of the test split
    labels: Literal["fine", "coarse"] = key()   # cifar100
    mode: Literal["12class", "multilabel"] = key()  # plant_pathology
    val_fraction: float = key(gt=0, lt=1)       # plant_pathology
    split_seed: int = key(ge=0)
    cache_size: int = key(ge=8)                 # plant_pathology
    fold: Optional[int] = key(ge=0, le=9)       # stl10: an official 1,000-image training fold


@dataclass
class FewShot:
    shots: list[int] = key(ge=1)
    trials: int = key(ge=1)
    l2: float = key(ge=0)


@dataclass
class Aug(schema.Aug):
    interpolation: Literal[INTERPOLATIONS + ("auto",)] = key()  # auto: the published weights' (timm:)


@dataclass
class FinetuneConfig(Trainer):
    img_size: Union[Literal["auto"], int] = key(ge=8)  # auto: the published weights' (timm:), else 32
    mean: Union[Literal["auto"], list[float]] = key(length=3)  # auto: the weights' normalisation
    std: Union[Literal["auto"], list[float]] = key(gt=0, length=3)
    mode: Literal[MODES] = key()
    augment: Literal[AUGMENT_PRESETS] = key()
    data: Data = key()
    few_shot: FewShot = key()
    aug: Aug = key()
