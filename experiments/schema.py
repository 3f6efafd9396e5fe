"""The experiment file: a typed schema checked once at load (common/schema.py's rules: types, ranges,
unknown keys named with the nearest known ones), plus the `quick:` variant, `key=value` overrides
and --holdout.

An experiment is a matrix: sources (fractal kinds rendered by `render`, external pretraining data
such as ImageNet, published timm weights, scratch) x models (one `pretrain` job per model) x
downstream datasets x regimes x seeds. Every key is listed below with its default.
"""

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import yaml

from common.config import apply_override, merge
from common.errors import UserError
from common.schema import validate
from fractalgen.kinds import KINDS, takes_systems_file

STAGES = ("render", "pretrain", "finetune", "analysis", "report")


def _opt(default=None, **meta):
    return field(default=default, metadata=meta)


def _list(**meta):
    return field(default_factory=list, metadata=meta)


def _dict():
    return field(default_factory=dict)


@dataclass
class RenderOptions:
    """One `fractalgen render` (unset: fractalgen's default); `options` are its --option key=value.
    `kind`: the fractalgen kind when the entry's name is a variant of one, e.g.
    `single-refcolour: {kind: single, options: {reference_colour: true}}` (default: the name).
    `systems`: the name of a --data dataset whose class systems the kind renders (its systems.json, or
    the file itself): e.g. the reference generator's classes, drawn by fractalgen."""
    kind: Optional[str] = _opt()
    systems: Optional[str] = _opt()
    n: Optional[int] = _opt(ge=1)
    classes: Optional[int] = _opt(ge=1)
    size: Optional[int] = _opt(ge=8)
    points: Optional[int] = _opt(ge=1)
    seed: Optional[int] = _opt(ge=0)
    shard_size: Optional[int] = _opt(ge=1)
    workers: Optional[int] = _opt(ge=1)
    options: Optional[dict] = _opt()


@dataclass
class PretrainJob:
    """One model: pretrained on each of `kinds`, fine-tuned from those weights, from `published`
    timm tags and (when `scratch`) from random weights."""
    name: str = _opt()
    config: Optional[str] = _opt()  # pretrain config ("{kind}" in it is replaced by each kind); needed with kinds
    kinds: list[str] = _list()    # rendered kinds (render.kinds) or external data (--data NAME=PATH)
    model: Optional[str] = _opt()  # the timm model: scratch fine-tunes and published tags use it
    published: dict = _dict()     # source name -> timm pretrained tag (fine-tuned with --init timm:model.tag)
    scratch: bool = _opt(True)    # also fine-tune from random weights
    overrides: dict = _dict()     # pretraining overrides
    seeds: list[int] = _list(ge=0)  # pretraining seeds: every source once per seed (single-p0, ...); [] = the config's
    finetune_overrides: dict = _dict()  # this model's fine-tuning overrides (all its sources)
    scratch_overrides: dict = _dict()   # extra fine-tuning overrides for the scratch twin


@dataclass
class Budget:
    """The same pretraining at other image counts (data.train_samples), fine-tuned in `regimes`:
    every kind in `kinds` at every count in `images`."""
    job: str = _opt()
    kinds: list[str] = _list()
    images: list[int] = _list(ge=1)
    regimes: list[str] = _list()


@dataclass
class Finetune:
    config: Optional[str] = _opt()  # one downstream dataset (given with a bare --data PATH) ...
    datasets: dict = _dict()        # ... or several: name -> finetune config (--data NAME=PATH each)
    seeds: list[int] = field(default_factory=lambda: [0], metadata=dict(ge=0))
    overrides: dict = _dict()       # the shared recipe
    regimes: dict = _dict()         # name -> overrides (`only`: job-source patterns it runs for); null = off


@dataclass
class Analysis:
    """ViT analysis pictures, one per measure, comparing a job's sources side by side."""
    jobs: list[str] = _list()
    images: Optional[str] = _opt()  # a downstream dataset name: sample images for attention measures


@dataclass
class Resources:
    """What one step of a stage asks for: GPUs (and nodes) decide `accelerate launch`; all of it
    goes into the sbatch scripts of --emit slurm."""
    gpus: int = _opt(0, ge=0)       # per node; processes = gpus x nodes (1 without GPUs)
    nodes: int = _opt(1, ge=1)
    cpus: int = _opt(8, ge=1)
    hours: float = _opt(24.0, gt=0)
    partition: Optional[str] = _opt()


@dataclass
class Experiment:
    description: str = _opt("")
    jobs: int = _opt(1, ge=1)       # steps run side by side on this machine
    render: Optional[dict] = _opt()  # {common: RenderOptions, kinds: {kind: RenderOptions}}
    pretrain: list[dict] = _list()  # PretrainJob mappings
    budget: Optional[dict] = _opt()
    finetune: dict = _dict()
    analysis: Optional[dict] = _opt()
    resources: dict = _dict()       # stage -> Resources


def _defaults(schema: type) -> dict:
    out = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            out[f.name] = copy.deepcopy(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def check(value, schema: type, where: str, path: str = "") -> dict:
    """value (a mapping) with the schema's defaults filled in, checked; `path` prefixes key names."""
    if not isinstance(value, dict):
        raise UserError(f"{where}: {path.rstrip('.') or 'the file'} must be a mapping of keys, got {value!r}")
    return validate({**_defaults(schema), **value}, schema, where, path)


def check_experiment(raw: dict, where: str) -> dict:
    exp = check(raw, Experiment, where)
    if exp["render"] is not None:
        render = check(exp["render"], _RenderSection, where, "render.")
        render["common"] = check(render["common"] or {}, RenderOptions, where, "render.common.")
        if render["common"]["kind"] is not None:
            raise UserError(f"{where}: render.common.kind: the kind belongs to each entry of render.kinds")
        render["kinds"] = {kind: check(opts or {}, RenderOptions, where, f"render.kinds.{kind}.")
                           for kind, opts in render["kinds"].items()}
        for name, opts in render["kinds"].items():
            if (opts["kind"] or name) not in KINDS:
                raise UserError(f"{where}: render.kinds.{name}: {opts['kind'] or name!r} is not a fractalgen kind "
                                f"(one of {', '.join(KINDS)}); a variant names its kind, as {name}: {{kind: single, ...}}")
            kind = opts["kind"] or name
            if (opts["systems"] or render["common"].get("systems")) and not takes_systems_file(kind):
                takers = [k for k in KINDS if takes_systems_file(k)]
                raise UserError(f"{where}: render.kinds.{name}: systems applies to {' / '.join(takers)} only "
                                f"({kind} class parameters come from the seed)")
        exp["render"] = render
    exp["pretrain"] = [check(job, PretrainJob, where, f"pretrain[{i}].") for i, job in enumerate(exp["pretrain"])]
    exp["finetune"] = check(exp["finetune"], Finetune, where, "finetune.")
    if exp["budget"] is not None:
        exp["budget"] = check(exp["budget"], Budget, where, "budget.")
    if exp["analysis"] is not None:
        exp["analysis"] = check(exp["analysis"], Analysis, where, "analysis.")
    for stage in exp["resources"]:
        if stage not in STAGES:
            raise UserError(f"{where}: resources.{stage} is not a stage; use {', '.join(STAGES)}")
    exp["resources"] = {stage: check(exp["resources"].get(stage) or {}, Resources, where, f"resources.{stage}.")
                        for stage in STAGES}
    _check_names(exp, where)
    return exp


@dataclass
class _RenderSection:
    common: Optional[dict] = _opt()
    kinds: dict = _dict()


def _check_names(exp: dict, where: str) -> None:
    """Cross-references: every name a section uses is one another section defines."""
    ft = exp["finetune"]
    if not ft["config"] and not ft["datasets"]:
        raise UserError(f"{where}: finetune needs a config (one dataset) or datasets (name: config)")
    if ft["config"] and ft["datasets"]:
        raise UserError(f"{where}: finetune has both config and datasets; use one")
    names = [job["name"] for job in exp["pretrain"]]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: pretrain job names must differ, got {names}")
    # a repeated seed plans one run folder twice (two side-by-side jobs would write into it)
    for key, seeds in [(f"pretrain job {job['name']}: seeds", job["seeds"]) for job in exp["pretrain"]] + \
            [("finetune.seeds", ft["seeds"])]:
        if len(set(seeds)) != len(seeds):
            raise UserError(f"{where}: {key} repeat ({seeds}); list each seed once")
    budget = exp["budget"]
    if budget and budget["job"] not in names:
        raise UserError(f"{where}: budget.job {budget['job']!r} is not a pretrain job ({', '.join(names)})")
    if budget and not budget["kinds"]:
        raise UserError(f"{where}: budget.kinds is empty; name the kinds to pretrain at other budgets, e.g. [single]")
    rendered = set((exp["render"] or {}).get("kinds") or {})
    for job in exp["pretrain"]:
        # the budget's kinds are pretrained by its job with the job's config, like the job's own kinds
        kinds = job["kinds"] + (budget["kinds"] if budget and budget["job"] == job["name"] else [])
        if kinds and not job["config"]:
            raise UserError(f"{where}: job {job['name']} pretrains on {', '.join(kinds)} but has no config")
        if kinds and "{kind}" not in job["config"] and len(set(kinds)) > 1 and any(k not in rendered for k in kinds):
            raise UserError(f"{where}: job {job['name']} pretrains on external data with one config; "
                            f"write config as ...{{kind}}.yaml")
        if job["published"] and not job["model"]:
            raise UserError(f"{where}: job {job['name']} has published weights but no model (the timm name)")
    for job in (exp["analysis"] or {}).get("jobs", []):
        if job not in names:
            raise UserError(f"{where}: analysis job {job!r} is not a pretrain job ({', '.join(names)})")
    images = (exp["analysis"] or {}).get("images")
    if images and images not in dataset_names(exp):
        raise UserError(f"{where}: analysis.images {images!r} is not a finetune dataset "
                        f"({', '.join(dataset_names(exp))})")


def dataset_names(exp: dict) -> list[str]:
    """The downstream datasets by name; a single `config` is called `data`."""
    return list(exp["finetune"]["datasets"]) or ["data"]


def load_experiment(path: str, quick: bool = False, overrides: list[str] = (), holdout: float | None = None) -> dict:
    """The experiment file (its quick: block laid on top when `quick`), the overrides applied, checked."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"cannot read experiment file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"experiment file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"experiment file {path} must hold a mapping of keys to values")
    if quick and "quick" not in raw:
        raise UserError(f"{path} has no quick: variant; leave out --quick")
    if quick:
        raw = merge(raw, raw["quick"])
    raw.pop("quick", None)
    if overrides:  # on the checked file, so that a key left at its default can be overridden too
        raw = check_experiment(raw, path)
        for text in overrides:
            apply_override(raw, text)
    if holdout is not None:
        from finetune.datasets import check_holdout  # here: the runner otherwise never loads torch

        check_holdout(holdout, f"--holdout {holdout}")  # now, not after the renders and pretraining
        raw.setdefault("finetune", {})
        raw["finetune"]["overrides"] = {**(raw["finetune"].get("overrides") or {}), "data.holdout": holdout}
    return check_experiment(raw, path)
