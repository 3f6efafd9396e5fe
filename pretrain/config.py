"""The pretraining config schema: every key of configs/pretrain/base.yaml, typed (see common/schema.py)."""

from dataclasses import dataclass
from typing import Literal, Optional

from common import schema
from common.schema import Trainer, key


@dataclass
class Data:
    source: Literal["shards", "on_the_fly", "render", "imagenet"] = key()
    path: Optional[str] = key()
    workers: int = key(ge=0)
    val_samples: int = key(ge=0)
    num_classes: Optional[int] = key(ge=1)
    train_samples: Optional[int] = key(ge=1)
    render: Optional[dict] = key()       # fractalgen options, checked by fractalgen itself
    verify: Literal["size", "sha256"] = key()
    max_corrupt: int = key(ge=0)


@dataclass
class Aug(schema.Aug):
    """The shared keys plus timm's training transform (crop ratio, flips, RandAugment, erasing)."""

    ratio: list[float] = key(gt=0, length=2)
    hflip: float = key(ge=0, le=1)
    vflip: float = key(ge=0, le=1)
    color_jitter: Optional[float] = key(ge=0)
    auto_augment: Optional[str] = key()
    re_prob: float = key(ge=0, le=1)
    crop_pct: float = key(gt=0, le=1)


@dataclass
class PretrainConfig(Trainer):
    mean: list[float] = key(length=3)
    std: list[float] = key(gt=0, length=3)
    recipe: Optional[str] = key()        # a name recorded with the weights (deit, resnet, ...)
    log_sample_keys: bool = key()        # per-rank sample keys beside the checkpoints (tests, debugging)
    data: Data = key()
    aug: Aug = key()
