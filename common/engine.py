"""The training engine both stages use: Accelerate for devices and processes, timm for optimiser,
schedule, mixup and losses; checkpoints that survive interruption; progress, TensorBoard, metrics.jsonl.

A run is a sequence of optimiser updates. The caller gives a batch iterator per epoch and an
evaluation function; the engine does the rest, and `resume` continues a run exactly: same update
count, schedule, data position (the caller's iterators are keyed by epoch and step) and RNG states.
"""

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from tqdm import tqdm

from .errors import UserError


def make_accelerator(cfg: dict) -> Accelerator:
    precision = cfg.get("precision", "no")
    if precision in (False, None):  # YAML reads a bare `no` (e.g. precision=no on the command line) as false
        precision = "no"
    if precision not in ("no", "bf16", "fp16"):
        raise UserError(f"precision must be no, bf16 or fp16, got {precision!r}")
    cpu = cfg.get("device", "auto") == "cpu" or not torch.cuda.is_available()
    if cpu and precision == "fp16":
        precision = "no"  # fp16 autocast is a GPU feature
    return Accelerator(cpu=cpu, mixed_precision=precision,
                       gradient_accumulation_steps=int(cfg.get("grad_accum", 1)))


def per_rank_batch(global_batch: int, accelerator: Accelerator) -> int:
    world = accelerator.num_processes * accelerator.gradient_accumulation_steps
    if global_batch % world:
        raise UserError(f"batch_size {global_batch} does not divide into {accelerator.num_processes} processes x "
                        f"{accelerator.gradient_accumulation_steps} accumulation steps; use a multiple of {world}")
    return global_batch // world


def scaled_lr(opt_cfg: dict, global_batch: int) -> float:
    """lr = base_lr x global batch / lr_base_batch (linear scaling, as DeiT), unless lr is given."""
    if opt_cfg.get("lr"):
        return float(opt_cfg["lr"])
    return float(opt_cfg["base_lr"]) * global_batch / float(opt_cfg.get("lr_base_batch", 512))


def make_mixup(aug: dict, num_classes: int, multilabel: bool) -> Mixup | None:
    mixup, cutmix = float(aug.get("mixup", 0)), float(aug.get("cutmix", 0))
    if mixup <= 0 and cutmix <= 0:
        return None
    if multilabel:  # timm's Mixup one-hot encodes integer labels; multi-hot targets are not supported
        raise UserError("mixup/cutmix apply to single-label data; set aug.mixup=0 aug.cutmix=0 for multi-label")
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=float(aug.get("mixup_prob", 1.0)),
                 switch_prob=float(aug.get("mixup_switch_prob", 0.5)),
                 label_smoothing=float(aug.get("label_smoothing", 0.0)),
                 num_classes=num_classes)


def make_loss(multilabel: bool, mixup: Mixup | None, smoothing: float):
    if multilabel:
        return torch.nn.BCEWithLogitsLoss()
    if mixup is not None:
        return SoftTargetCrossEntropy()  # mixup already produced smoothed soft targets
    return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else torch.nn.CrossEntropyLoss()


@dataclass
class Progress:
    """What resume needs beyond the model/optimiser: saved by Accelerate with the checkpoint."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best: float = -math.inf

    def state_dict(self):
        return dict(self.__dict__)

    def load_state_dict(self, state):
        self.__dict__.update(state)


class Trainer:
    def __init__(self, cfg: dict, model, accelerator: Accelerator, run_dir: str, *, num_classes: int,
                 multilabel: bool, steps_per_epoch: int, epochs: int, global_batch: int, param_groups=None,
                 train_mode=None, train_metrics: bool = False):
        """param_groups: what the optimiser updates (default: every parameter). train_mode(model):
        how to put the model in training mode (a linear probe keeps its backbone in eval mode).
        train_metrics: also report loss/accuracy/F1 of the training predictions each epoch."""
        self.cfg, self.acc, self.run_dir = cfg, accelerator, run_dir
        self.multilabel, self.num_classes = multilabel, num_classes
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.total_steps = steps_per_epoch * epochs
        self.global_batch = global_batch
        self.train_mode = train_mode or (lambda m: m.train())
        self.train_metrics = train_metrics
        opt_cfg, aug = cfg["optim"], cfg.get("aug", {})
        if cfg.get("channels_last"):
            model = model.to(memory_format=torch.channels_last)
        lr = scaled_lr(opt_cfg, global_batch)
        self.optimizer = create_optimizer_v2(param_groups if param_groups is not None else model, opt=opt_cfg["opt"],
                                             lr=lr, weight_decay=float(opt_cfg.get("weight_decay", 0.0)),
                                             momentum=float(opt_cfg.get("momentum", 0.9)),
                                             layer_decay=opt_cfg.get("layer_decay"))
        self.model, self.optimizer = accelerator.prepare(model, self.optimizer)
        # timm schedulers are not torch LRSchedulers: stepped by hand per update, checkpointed below
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=opt_cfg.get("sched", "cosine"), num_epochs=epochs,
            warmup_epochs=float(opt_cfg.get("warmup_epochs", 0)), warmup_lr=float(opt_cfg.get("warmup_lr", 1e-6)),
            min_lr=float(opt_cfg.get("min_lr", 1e-6)), decay_epochs=float(opt_cfg.get("decay_epochs", 30)),
            decay_rate=float(opt_cfg.get("decay_rate", 0.1)), step_on_epochs=False, updates_per_epoch=steps_per_epoch)
        self.mixup = make_mixup(aug, num_classes, multilabel)
        self.loss_fn = make_loss(multilabel, self.mixup, float(aug.get("label_smoothing", 0.0)))
        self.clip = opt_cfg.get("clip_grad")
        self.progress = Progress()
        accelerator.register_for_checkpointing(self.scheduler, self.progress)
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.tb = None
        if accelerator.is_main_process:
            os.makedirs(run_dir, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    # --- checkpoints: written under a temporary name, then renamed; `latest` names the newest

    def save_checkpoint(self) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):  # never replace a good one with garbage
            raise UserError(f"weights became non-finite by update {self.progress.step}; lower optim.lr or enable "
                            f"optim.clip_grad; the last good checkpoint is kept in {self.ckpt_dir}")
        name = f"step_{self.progress.step:08d}"
        final = os.path.join(self.ckpt_dir, name)
        tmp = final + ".partial"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(tmp)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            with open(os.path.join(self.ckpt_dir, "latest.tmp"), "w") as f:
                f.write(name)
            os.replace(os.path.join(self.ckpt_dir, "latest.tmp"), os.path.join(self.ckpt_dir, "latest"))
            keep = int(self.cfg.get("keep_checkpoints", 2))
            done = sorted(d for d in os.listdir(self.ckpt_dir) if d.startswith("step_") and not d.endswith(".partial"))
            for old in done[:-keep]:
                shutil.rmtree(os.path.join(self.ckpt_dir, old), ignore_errors=True)
        self.acc.wait_for_everyone()

    def resume(self, which: str = "latest") -> bool:
        """Load a checkpoint (the newest complete one by default); False when there is none."""
        if which == "latest":
            pointer = os.path.join(self.ckpt_dir, "latest")
            if not os.path.exists(pointer):
                return False
            which = os.path.join(self.ckpt_dir, open(pointer).read().strip())
        if not os.path.isdir(which):
            raise UserError(f"checkpoint {which} does not exist")
        self.acc.load_state(which)
        self.acc.print(f"resumed from {which} at update {self.progress.step}")
        return True

    # --- logging

    def log(self, record: dict) -> None:
        if not self.acc.is_main_process:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch", "time"):
                self.tb.add_scalar(key, value, record.get("step", self.progress.step))
        self.tb.flush()

    # --- the loop

    def _train_metrics(self, logits: list, targets: list) -> dict:
        """Loss and metrics of this epoch's training predictions (on augmented images), all ranks."""
        from . import metrics

        logits = self.acc.gather(torch.cat(logits)).cpu()
        targets = self.acc.gather(torch.cat(targets)).cpu()
        if self.multilabel:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float())
        else:
            loss = torch.nn.functional.cross_entropy(logits, targets)
        result = metrics.compute(logits.numpy(), targets.numpy(), self.num_classes, self.multilabel)
        result.pop("confusion", None)
        return {"train_loss": float(loss), **{f"train_{k}": v for k, v in result.items()}}

    def _pipeline_figures(self, wait_s: float, window_s: float) -> dict:
        """data_wait: share of the window's wall time the loop waited for the next batch (the step
        syncs on the loss, so this is time the device sat idle); max_mem_gib: peak device memory."""
        out = {"data_wait": round(wait_s / max(window_s, 1e-9), 4)}
        if self.acc.device.type == "cuda":
            out["max_mem_gib"] = round(torch.cuda.max_memory_allocated(self.acc.device) / 2**30, 3)
        return out

    def train_step(self, images, targets):
        """One forward/backward/update; returns (loss, logits)."""
        if self.mixup is not None and images.shape[0] % 2 == 0:
            images, targets = self.mixup(images, targets)
        elif self.multilabel or self.mixup is not None:
            targets = targets.float() if self.multilabel else torch.nn.functional.one_hot(
                targets, self.num_classes).float()
        if self.cfg.get("channels_last"):
            images = images.contiguous(memory_format=torch.channels_last)
        with self.acc.accumulate(self.model):
            with self.acc.autocast():
                logits = self.model(images)
                loss = self.loss_fn(logits, targets)
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(float(loss.detach()))
            self.acc.backward(loss)
            if self.clip and self.acc.sync_gradients:
                self.acc.clip_grad_norm_(self.model.parameters(), float(self.clip))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), logits.detach()

    def fit(self, batches_for_epoch, evaluate=None, eval_every_epochs: float = 1, checkpoint_every: int = 0,
            on_epoch_end=None, key_log: str | None = None, finish_batch=None) -> None:
        """Train to the end. batches_for_epoch(epoch, skip) yields (images, targets, keys), skipping
        the first `skip` batches of that epoch (for resume). finish_batch(images), if given, turns them
        into the model's input on the device (after the step's seed is set, so its random draws are
        keyed by position too). key_log, if given, is a per-rank file that records the keys of every
        sample trained on."""
        p = self.progress
        bar = tqdm(total=self.total_steps, initial=p.step, disable=not self.acc.is_main_process, unit="step",
                   dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)  # quiet in logs
        seen_t, seen_n = time.time(), 0
        wait_s, window_t = 0.0, time.perf_counter()  # time spent waiting for batches in this log window
        loss_avg = None
        within = max(1, round(self.steps_per_epoch * eval_every_epochs)) if eval_every_epochs < 1 else 0
        try:
            while p.epoch < self.epochs:
                self.train_mode(self.model)
                seen_logits, seen_targets = [], []
                ready = time.perf_counter()
                for images, targets, keys in batches_for_epoch(p.epoch, p.step_in_epoch):
                    wait_s += time.perf_counter() - ready
                    if key_log:
                        with open(key_log, "a") as f:
                            f.write("".join(f"{p.step} {k}\n" for k in keys))
                    step_seed(int(self.cfg["seed"]), p.step, self.acc.process_index)
                    if finish_batch is not None:
                        images = finish_batch(images)
                    try:
                        loss, logits = self.train_step(images, targets)
                        if self.train_metrics:
                            seen_logits.append(logits.float())
                            seen_targets.append(targets)
                    except FloatingPointError as e:
                        raise UserError(f"loss became {e} at update {p.step} (epoch {p.epoch}); lower optim.lr or "
                                        f"enable optim.clip_grad; the last good checkpoint is kept in {self.ckpt_dir}") from None
                    p.step += 1
                    p.step_in_epoch += 1
                    seen_n += images.shape[0] * self.acc.num_processes
                    self.scheduler.step_update(num_updates=p.step)
                    loss_avg = loss if loss_avg is None else 0.98 * loss_avg + 0.02 * loss
                    lr = self.optimizer.param_groups[0]["lr"]
                    rate = seen_n / max(time.time() - seen_t, 1e-9)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_avg:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}", refresh=False)
                    if p.step % int(self.cfg.get("log_every", 20)) == 0:
                        now = time.perf_counter()
                        self.log({"step": p.step, "epoch": p.epoch, "train_loss": loss, "lr": lr, "img_per_s": rate,
                                  "time": round(time.time(), 3), **self._pipeline_figures(wait_s, now - window_t)})
                        wait_s, window_t = 0.0, now
                    if checkpoint_every and p.step % checkpoint_every == 0 and p.step_in_epoch < self.steps_per_epoch:
                        self.save_checkpoint()
                    if p.step_in_epoch >= self.steps_per_epoch:
                        break
                    if evaluate is not None and within and p.step_in_epoch % within == 0:
                        # eval_every below 1 (e.g. 0.5): also inside the epoch, at a fractional epoch
                        record = {"step": p.step, "epoch": round(p.epoch + p.step_in_epoch / self.steps_per_epoch, 3),
                                  **evaluate(self.model)}
                        if on_epoch_end is not None:
                            on_epoch_end(record)
                        self.log(record)
                        self.train_mode(self.model)
                    ready = time.perf_counter()
                p.epoch += 1
                p.step_in_epoch = 0
                record = {"step": p.step, "epoch": p.epoch, "train_loss_avg": loss_avg}
                if self.train_metrics and seen_logits:
                    record.update(self._train_metrics(seen_logits, seen_targets))
                if evaluate is not None and (p.epoch % eval_every_epochs == 0 or p.epoch == self.epochs):
                    record.update(evaluate(self.model))
                if on_epoch_end is not None:
                    on_epoch_end(record)
                self.log(record)
                self.acc.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                                        if not isinstance(v, (list, dict))))
                if checkpoint_every:
                    self.save_checkpoint()
        finally:
            bar.close()


def seed_everything(seed: int, accelerator: Accelerator) -> None:
    set_seed(seed + accelerator.process_index)


def step_seed(*keys: int) -> None:
    """Seed Python, NumPy and torch from a position (seed, update, rank, ...): randomness that is a
    function of where the run is, so a resumed run draws exactly what the uninterrupted one drew."""
    import random

    import numpy as np

    seed = int(np.random.SeedSequence(list(keys)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def predict(model, dataset, accelerator: Accelerator, batch: int, workers: int = 0):
    """Logits and targets of every sample of a map-style dataset, each counted exactly once across
    ranks (Accelerate shards the loader; gather_for_metrics drops the padding of the last batch)."""
    from torch.utils.data import DataLoader

    loader = accelerator.prepare_data_loader(DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers))
    was_training = model.training
    model.eval()
    logits, targets = [], []
    with torch.no_grad():
        for images, target in loader:
            with accelerator.autocast():
                out = model(images)
            out, target = accelerator.gather_for_metrics((out.float().contiguous(), target.contiguous()))
            logits.append(out.cpu())
            targets.append(target.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(targets)


def evaluate(model, dataset, accelerator: Accelerator, batch: int, num_classes: int, multilabel: bool,
             workers: int = 0, prefix: str = "val_") -> dict:
    """Loss and metrics (common.metrics) over a dataset; the confusion matrix is returned unprefixed."""
    from . import metrics

    logits, targets = predict(model, dataset, accelerator, batch, workers)
    if multilabel:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float())
    else:
        loss = torch.nn.functional.cross_entropy(logits, targets)
    result = metrics.compute(logits.numpy(), targets.numpy(), num_classes, multilabel)
    out = {f"{prefix}loss": float(loss), f"{prefix}samples": int(len(targets))}
    for key, value in result.items():
        if key == "confusion":
            out["confusion"] = value
        else:
            out[prefix + key] = value
    return out
