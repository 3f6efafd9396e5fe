"""Image transforms from timm, with the project's own normalisation taken from the config
(the models' defaults differ: DeiT-S/16 uses ImageNet statistics, ViT-S/32 0.5/0.5)."""

import torch
from PIL import Image
from timm.data import auto_augment, create_transform
from timm.data.random_erasing import RandomErasing

_timm_posterize = auto_augment.posterize


def _posterize(img, bits_to_keep, **kwargs):
    """timm's posterize, also for 0 bits: an all-black image, as TensorFlow's RandAugment and older Pillow
    give. Pillow 13 (what installs here) refuses 0 bits, which RandAugment's 'inc' ops, AugMix and AutoAugment draw at their
    extreme levels (rand-m9-mstd0.5-inc1 reaches it within a few thousand images), killing the run."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return _timm_posterize(img, bits_to_keep, **kwargs)


# ops bind NAME_TO_OP's function when built, so this must happen before any transform is created
for _name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
    auto_augment.NAME_TO_OP[_name] = _posterize


def make_transforms(aug: dict, img_size: int, mean, std, uint8_train: bool = False):
    """(train, eval) transforms. aug keys: scale, ratio, hflip, vflip, color_jitter, auto_augment,
    re_prob, crop_pct, interpolation (timm's create_transform arguments).

    uint8_train: the train transform stops at a uint8 tensor (timm's prefetcher split); the batch is
    normalised and randomly erased afterwards by BatchFinish, once per batch instead of per image."""
    train = create_transform(
        input_size=img_size, is_training=True, scale=tuple(aug.get("scale", (0.08, 1.0))),
        ratio=tuple(aug.get("ratio", (3 / 4, 4 / 3))), hflip=float(aug.get("hflip", 0.5)),
        vflip=float(aug.get("vflip", 0.0)), color_jitter=aug.get("color_jitter") or None,
        auto_augment=aug.get("auto_augment") or None, re_prob=float(aug.get("re_prob", 0.0)),
        interpolation=aug.get("interpolation", "bicubic"), mean=tuple(mean), std=tuple(std),
        use_prefetcher=uint8_train)
    evaluate = create_transform(
        input_size=img_size, is_training=False, crop_pct=float(aug.get("crop_pct", 1.0)),
        interpolation=aug.get("interpolation", "bicubic"), mean=tuple(mean), std=tuple(std))
    return train, evaluate


class BatchFinish:
    """The rest of a uint8 train transform, on a whole batch on the device: to float, normalise,
    random erasing (per image, as timm's prefetcher does). Workers then only crop and flip, and
    hand over batches a quarter of the size of float ones."""

    def __init__(self, aug: dict, mean, std, device):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        re_prob = float(aug.get("re_prob", 0.0))
        self.erase = RandomErasing(re_prob, mode="pixel", device=device) if re_prob > 0 else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.mean.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        return self.erase(images) if self.erase is not None else images
