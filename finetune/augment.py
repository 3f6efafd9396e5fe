"""Augmentation presets for fine-tuning: none, basic, thesis, augmix, mixup_cutmix, segmentation.

timm supplies what it has (RandomResizedCrop pipeline, AugMix, Mixup/CutMix); the thesis preset
(resize, rotate, flip, grid dropout, brightness/contrast) uses torchvision transforms plus a small
GridDropout, which neither timm nor torchvision has; the segmentation preset (random scale 0.5-2,
rotate +-10 degrees, blur, mirror: the augmentation of segmentation codebases, used in STL-10 transfer
reports) is torchvision's RandomAffine + GaussianBlur.
"""

import torch
from torchvision import transforms as T

from common.transforms import make_transforms


class GridDropout(torch.nn.Module):
    """Zero a regular grid of square holes (ratio of each cell), at a random offset, with probability p."""

    def __init__(self, ratio: float = 0.5, cells: int = 4, p: float = 0.5):
        super().__init__()
        self.ratio, self.cells, self.p = ratio, cells, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        _, h, w = x.shape
        cell = max(2, min(h, w) // self.cells)
        hole = max(1, int(cell * self.ratio))
        oy, ox = (int(v) for v in torch.randint(0, cell, (2,)))
        mask = torch.ones(h, w, dtype=x.dtype)
        for y in range(oy - cell, h, cell):
            for xx in range(ox - cell, w, cell):
                mask[max(y, 0):max(y + hole, 0), max(xx, 0):max(xx + hole, 0)] = 0
        return x * mask


def make(preset: str, img_size: int, mean, std, aug: dict):
    """(train transform, eval transform, aug overrides for the engine) of a preset."""
    base = {"scale": aug["scale"], "hflip": 0.5, "auto_augment": None, "re_prob": 0.0,
            "interpolation": aug["interpolation"]}
    engine = {"mixup": 0.0, "cutmix": 0.0}
    _, evaluate = make_transforms(base, img_size, mean, std)
    if preset == "none":
        return evaluate, evaluate, engine
    if preset in ("basic", "mixup_cutmix"):
        train, _ = make_transforms(base, img_size, mean, std)
        if preset == "mixup_cutmix":  # timm picks mixup or cutmix per batch (switch prob 0.5)
            engine = {"mixup": aug["mixup"] or 0.8, "cutmix": aug["cutmix"] or 1.0,
                      "mixup_switch_prob": 0.5}
        return train, evaluate, engine
    if preset == "augmix":
        train, _ = make_transforms({**base, "auto_augment": "augmix-m5-w4-d2"}, img_size, mean, std)
        return train, evaluate, engine
    if preset == "segmentation":
        train = T.Compose([
            T.Resize((img_size, img_size)),
            T.RandomAffine(degrees=10, scale=(0.5, 2.0)),  # zoom out (padded) or in (cropped), keeping the size
            T.RandomHorizontalFlip(),
            T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.5),
            T.ToTensor(),
            T.Normalize(mean, std),
        ])
        return train, evaluate, engine
    train = T.Compose([  # thesis: resize, rotate, flip, brightness/contrast, grid dropout
        T.Resize((img_size, img_size)),
        T.RandomRotation(20),
        T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=0.2, contrast=0.2),
        T.ToTensor(),
        T.Normalize(mean, std),
        GridDropout(0.4, 4, 0.5),
    ])
    return train, evaluate, engine
