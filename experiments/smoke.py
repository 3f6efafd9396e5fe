"""--smoke: every step of an experiment at a tiny scale, on the CPU, through the same commands.

Renders of a few dozen 32 px images, one epoch of a few dozen images per training, every model
shrunk through `model_kwargs` to a few layers of its own family (same timm class, same code path),
one process. Published weights (timm: sources) are not fetched: their fine-tunes start from
scratch, which the runner says in one printed note.
"""

from common.config import load_config
from common.errors import UserError

# timm model-name prefix -> the model_kwargs that shrink it (each entrypoint lets kwargs win)
TINY = [
    (("vit_", "deit_"), {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}),
    (("resnet",), {"layers": [1, 1, 1, 1]}),
    (("densenet",), {"growth_rate": 8, "block_config": [1, 1, 1, 1]}),
    (("vgg",), {"mlp_ratio": 0.0625}),  # the 4096-wide classifier MLP's hidden layer: 256
]
IMG_SIZE = 32
TRAIN_PER_CLASS = 2  # every fine-tune: a low-data subset (the fabricated datasets hold more per class)


def tiny(model: str | None) -> dict:
    for prefixes, kwargs in TINY:
        if model and model.startswith(prefixes):
            return {"model_kwargs": kwargs}
    return {}  # an unlisted family runs at its full size (at 32 px)


def render_options(opts: dict) -> dict:
    return {**opts, "n": 48, "classes": 4, "size": IMG_SIZE, "points": 300, "shard_size": 24, "workers": 1}


def pretrain_overrides(config: str, over: dict, external: bool) -> dict:
    from experiments.plan import overrides

    try:
        model = load_config(config, overrides(over))["model"]
    except UserError:
        model = over.get("model")
    return {"epochs": 1, "img_size": IMG_SIZE, "batch_size": 8, "eval_batch": 32, "precision": "no",
            "checkpoint_every": 0, "data.workers": 0, "data.val_samples": 16,
            "data.train_samples": None if external else (32 if "data.train_samples" in over else 48),
            "optim.warmup_epochs": 0, **tiny(over.get("model") or model)}


def finetune_overrides(over: dict, job: dict, init: str) -> dict:
    out = {"epochs": 1, "img_size": IMG_SIZE, "batch_size": 8, "eval_batch": 64, "eval_every": 1, "precision": "no",
           "checkpoint_every": 0, "data.workers": 0, "optim.warmup_epochs": 0, "data.cache_size": IMG_SIZE,
           "data.train_per_class": TRAIN_PER_CLASS}
    if over.get("mode") == "few_shot":
        out.update({"few_shot.shots": [1, 2], "few_shot.trials": 1})
    if init == "scratch":  # pretrained weights bring their own (tiny) architecture in model.json
        out.update(tiny(over.get("model") or job["model"]))
    return out


def analysis_args(job: dict) -> list[str]:
    from experiments.plan import yaml_value

    kwargs = tiny(job["model"]).get("model_kwargs")
    return ["--img-size", str(IMG_SIZE), *(["--model-kwargs", yaml_value(kwargs)] if kwargs else [])]
