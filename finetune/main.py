"""Fine-tune / linear-probe / few-shot evaluate a model on CIFAR-10/100, Plant Pathology 2021 or any
image folder.

    accelerate launch finetune/main.py --config configs/finetune/cifar10.yaml --init RUN/model.safetensors --data PATH
    python -m finetune.main --config configs/finetune/cifar10.yaml --init scratch --data PATH epochs=1

--init is `scratch`, a pretrain model.safetensors (its model.json sidecar gives the model,
architecture and normalisation), or any local timm-compatible weights file. The run folder gets
config.yaml, metrics.jsonl, curves.png, confusion.png/.csv, final.json (last and best epoch,
labelled) and model.safetensors.
"""

import json
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import skip_first_batches

from common import runs
from common.config import load_config, save_config
from common.engine import (Trainer, evaluate, make_accelerator, per_rank_batch, position_seed,
                           seed_everything, seed_sample)
from common.errors import ArgumentParser, UserError, run_main
from common.io import atomic_write, write_json
from common.models import (TIMM_PREFIX, classifier_modules, count_parameters, create_model, export_model,
                           published_weights, read_sidecar)
from common.plots import confusion, curves
from finetune import augment, datasets
from finetune.config import FinetuneConfig
from finetune.fewshot import features, few_shot

def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--init", default="scratch", help="scratch, a pretrain model.safetensors, or timm weights")
    ap.add_argument("--data", help="dataset folder (sets data.path)")
    ap.add_argument("--out", help="run folder (default runs/finetune/<config name>)")
    runs.add_resume_arguments(ap)
    ap.add_argument("--print-config", action="store_true", help="print the resolved, checked config and exit")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=1 model=resnet18 mode=linear_probe")
    return ap.parse_args(argv)


def resolve(args) -> dict:
    cfg = load_config(args.config, args.overrides, FinetuneConfig)
    if args.data:
        cfg["data"]["path"] = args.data
    cfg["init"] = args.init
    cfg["run_dir"] = args.out or os.path.join("runs", "finetune", os.path.splitext(os.path.basename(args.config))[0])
    if args.init.startswith(TIMM_PREFIX):
        _take_from_published(cfg, args.init)
    else:
        _take_from_sidecar(cfg, args.init)
    if cfg["model"] == "auto":
        raise UserError("set model=<timm name> (or pass --init weights with a model.json sidecar, or timm:<name>.<tag>)")
    if cfg["mean"] == "auto":
        cfg["mean"], cfg["std"] = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    if cfg["img_size"] == "auto":
        cfg["img_size"] = 32
    if cfg["aug"]["interpolation"] == "auto":
        cfg["aug"]["interpolation"] = "bicubic"
    return cfg


def _take_from_sidecar(cfg: dict, init: str) -> None:
    """A pretrain model.safetensors: its model.json decides the architecture and normalisation unless
    the config pins them."""
    if init == "scratch":
        return
    if not os.path.exists(init):
        raise UserError(f"--init {init} does not exist; pass scratch, a weights file or timm:<name>.<tag>")
    sidecar = read_sidecar(init)
    if not sidecar:
        return
    if cfg["model"] == "auto":
        cfg["model"] = sidecar["model"]
    if not cfg["model_kwargs"]:
        cfg["model_kwargs"] = sidecar.get("model_kwargs") or {}
    if cfg["mean"] == "auto":
        cfg["mean"], cfg["std"] = sidecar["mean"], sidecar["std"]
    cfg["pretrain_source"] = sidecar.get("source")
    if sidecar.get("images_seen") and isinstance(cfg["pretrain_source"], dict):  # the pretraining budget
        cfg["pretrain_source"]["images_seen"] = sidecar["images_seen"]


def _take_from_published(cfg: dict, init: str) -> None:
    """timm:<name>[.<tag>]: timm's registry names the model and the weights' normalisation, input size
    and interpolation (each unless the config pins it); the source is named in words for the report."""
    weights = published_weights(init)
    if cfg["model"] == "auto":
        cfg["model"] = weights["model"]
    if cfg["mean"] == "auto":
        cfg["mean"], cfg["std"] = weights["mean"], weights["std"]
    if cfg["img_size"] == "auto":
        cfg["img_size"] = weights["img_size"]
    if cfg["aug"]["interpolation"] == "auto":
        cfg["aug"]["interpolation"] = weights["interpolation"]
    cfg["pretrain_source"] = {"kind": "timm", "weights": weights["weights"], "tag": weights["tag"],
                              "description": weights["description"]}


def with_transform(dataset, transform):
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    base.transform = transform
    return dataset


class SeededSamples(torch.utils.data.Dataset):
    """Training samples whose random augmentation is a pure function of (seed, epoch, index): the same
    draws whatever the number of loader workers, and again when a run is resumed."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        # the trailing 1 keeps these apart from update seeds; transforms draw from the CPU generators only
        seed_sample(self.seed, self.epoch, index, 1)
        return self.dataset[index]


@dataclass
class Data:
    """The datasets of a run, transforms attached."""

    split: datasets.Split
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    num_classes: int
    engine_aug: dict  # batch-level augmentation (mixup/cutmix) of the preset, for the engine


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = resolve(args)
    started = runs.start(cfg, args, make_accelerator)
    if started is None:
        return
    acc, status = started
    seed_everything(cfg["seed"], acc)
    data = load_data(cfg)
    model = make_model(cfg, data.num_classes)
    if cfg["mode"] == "few_shot":
        run_few_shot(cfg, model, data, acc)
    else:
        trainer, last_confusion = train(cfg, model, data, acc, resume=status == runs.RESUME,
                                        checkpoint=args.resume_from)
        write_results(cfg, trainer, data, last_confusion, acc)
    acc.wait_for_everyone()
    acc.end_training()


def load_data(cfg: dict) -> Data:
    split = datasets.load(cfg)
    if split.multilabel and not cfg["data"]["multilabel"]:
        raise UserError("this dataset is multi-label but the config is single-label; use a multi-label config "
                        "(e.g. configs/finetune/plant_pathology_multilabel.yaml) or data.multilabel=true")
    train_tf, eval_tf, engine_aug = augment.make(cfg["augment"], cfg["img_size"], cfg["mean"], cfg["std"], cfg["aug"])
    train_set = split.train
    if cfg["data"]["train_per_class"]:  # low-data regime
        train_set = torch.utils.data.Subset(train_set, datasets.subsample_per_class(
            train_set.targets, cfg["data"]["train_per_class"], cfg["data"]["subset_seed"]))
    if cfg["mode"] == "few_shot":
        train_tf = eval_tf  # features of the plain images
    return Data(split, with_transform(train_set, train_tf), with_transform(split.val, eval_tf), len(split.classes),
                engine_aug)


def make_model(cfg: dict, num_classes: int) -> torch.nn.Module:
    """Scratch or pretrained weights, the head sized for this dataset; a linear probe freezes all but the head."""
    model = create_model(cfg["model"], num_classes, img_size=cfg["img_size"], init=cfg["init"],
                         drop_path_rate=cfg["drop_path"] if cfg["mode"] == "finetune" else 0.0,
                         model_kwargs=cfg["model_kwargs"])
    if cfg["mode"] == "linear_probe":
        model.requires_grad_(False)
        for head in classifier_modules(model):  # one head, or two for distilled DeiTs
            head.requires_grad_(True)
    return model


def run_few_shot(cfg: dict, model, data: Data, acc) -> None:
    model = model.to(acc.device).eval()
    fx, fy = features(model, data.train, acc, cfg["eval_batch"])
    vx, vy = features(model, data.val, acc, cfg["eval_batch"])
    shots = cfg["few_shot"]
    result = few_shot(fx, fy, vx, vy, data.num_classes, shots["shots"], shots["trials"], shots["l2"], cfg["seed"])
    if acc.is_main_process:
        save_config(cfg, cfg["run_dir"])
        final = {"mode": "few_shot", "model": cfg["model"], "init": cfg["init"], "dataset": cfg["data"]["format"],
                 "pretrain_source": cfg.get("pretrain_source"), "few_shot": result}
        write_json(os.path.join(cfg["run_dir"], "final.json"), final, indent=1, default=float)
        print(json.dumps(result))


def train(cfg: dict, model, data: Data, acc, resume: bool, checkpoint: str | None):
    """Fine-tune (or train the probe's head); returns the trainer and the last validation confusion matrix."""
    def probe_mode(m):  # backbone frozen in eval mode (no BN statistics, no dropout); head trains
        m.eval()
        for head in classifier_modules(acc.unwrap_model(m)):
            head.train()

    train_mode = probe_mode if cfg["mode"] == "linear_probe" else None  # None: plain train mode

    total, trainable = count_parameters(model)
    acc.print(f"{cfg['model']} ({cfg['mode']}, init {cfg['init']}): {total:,} parameters, {trainable:,} trainable; "
              f"{len(data.train)} train / {len(data.val)} val images, {data.num_classes} classes")
    samples = SeededSamples(data.train, cfg["seed"])
    generator = torch.Generator()
    loader = acc.prepare_data_loader(torch.utils.data.DataLoader(
        samples, batch_size=per_rank_batch(cfg["batch_size"], acc), shuffle=True, num_workers=cfg["data"]["workers"],
        drop_last=True, generator=generator))
    if len(loader) < 1:
        raise UserError(f"{len(data.train)} training images are fewer than one batch ({cfg['batch_size']}); "
                        f"lower batch_size")
    engine_cfg = {**cfg, "aug": {**cfg["aug"], **data.engine_aug}}  # the preset's mixup/cutmix (not saved)
    trainer = Trainer(engine_cfg, model, acc, cfg["run_dir"], num_classes=data.num_classes,
                      multilabel=data.split.multilabel, steps_per_epoch=len(loader), epochs=cfg["epochs"],
                      global_batch=cfg["batch_size"], train_mode=train_mode, train_metrics=True)
    if resume:
        trainer.resume(checkpoint)
    if acc.is_main_process:  # everything checked: the folder now holds this run
        save_config(cfg, cfg["run_dir"])

    def batches(epoch, skip):
        """The epoch's batches, a pure function of (seed, epoch): order and augmentation alike."""
        samples.epoch = epoch
        generator.manual_seed(position_seed(cfg["seed"], epoch))
        loader.set_epoch(epoch)
        for images, targets in skip_first_batches(loader, skip) if skip else loader:  # skipped: never loaded
            yield images, targets, ()

    last_confusion = {}

    def validate(m):
        result = evaluate(m, data.val, acc, cfg["eval_batch"], data.num_classes, data.split.multilabel)
        last_confusion["cm"] = result.pop("confusion", None)
        return result

    trainer.fit(batches, evaluate=validate, eval_every=cfg["eval_every"], checkpoint_every=cfg["checkpoint_every"])
    if "cm" not in last_confusion:  # resumed after the last update: the results were not written yet
        validate(trainer.eval_model)
    return trainer, last_confusion.get("cm")


def write_results(cfg: dict, trainer: Trainer, data: Data, cm, acc) -> None:
    """Weights, pictures and, last, final.json (the mark of a finished run); rank 0."""
    if not acc.is_main_process:
        return
    run_dir, split = cfg["run_dir"], data.split
    total, trainable = count_parameters(trainer.export_model())
    with open(trainer.metrics_path) as f:
        history = [r for r in map(json.loads, f) if "train_loss_avg" in r or "val_loss" in r]
    key = "val_map" if split.multilabel else "val_acc"
    best = max(history, key=lambda r: r.get(key, -1))
    pick = lambda r: {k: v for k, v in r.items() if not isinstance(v, (list, dict))}  # noqa: E731
    final = {"mode": cfg["mode"], "model": cfg["model"], "init": cfg["init"], "dataset": cfg["data"]["format"],
             "augment": cfg["augment"], "pretrain_source": cfg.get("pretrain_source"), "seed": cfg["seed"],
             "train_images": cfg["data"]["train_per_class"] and cfg["data"]["train_per_class"] * len(split.classes),
             "holdout": cfg["data"]["holdout"],  # evaluated on held-out training images, not the test split
             "parameters": total, "trainable_parameters": trainable, "epochs": cfg["epochs"],
             "weights": trainer.weights_kind, "last_epoch": pick(history[-1]), "best_epoch": pick(best),
             "note": "last_epoch is the result; best_epoch is selected on the validation split and reported as an extra"}
    with trainer.exporting():
        export_model(trainer.export_model(), run_dir, {
            "model": cfg["model"], "model_kwargs": cfg["model_kwargs"], "num_classes": data.num_classes,
            "img_size": cfg["img_size"], "mean": cfg["mean"], "std": cfg["std"], "multilabel": split.multilabel,
            "source": {"finetuned_on": cfg["data"]["format"], "init": cfg["init"]}, "recipe": cfg["mode"],
            "weights": trainer.weights_kind})
        curves(history, os.path.join(run_dir, "curves.png"),
               f"{cfg['model']} {cfg['mode']} init={os.path.basename(cfg['init'])}")
        if cm is not None:
            with atomic_write(os.path.join(run_dir, "confusion.csv")) as f:
                np.savetxt(f, cm, fmt="%d", delimiter=",", header=",".join(str(c) for c in split.classes))
            confusion(cm, split.classes, os.path.join(run_dir, "confusion.png"), "last epoch, validation")
        write_json(os.path.join(run_dir, "final.json"), final, indent=1, default=float)
    last = final["last_epoch"]
    print(f"last epoch ({last['epoch']}): " + ", ".join(f"{k}={v:.4f}" for k, v in last.items()
                                                        if k.startswith("val_") and isinstance(v, float)))
    print(f"best epoch ({best['epoch']}, extra): {key}={best.get(key, float('nan')):.4f}; run folder {run_dir}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
