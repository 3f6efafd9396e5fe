"""Models: timm construction, loading weights from pretraining, a weights file or timm's published
weights by name (`timm:<name>[.<tag>]`), export.

The hand-off between the stages is `model.safetensors` plus a `model.json` sidecar (model name and
arguments, classes, image size, normalisation, source dataset, recipe). Weights are never loaded
with plain pickle: safetensors, or torch.load(weights_only=True) for .pth/.bin files.
"""

import logging
import os

import timm
import torch
from safetensors.torch import load_file, save_file

from .errors import UserError
from .io import read_json, save_atomically, write_json

log = logging.getLogger(__name__)
SIDECAR = "model.json"


def build(name: str, num_classes: int, img_size: int | None = None, drop_path_rate: float = 0.0,
          model_kwargs: dict | None = None, pretrained: bool = False) -> torch.nn.Module:
    """A timm model (`name` may carry a published-weights tag, name.tag, with pretrained=True).

    `img_size` and `drop_path_rate` go only to models whose constructor takes them: timm names the
    argument a constructor refuses (TypeError), and the model is built again without it. Fixed-size
    models (ViTs) take img_size; CNNs (ResNet, VGG, DenseNet) work at any size and do not need it.
    """
    optional = {k: v for k, v in {"img_size": img_size, "drop_path_rate": drop_path_rate}.items() if v}
    kwargs = {k: v for k, v in (model_kwargs or {}).items() if k not in optional}  # the run's size wins
    while True:
        try:
            return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs, **optional)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise UserError(f"unknown model {name!r}; {_close_models(name)}") from None
            raise
        except TypeError as e:
            refused = next((k for k in optional if f"argument '{k}'" in str(e)), None)
            if refused is None:
                raise UserError(f"model {name!r} does not accept these arguments: {e}") from None
            if refused == "drop_path_rate":
                log.info("%s has no drop path (stochastic depth); drop_path=%g is not used", name, drop_path_rate)
            del optional[refused]


def _close_models(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    close = close or timm.list_models(f"*{name.split('_')[0]}*")[:5]
    return f"timm has e.g. {', '.join(close)}" if close else "see timm.list_models()"


def classifier_modules(model: torch.nn.Module) -> tuple:
    """The model's classifier as a tuple of modules: timm's get_classifier() returns one module, or two
    for distilled DeiTs (head, head_dist)."""
    heads = model.get_classifier()
    return tuple(heads) if isinstance(heads, (tuple, list)) else (heads,)


def classifier_parameters(model: torch.nn.Module) -> list:
    """The parameters of the model's classifier (every head): what a linear probe trains."""
    return [p for head in classifier_modules(model) for p in head.parameters()]


# --- published weights by name: --init timm:<name>[.<tag>] ---------------------------------------

TIMM_PREFIX = "timm:"
# tag parts naming the data the weights were trained on (timm's tag convention, e.g. augreg2_in21k_ft_in1k)
_DATASETS = {"in1k": "ImageNet-1k", "in12k": "ImageNet-12k", "in21k": "ImageNet-21k", "in22k": "ImageNet-22k",
             "laion2b": "LAION-2B", "laion400m": "LAION-400M", "openai": "OpenAI WIT", "ig1b": "Instagram-1B",
             "ig3b": "Instagram-3.5B", "yfcc100m": "YFCC-100M", "jft300m": "JFT-300M", "dfn2b": "DFN-2B",
             "webli": "WebLI", "merged2b": "Merged-2B"}


def weights_description(tag: str) -> str:
    """Where published weights come from, in words: "ImageNet-21k (augreg_in21k)", "ImageNet-21k then
    ImageNet-1k (augreg2_in21k_ft_in1k)"; a tag naming no known dataset is shown as it is."""
    names = [_DATASETS[part] for part in tag.split("_") if part in _DATASETS]
    names = [n for i, n in enumerate(names) if n not in names[:i]]
    return f"{' then '.join(names)} ({tag})" if names else f"timm weights ({tag})"


def published_weights(init: str) -> dict:
    """What `timm:<name>[.<tag>]` refers to, from timm's registry (nothing is downloaded): the model
    name, the tag (timm's default tag when none is given), the weights' normalisation, input size and
    interpolation, and the source in words."""
    spec = init[len(TIMM_PREFIX):]
    name, tag = timm.models.split_model_name_tag(spec)
    if not timm.is_model(name):
        raise UserError(f"--init {init}: unknown model {name!r}; {_close_models(name)}")
    try:
        cfg = timm.models.get_pretrained_cfg(spec) if timm.is_model_pretrained(name) else None
    except RuntimeError:  # "Invalid pretrained tag"
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        tags = timm.list_pretrained(f"{name}.*")
        hint = f"published tags: {', '.join(tags[:6])}" if tags else f"timm publishes no weights for {name}"
        raise UserError(f"--init {init}: no published weights {spec!r}; {hint}")
    tag = cfg.tag or tag
    return {"model": name, "tag": tag, "weights": f"{name}.{tag}" if tag else name,
            "mean": list(cfg.mean), "std": list(cfg.std), "img_size": int(cfg.input_size[-1]),
            "interpolation": cfg.interpolation, "description": weights_description(tag or "")}


def read_sidecar(weights: str) -> dict | None:
    path = os.path.join(os.path.dirname(os.path.abspath(weights)), SIDECAR)
    if not os.path.exists(path):
        return None
    sidecar = read_json(path, "weights sidecar")
    needed = ("model", "num_classes", "img_size", "mean", "std")
    missing = [k for k in needed if not isinstance(sidecar, dict) or k not in sidecar]
    if missing:
        raise UserError(f"weights sidecar {path} lacks {', '.join(missing)}; it must be the model.json written "
                        f"beside model.safetensors by pretrain or finetune")
    return sidecar


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
    """A timm model: from scratch, from a weights file (see load_weights), or from published weights
    (`timm:<name>[.<tag>]`, loaded by timm from the Hugging Face cache, classifier re-initialised)."""
    if init.startswith(TIMM_PREFIX):
        return _from_published(init, name, num_classes, img_size, drop_path_rate, model_kwargs)
    if init not in ("scratch", "", None):
        sidecar = read_sidecar(init)
        if sidecar and not model_kwargs:  # the architecture settings travel with the weights
            model_kwargs = sidecar.get("model_kwargs")
    model = build(name, num_classes, img_size, drop_path_rate, model_kwargs)
    if init not in ("scratch", "", None):
        load_weights(model, init, name)
    return model


def _from_published(init, name, num_classes, img_size, drop_path_rate, model_kwargs) -> torch.nn.Module:
    weights = published_weights(init)
    if name != weights["model"]:
        raise UserError(f"--init {init} holds a {weights['model']!r}, but the config asks for {name!r}; "
                        f"set model={weights['model']} (or model=auto)")
    try:
        return build(weights["weights"], num_classes, img_size, drop_path_rate, model_kwargs, pretrained=True)
    except OSError as e:  # huggingface_hub: not in the cache and no download (offline, no network)
        from huggingface_hub import constants as hf

        why = "HF_HUB_OFFLINE is set" if hf.HF_HUB_OFFLINE else f"no connection: {str(e).splitlines()[0][:100]}"
        raise UserError(f"--init {init}: the weights are not in the Hugging Face cache {hf.HF_HUB_CACHE} ({why}); "
                        f"fetch them once where there is internet (python -c \"import timm; timm.create_model("
                        f"'{weights['weights']}', pretrained=True)\") and copy models--timm--{weights['weights']} "
                        f"into that folder") from None


def export_model(model: torch.nn.Module, run_dir: str, sidecar: dict) -> str:
    """Write run_dir/model.json and model.safetensors, each atomically; the weights last, so their
    presence means the hand-off is complete (the study starts fine-tuning when they appear)."""
    write_json(os.path.join(run_dir, SIDECAR), sidecar, indent=1, sort_keys=True)
    path = os.path.join(run_dir, "model.safetensors")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    return path


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)
