"""--smoke: every step of an experiment at a tiny scale, on the CPU, through the same commands.

Renders of a few dozen 32 px images, one epoch of a few dozen images per training, every model
shrunk through `model_kwargs` to a few layers of its own family (same timm class, same code path),
one process. Published weights (timm: sources) are never fetched: --smoke fabricates them (random
weights of the shrunk model) in an offline Hugging Face cache of its own, DIR/smoke-data/hf, where
timm's loading finds them exactly as it finds real ones (HF_HUB_OFFLINE=1).
"""

import os

from common.config import load_config
from common.errors import UserError

# timm model-name prefix -> the model_kwargs that shrink it (each entrypoint lets kwargs win)
TINY = [
    (("vit_", "deit_"), {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}),
    (("resnet",), {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16}),
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
    if not init.endswith(".safetensors"):  # a pretraining's weights bring their tiny architecture in model.json
        out.update(tiny(over.get("model") or job["model"]))
    return out


def analysis_args(job: dict) -> list[str]:
    from experiments.plan import yaml_value

    kwargs = tiny(job["model"]).get("model_kwargs")
    return ["--img-size", str(IMG_SIZE), *(["--model-kwargs", yaml_value(kwargs)] if kwargs else [])]


def fabricate_published(exp: dict, hf_home: str) -> list[str]:
    """Random weights of the shrunk model for every published tag the experiment names, laid out as
    the Hugging Face hub cache (models--timm--<name>.<tag>/refs/main + snapshots/<hash>/model.safetensors).
    Returns the weights names."""
    import timm
    import torch
    from safetensors.torch import save_file

    from common.models import build

    made = []
    for job in exp["pretrain"]:
        for tag in job["published"].values():
            name = f"{job['model']}.{tag}"
            repo = os.path.join(hf_home, "hub", f"models--timm--{name}")
            revision = "0" * 40
            path = os.path.join(repo, "snapshots", revision, "model.safetensors")
            if not os.path.exists(path):
                torch.manual_seed(0)
                classes = timm.models.get_pretrained_cfg(name).num_classes
                model = build(job["model"], classes, IMG_SIZE, model_kwargs=tiny(job["model"]).get("model_kwargs"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
                with open(os.path.join(repo, "refs", "main"), "w") as f:
                    f.write(revision)
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path + ".tmp")
                os.replace(path + ".tmp", path)
            made.append(name)
    return made
