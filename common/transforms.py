"""Image transforms from timm, with the project's own normalisation taken from the config
(the models' defaults differ: DeiT-S/16 uses ImageNet statistics, ViT-S/32 0.5/0.5)."""

from timm.data import create_transform


def make_transforms(aug: dict, img_size: int, mean, std):
    """(train, eval) transforms. aug keys: scale, ratio, hflip, vflip, color_jitter, auto_augment,
    re_prob, crop_pct, interpolation (timm's create_transform arguments)."""
    train = create_transform(
        input_size=img_size, is_training=True, scale=tuple(aug.get("scale", (0.08, 1.0))),
        ratio=tuple(aug.get("ratio", (3 / 4, 4 / 3))), hflip=float(aug.get("hflip", 0.5)),
        vflip=float(aug.get("vflip", 0.0)), color_jitter=aug.get("color_jitter") or None,
        auto_augment=aug.get("auto_augment") or None, re_prob=float(aug.get("re_prob", 0.0)),
        interpolation=aug.get("interpolation", "bicubic"), mean=tuple(mean), std=tuple(std))
    evaluate = create_transform(
        input_size=img_size, is_training=False, crop_pct=float(aug.get("crop_pct", 1.0)),
        interpolation=aug.get("interpolation", "bicubic"), mean=tuple(mean), std=tuple(std))
    return train, evaluate
