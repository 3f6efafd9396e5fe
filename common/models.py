"""Models: timm construction, loading weights from pretraining (or any timm weights), export.

The hand-off between the stages is `model.safetensors` plus a `model.json` sidecar (model name and
arguments, classes, image size, normalisation, source dataset, recipe). Weights are never loaded
with plain pickle: safetensors, or torch.load(weights_only=True) for .pth/.bin files.
"""

import json
import logging
import os

import timm
import torch
from safetensors.torch import load_file, save_file

from .errors import UserError

log = logging.getLogger(__name__)
SIDECAR = "model.json"


def build(name: str, num_classes: int, img_size: int | None = None, drop_path_rate: float = 0.0,
          model_kwargs: dict | None = None) -> torch.nn.Module:
    """A randomly initialised timm model; `img_size` only for models that take it (ViTs)."""
    kwargs = dict(model_kwargs or {})
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if img_size and not name.startswith(("resnet", "test_resnet")):
        kwargs["img_size"] = img_size
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
            raise UserError(f"unknown model {name!r}; timm has e.g. {', '.join(close) or 'see timm.list_models()'}") from None
        raise
    except TypeError as e:
        raise UserError(f"model {name!r} does not accept these arguments: {e}") from None


def read_sidecar(weights: str) -> dict | None:
    path = os.path.join(os.path.dirname(os.path.abspath(weights)), SIDECAR)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _read_state_dict(path: str) -> dict:
    if not os.path.exists(path):
        raise UserError(f"weights file {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or pickled objects beyond tensors
        raise UserError(f"cannot read weights {path}: {str(e).splitlines()[0]}") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers (EMA weights are not preferred)
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_weights(model: torch.nn.Module, path: str, name: str) -> None:
    """Load backbone weights into model: position embeddings resampled to the model's grid, the
    classifier re-initialised when its size differs; any other mismatch is an error naming it."""
    sidecar = read_sidecar(path)
    if sidecar and sidecar.get("model") != name:
        raise UserError(f"weights {path} are a {sidecar.get('model')!r}, but the config asks for {name!r}; "
                        f"set model={sidecar.get('model')} or use matching weights")
    sd = _read_state_dict(path)
    own = model.state_dict()
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        old = sd["pos_embed"]
        sd["pos_embed"] = resample_abs_pos_embed(old, new_size=model.patch_embed.grid_size, num_prefix_tokens=prefix)
        log.info("resampled position embeddings %s -> %s", tuple(old.shape), tuple(own["pos_embed"].shape))
    head = model.default_cfg.get("classifier", "head")
    for key in [k for k in sd if k.startswith(head + ".")]:
        if key not in own or sd[key].shape != own[key].shape:
            log.warning("re-initialised classifier %s (%s in the weights, %s here)", key, tuple(sd[key].shape),
                        tuple(own[key].shape) if key in own else None)
            del sd[key]
    wrong = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if wrong:
        raise UserError(f"weights {path} do not fit {name}: {wrong[0]} is {tuple(sd[wrong[0]].shape)} in the file "
                        f"but {tuple(own[wrong[0]].shape)} in the model (different architecture settings?)")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(head + ".")]
    if missing or unexpected:
        raise UserError(f"weights {path} do not match {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")


def create_model(name: str, num_classes: int, img_size: int | None = None, init: str = "scratch",
                 drop_path_rate: float = 0.0, model_kwargs: dict | None = None) -> torch.nn.Module:
    """A timm model, from scratch or initialised from a weights file (see load_weights)."""
    if init not in ("scratch", "", None):
        sidecar = read_sidecar(init)
        if sidecar and not model_kwargs:  # the architecture settings travel with the weights
            model_kwargs = sidecar.get("model_kwargs")
    model = build(name, num_classes, img_size, drop_path_rate, model_kwargs)
    if init not in ("scratch", "", None):
        load_weights(model, init, name)
    return model


def export_model(model: torch.nn.Module, run_dir: str, sidecar: dict) -> str:
    """Write run_dir/model.json and model.safetensors, each atomically; the weights last, so their
    presence means the hand-off is complete (the study starts fine-tuning when they appear)."""
    os.makedirs(run_dir, exist_ok=True)
    side = os.path.join(run_dir, SIDECAR)
    with open(side + ".tmp", "w") as f:
        json.dump(sidecar, f, indent=1, sort_keys=True)
    os.replace(side + ".tmp", side)
    path = os.path.join(run_dir, "model.safetensors")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, path + ".tmp", metadata={"format": "pt"})
    os.replace(path + ".tmp", path)
    return path


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)
