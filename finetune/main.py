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

import numpy as np
import torch

from common.config import load_config, save_config
from common.engine import Trainer, evaluate, make_accelerator, per_rank_batch, seed_everything
from common.errors import ArgumentParser, UserError, run_main
from common.models import count_parameters, create_model, export_model, read_sidecar
from common.plots import confusion, curves
from finetune import augment, datasets
from finetune.fewshot import features, few_shot

MODES = ("finetune", "linear_probe", "few_shot")


def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--init", default="scratch", help="scratch, a pretrain model.safetensors, or timm weights")
    ap.add_argument("--data", help="dataset folder (sets data.path)")
    ap.add_argument("--out", help="run folder (default runs/finetune/<config name>)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=1 model=resnet18 mode=linear_probe")
    return ap.parse_args(argv)


def resolve(args) -> dict:
    cfg = load_config(args.config, args.overrides)
    if args.data:
        cfg["data"]["path"] = args.data
    cfg["init"] = args.init
    cfg["run_dir"] = args.out or os.path.join("runs", "finetune", os.path.splitext(os.path.basename(args.config))[0])
    if cfg["mode"] not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, got {cfg['mode']!r}")
    eval_every = cfg.get("eval_every", 1)
    if isinstance(eval_every, bool) or not isinstance(eval_every, (int, float)) or eval_every <= 0:
        raise UserError(f"eval_every must be a number above 0 (epochs between validations, e.g. 1 or 0.5), "
                        f"got {eval_every!r}")
    sidecar = read_sidecar(args.init) if args.init != "scratch" else None
    if args.init != "scratch" and not os.path.exists(args.init):
        raise UserError(f"--init {args.init} does not exist; pass scratch or a weights file")
    if sidecar:  # the weights decide the architecture and normalisation unless the config pins them
        if cfg.get("model") in (None, "auto"):
            cfg["model"] = sidecar["model"]
        if not cfg.get("model_kwargs"):
            cfg["model_kwargs"] = sidecar.get("model_kwargs") or {}
        if cfg.get("mean") in (None, "auto"):
            cfg["mean"], cfg["std"] = sidecar["mean"], sidecar["std"]
        cfg["pretrain_source"] = sidecar.get("source")
        if sidecar.get("images_seen") and isinstance(cfg["pretrain_source"], dict):  # the pretraining budget
            cfg["pretrain_source"]["images_seen"] = sidecar["images_seen"]
    if cfg.get("model") in (None, "auto"):
        raise UserError("set model=<timm name> (or pass --init weights with a model.json sidecar)")
    if cfg.get("mean") in (None, "auto"):
        cfg["mean"], cfg["std"] = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    return cfg


def with_transform(dataset, transform):
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    base.transform = transform
    return dataset


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = resolve(args)
    acc = make_accelerator(cfg)
    seed_everything(int(cfg["seed"]), acc)
    split = datasets.load(cfg)
    if split.multilabel and not cfg["data"].get("multilabel", False):
        raise UserError("this dataset is multi-label but the config is single-label; use a multi-label config "
                        "(e.g. configs/finetune/plant_pathology_multilabel.yaml) or data.multilabel=true")
    num_classes = len(split.classes)
    train_tf, eval_tf, engine_aug = augment.make(cfg["augment"], int(cfg["img_size"]), cfg["mean"], cfg["std"], cfg["aug"])
    cfg["aug"].update(engine_aug)
    train_set, val_set = split.train, split.val
    per_class = cfg["data"].get("train_per_class")
    if per_class:
        train_set = torch.utils.data.Subset(train_set, datasets.subsample_per_class(
            train_set.targets, int(per_class), int(cfg["data"].get("subset_seed", 0))))
    # the model: scratch or pretrained weights, head sized for this dataset
    model = create_model(cfg["model"], num_classes, img_size=int(cfg["img_size"]), init=cfg["init"],
                         drop_path_rate=float(cfg.get("drop_path", 0.0)) if cfg["mode"] == "finetune" else 0.0,
                         model_kwargs=cfg.get("model_kwargs"))
    run_dir = cfg["run_dir"]
    if acc.is_main_process:
        os.makedirs(run_dir, exist_ok=True)
        for stale in ("metrics.jsonl", "final.json"):  # a fresh run: no lines from an earlier one
            if os.path.exists(os.path.join(run_dir, stale)):
                os.remove(os.path.join(run_dir, stale))
        save_config(cfg, run_dir)
    acc.wait_for_everyone()
    eval_batch = int(cfg.get("eval_batch", 256))

    if cfg["mode"] == "few_shot":
        model = model.to(acc.device).eval()
        fx, fy = features(model, with_transform(train_set, eval_tf), acc, eval_batch)
        vx, vy = features(model, with_transform(val_set, eval_tf), acc, eval_batch)
        result = few_shot(fx, fy, vx, vy, num_classes, cfg["few_shot"]["shots"], int(cfg["few_shot"]["trials"]),
                          float(cfg["few_shot"]["l2"]), int(cfg["seed"]))
        if acc.is_main_process:
            final = {"mode": "few_shot", "model": cfg["model"], "init": cfg["init"], "dataset": cfg["data"]["format"],
                     "pretrain_source": cfg.get("pretrain_source"), "few_shot": result}
            _write_json(os.path.join(run_dir, "final.json"), final)
            print(json.dumps(result))
        return

    train_mode = param_groups = None  # full fine-tuning: every parameter, plain train mode
    if cfg["mode"] == "linear_probe":
        head = model.get_classifier()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
        param_groups = [{"params": [p for p in head.parameters()]}]

        def probe_mode(m):  # backbone frozen in eval mode (no BN statistics, no dropout); head trains
            m.eval()
            acc.unwrap_model(m).get_classifier().train()

        train_mode = probe_mode

    total, trainable = count_parameters(model)
    acc.print(f"{cfg['model']} ({cfg['mode']}, init {cfg['init']}): {total:,} parameters, {trainable:,} trainable; "
              f"{len(train_set)} train / {len(val_set)} val images, {num_classes} classes")
    batch = per_rank_batch(int(cfg["batch_size"]), acc)
    loader = torch.utils.data.DataLoader(with_transform(train_set, train_tf), batch_size=batch, shuffle=True,
                                         num_workers=int(cfg["data"]["workers"]), drop_last=True,
                                         generator=torch.Generator().manual_seed(int(cfg["seed"])))
    loader = acc.prepare_data_loader(loader)
    steps = len(loader)
    if steps < 1:
        raise UserError(f"{len(train_set)} training images are fewer than one batch ({cfg['batch_size']}); lower batch_size")
    trainer = Trainer(cfg, model, acc, run_dir, num_classes=num_classes, multilabel=split.multilabel,
                      steps_per_epoch=steps, epochs=int(cfg["epochs"]), global_batch=int(cfg["batch_size"]),
                      param_groups=param_groups, train_mode=train_mode, train_metrics=True)
    val_set = with_transform(val_set, eval_tf)
    history, last_confusion = [], {}

    def batches(epoch, skip):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for i, (images, targets) in enumerate(loader):
            if i >= skip:
                yield images, targets, ()

    def validate(m):
        result = evaluate(m, val_set, acc, eval_batch, num_classes, split.multilabel)
        last_confusion["cm"] = result.pop("confusion", None)
        return result

    trainer.fit(batches, evaluate=validate, eval_every_epochs=float(cfg.get("eval_every", 1)),
                checkpoint_every=int(cfg.get("checkpoint_every", 0)), on_epoch_end=history.append)

    if acc.is_main_process:
        export_model(acc.unwrap_model(trainer.model), run_dir, {
            "model": cfg["model"], "model_kwargs": cfg.get("model_kwargs") or {}, "num_classes": num_classes,
            "img_size": int(cfg["img_size"]), "mean": cfg["mean"], "std": cfg["std"], "multilabel": split.multilabel,
            "source": {"finetuned_on": cfg["data"]["format"], "init": cfg["init"]}, "recipe": cfg["mode"]})
        _outputs(cfg, run_dir, history, last_confusion.get("cm"), split, total, trainable)
    acc.wait_for_everyone()
    acc.end_training()


def _outputs(cfg, run_dir, history, cm, split, total, trainable):
    key = "val_map" if split.multilabel else "val_acc"
    best = max(history, key=lambda r: r.get(key, -1))
    pick = lambda r: {k: v for k, v in r.items() if not isinstance(v, (list, dict))}  # noqa: E731
    final = {"mode": cfg["mode"], "model": cfg["model"], "init": cfg["init"], "dataset": cfg["data"]["format"],
             "augment": cfg["augment"], "pretrain_source": cfg.get("pretrain_source"), "seed": cfg["seed"],
             "train_images": cfg["data"].get("train_per_class") and cfg["data"]["train_per_class"] * len(split.classes),
             "holdout": cfg["data"].get("holdout"),  # evaluated on held-out training images, not the test split
             "parameters": total, "trainable_parameters": trainable, "epochs": int(cfg["epochs"]),
             "last_epoch": pick(history[-1]), "best_epoch": pick(best),
             "note": "last_epoch is the result; best_epoch is selected on the validation split and reported as an extra"}
    _write_json(os.path.join(run_dir, "final.json"), final)
    curves(history, os.path.join(run_dir, "curves.png"), f"{cfg['model']} {cfg['mode']} init={os.path.basename(cfg['init'])}")
    if cm is not None:
        np.savetxt(os.path.join(run_dir, "confusion.csv"), cm, fmt="%d", delimiter=",",
                   header=",".join(str(c) for c in split.classes))
        confusion(cm, split.classes, os.path.join(run_dir, "confusion.png"), "last epoch, validation")
    last = final["last_epoch"]
    print(f"last epoch ({last['epoch']}): " + ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k.startswith("val_") and isinstance(v, float)))
    print(f"best epoch ({best['epoch']}, extra): {key}={best.get(key, float('nan')):.4f}; run folder {run_dir}")


def _write_json(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
