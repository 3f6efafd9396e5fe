"""Pretrain a timm model on fractal shards, on-the-fly fractals or ImageNet.

    accelerate launch pretrain/main.py --config configs/pretrain/deit_s16_multi.yaml --data DIR --out RUN [key=value ...]
    python -m pretrain.main --config configs/pretrain/tiny_cpu.yaml --out runs/tiny

The run folder gets the resolved config.yaml, metrics.jsonl, TensorBoard logs, checkpoints/ and, at
the end, model.safetensors + model.json (the hand-off to finetune/).
"""

import json
import os
import sys

from common.config import load_config, save_config
from common.engine import Trainer, evaluate, make_accelerator, per_rank_batch, seed_everything
from common.errors import ArgumentParser, UserError, run_main
from common.models import count_parameters, create_model, export_model
from common.transforms import BatchFinish, make_transforms


def parse_args(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", help="run folder (default runs/pretrain/<config name>)")
    ap.add_argument("--data", help="fractal dataset folder or ImageNet folder/shards (sets data.path)")
    ap.add_argument("--resume", nargs="?", const="latest", help="continue the run in --out (latest checkpoint, or a path)")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. epochs=10 optim.lr=1e-3")
    return ap.parse_args(argv)


def resolve(args) -> dict:
    cfg = load_config(args.config, args.overrides)
    if args.data:
        cfg["data"]["path"] = args.data
        if cfg["data"]["source"] == "render":  # a folder given to a render config means: use its shards
            cfg["data"]["source"] = "shards"
    name = os.path.splitext(os.path.basename(args.config))[0]
    cfg["run_dir"] = args.out or os.path.join("runs", "pretrain", name)
    return cfg


def check_run_folder(cfg: dict, resume: str | None) -> None:
    """A run folder belongs to one config: continuing needs --resume and the same config."""
    path = os.path.join(cfg["run_dir"], "config.yaml")
    if not os.path.exists(path):
        return
    import yaml

    with open(path) as f:
        old = yaml.safe_load(f)
    if not resume:
        raise UserError(f"{cfg['run_dir']} already holds a run; add --resume to continue it or choose another --out")
    if old != cfg:
        differ = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
        raise UserError(f"--resume with a different config than {path} (differs in: {', '.join(differ)})")


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = resolve(args)
    acc = make_accelerator(cfg)
    if acc.is_main_process:
        check_run_folder(cfg, args.resume)
    acc.wait_for_everyone()
    seed_everything(int(cfg["seed"]), acc)
    batch = per_rank_batch(int(cfg["batch_size"]), acc)
    # workers crop/flip/augment to uint8; normalising and random erasing happen per batch on the device
    transforms = make_transforms(cfg["aug"], int(cfg["img_size"]), cfg["mean"], cfg["std"], uint8_train=True)

    from pretrain.data import make_source

    source = make_source(cfg, transforms, batch, acc.process_index, acc.num_processes)
    model = create_model(cfg["model"], source.num_classes, img_size=int(cfg["img_size"]),
                         drop_path_rate=float(cfg.get("drop_path", 0.0)), model_kwargs=cfg.get("model_kwargs"))
    total, trainable = count_parameters(model)
    acc.print(f"{cfg['model']}: {total / 1e6:.2f} M parameters; data {source.description}; "
              f"{source.steps_per_epoch} updates/epoch x {cfg['epochs']} epochs, global batch {cfg['batch_size']}")
    trainer = Trainer(cfg, model, acc, cfg["run_dir"], num_classes=source.num_classes, multilabel=source.multilabel,
                      steps_per_epoch=source.steps_per_epoch, epochs=int(cfg["epochs"]),
                      global_batch=int(cfg["batch_size"]))
    if args.resume:
        trainer.resume(args.resume)
    if acc.is_main_process:
        save_config(cfg, cfg["run_dir"])

    def batches(epoch, skip):
        for images, targets, keys in source.train_batches(epoch, skip):
            yield images, targets.to(acc.device), keys

    val = source.val_loader()

    def validate(model):
        result = evaluate(model, val, acc, int(cfg.get("eval_batch", 256)), source.num_classes, source.multilabel)
        result.pop("confusion", None)
        return result

    key_log = None
    if cfg.get("log_sample_keys"):
        key_log = os.path.join(cfg["run_dir"], f"sample_keys.rank{acc.process_index}.txt")
    trainer.fit(batches, evaluate=validate, eval_every_epochs=int(cfg.get("eval_every", 1)),
                checkpoint_every=int(cfg.get("checkpoint_every", 0)), key_log=key_log,
                finish_batch=BatchFinish(cfg["aug"], cfg["mean"], cfg["std"], acc.device))

    if acc.is_main_process:
        sidecar = {"model": cfg["model"], "model_kwargs": cfg.get("model_kwargs") or {},
                   "num_classes": source.num_classes, "img_size": int(cfg["img_size"]), "mean": cfg["mean"],
                   "std": cfg["std"], "multilabel": source.multilabel, "source": source.description,
                   "recipe": cfg.get("recipe"), "updates": trainer.progress.step,
                   "images_seen": trainer.progress.step * int(cfg["batch_size"])}
        path = export_model(acc.unwrap_model(trainer.model), cfg["run_dir"], sidecar)
        with open(os.path.join(cfg["run_dir"], "final.json"), "w") as f:
            json.dump({"updates": trainer.progress.step, "epochs": trainer.progress.epoch}, f)
        acc.print(f"weights: {path}")
    acc.wait_for_everyone()
    acc.end_training()


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
