"""Pretrain a timm model on fractal shards, on-the-fly fractals or ImageNet.

    accelerate launch pretrain/main.py --config configs/pretrain/deit_s16_multi.yaml --data DIR --out RUN [key=value ...]
    python -m pretrain.main --config configs/pretrain/tiny_cpu.yaml --out runs/tiny

The run folder gets the resolved config.yaml, metrics.jsonl, TensorBoard logs, checkpoints/ and, at
the end, model.safetensors + model.json (the hand-off to finetune/).
"""

import os
import sys

import torch

from common import runs
from common.config import load_config, save_config
from common.engine import Trainer, evaluate, make_accelerator, per_rank_batch, seed_everything
from common.errors import ArgumentParser, run_main
from common.io import write_json
from common.models import count_parameters, create_model, export_model
from common.transforms import BatchFinish, make_transforms
from pretrain.config import PretrainConfig


def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", help="run folder (default runs/pretrain/<config name>)")
    ap.add_argument("--data", help="fractal dataset folder or ImageNet folder/shards (sets data.path)")
    runs.add_resume_arguments(ap)
    ap.add_argument("--print-config", action="store_true", help="print the resolved, checked config and exit")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. epochs=10 optim.lr=1e-3")
    return ap.parse_args(argv)


def resolve(args) -> dict:
    cfg = load_config(args.config, args.overrides, PretrainConfig)
    if args.data:
        cfg["data"]["path"] = args.data
        if cfg["data"]["source"] == "render":  # a folder given to a render config means: use its shards
            cfg["data"]["source"] = "shards"
    name = os.path.splitext(os.path.basename(args.config))[0]
    cfg["run_dir"] = args.out or os.path.join("runs", "pretrain", name)
    return cfg


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = resolve(args)
    started = runs.start(cfg, args, make_accelerator)
    if started is None:
        return
    acc, status = started
    seed_everything(cfg["seed"], acc)
    source = make_data(cfg, acc)
    trainer = make_trainer(cfg, source, acc)
    if status == runs.RESUME:
        trainer.resume(args.resume_from)
    if acc.is_main_process:
        save_config(cfg, cfg["run_dir"])
    train(cfg, source, trainer, acc)
    export(cfg, source, trainer, acc)
    acc.wait_for_everyone()
    acc.end_training()


def make_data(cfg: dict, acc):
    from pretrain.data import make_source

    batch = per_rank_batch(cfg["batch_size"], acc)
    # workers crop/flip/augment to uint8; normalising and random erasing happen per batch on the device
    transforms = make_transforms(cfg["aug"], cfg["img_size"], cfg["mean"], cfg["std"], uint8_train=True)
    return make_source(cfg, transforms, batch, acc.process_index, acc.num_processes)


def make_trainer(cfg: dict, source, acc) -> Trainer:
    model = create_model(cfg["model"], source.num_classes, img_size=cfg["img_size"], drop_path_rate=cfg["drop_path"],
                         model_kwargs=cfg["model_kwargs"])
    total, _ = count_parameters(model)
    acc.print(f"{cfg['model']}: {total / 1e6:.2f} M parameters; data {source.description}; "
              f"{source.steps_per_epoch} updates/epoch x {cfg['epochs']} epochs, global batch {cfg['batch_size']}")
    return Trainer(cfg, model, acc, cfg["run_dir"], num_classes=source.num_classes, multilabel=source.multilabel,
                   steps_per_epoch=source.steps_per_epoch, epochs=cfg["epochs"], global_batch=cfg["batch_size"])


def train(cfg: dict, source, trainer: Trainer, acc) -> None:
    def batches(epoch, skip):
        for images, targets, keys in source.train_batches(epoch, skip):
            yield images, targets.to(acc.device), keys

    val = source.val_loader()

    def validate(model):
        result = evaluate(model, val, acc, cfg["eval_batch"], source.num_classes, source.multilabel)
        result.pop("confusion", None)
        # damaged samples skipped so far, all ranks (every rank validates, so the reduce meets on each)
        result["corrupt_samples"] = int(acc.reduce(torch.tensor(source.corrupt, device=acc.device), "sum"))
        return result

    key_log = None
    if cfg["log_sample_keys"]:
        key_log = os.path.join(cfg["run_dir"], f"sample_keys.rank{acc.process_index}.txt")
    trainer.fit(batches, evaluate=validate, eval_every=cfg["eval_every"], checkpoint_every=cfg["checkpoint_every"],
                key_log=key_log, finish_batch=BatchFinish(cfg["aug"], cfg["mean"], cfg["std"], acc.device))


def export(cfg: dict, source, trainer: Trainer, acc) -> None:
    """model.safetensors + model.json (the hand-off to finetune), then final.json: the run is finished."""
    if not acc.is_main_process:
        return
    updates = trainer.progress.step
    sidecar = {"model": cfg["model"], "model_kwargs": cfg["model_kwargs"], "num_classes": source.num_classes,
               "img_size": cfg["img_size"], "mean": cfg["mean"], "std": cfg["std"], "multilabel": source.multilabel,
               "source": source.description, "recipe": cfg["recipe"], "updates": updates,
               "images_seen": updates * cfg["batch_size"], "weights": trainer.weights_kind}
    with trainer.exporting():
        path = export_model(trainer.export_model(), cfg["run_dir"], sidecar)
        write_json(os.path.join(cfg["run_dir"], "final.json"),
                   {"updates": updates, "epochs": trainer.progress.epoch, "weights": trainer.weights_kind})
    acc.print(f"weights: {path}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
