"""The training engine both stages use: Accelerate for devices and processes, timm for optimiser,
schedule, mixup, losses and weight EMA; checkpoints that survive interruption; progress, TensorBoard,
metrics.jsonl.

A run is a sequence of optimiser updates. The caller gives a batch iterator per epoch and an
evaluation function; the engine does the rest, and `resume` continues a run exactly: same update
count, schedule, data position (the caller's iterators are keyed by epoch and step), RNG states,
training-metric accumulators and log lines.

A checkpoint is a folder `checkpoints/step_XXXXXXXX/` written under `.partial` and renamed when
complete. Nothing in it is unpickled on resume: model (and EMA) weights are safetensors, the
optimiser state is read with torch.load(weights_only=True) (tensors, numbers, lists, dicts only),
progress and RNG states are JSON and safetensors. state.json lists every file with its size.
"""

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from tqdm import tqdm

from .errors import UserError
from .io import atomic_write, write_json
from .metrics import StreamingMetrics
from .models import classifier_parameters
from .schema import warmup_problem

CHECKPOINT_FORMAT = "fractal-pretraining-checkpoint/1"


class Interrupted(UserError):
    """Ctrl-C during training: one line, exit status 130 (the shell's code for SIGINT)."""

    exit_code = 130


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this x86 CPU computes bf16 natively (AVX512-BF16 or AMX); None where it cannot be told."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))


def make_accelerator(cfg: dict) -> Accelerator:
    precision = cfg["precision"]
    cpu = cfg["device"] == "cpu" or not torch.cuda.is_available()
    if cpu and precision == "fp16":
        precision = "no"  # fp16 autocast is a GPU feature
    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=cfg["grad_accum"])
    if cpu and precision == "bf16" and cpu_has_native_bf16() is False:
        # emulated bf16: a ResNet-10-T step measured 25x slower than fp32 on an AVX2-only EPYC
        accelerator.print("warning: precision=bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX) runs "
                          "many times slower than fp32; set precision=no on this machine")
    return accelerator


def per_rank_batch(global_batch: int, accelerator: Accelerator) -> int:
    world = accelerator.num_processes * accelerator.gradient_accumulation_steps
    if global_batch % world:
        raise UserError(f"batch_size {global_batch} does not divide into {accelerator.num_processes} processes x "
                        f"{accelerator.gradient_accumulation_steps} accumulation steps; use a multiple of {world}")
    return global_batch // world


def scaled_lr(opt_cfg: dict, global_batch: int) -> float:
    """lr = base_lr x global batch / lr_base_batch (linear scaling, as DeiT), unless lr is given."""
    if opt_cfg["lr"] is not None:
        return opt_cfg["lr"]
    return opt_cfg["base_lr"] * global_batch / opt_cfg["lr_base_batch"]


def param_groups(model: torch.nn.Module, opt_cfg: dict) -> list[dict]:
    """timm's parameter groups of the trainable parameters (no weight decay on biases and norms;
    layer-wise lr decay when optim.layer_decay is set), with the classifier head's lr multiplied by
    optim.head_lr_scale. timm's schedulers multiply each group's lr by its `lr_scale`."""
    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    if opt_cfg["layer_decay"] is not None:
        groups = param_groups_layer_decay(model, weight_decay=opt_cfg["weight_decay"],
                                          layer_decay=opt_cfg["layer_decay"], no_weight_decay_list=no_decay)
    else:
        groups = param_groups_weight_decay(model, weight_decay=opt_cfg["weight_decay"], no_weight_decay_list=no_decay)
    scale = opt_cfg["head_lr_scale"]
    if scale == 1.0:
        return groups
    head = {id(p) for p in classifier_parameters(model)}  # every head (distilled DeiTs have two)
    out = []
    for group in groups:
        body = [p for p in group["params"] if id(p) not in head]
        top = [p for p in group["params"] if id(p) in head]
        if body:
            out.append({**group, "params": body})
        if top:
            out.append({**group, "params": top, "lr_scale": group.get("lr_scale", 1.0) * scale})
    return out


def make_mixup(aug: dict, num_classes: int, multilabel: bool) -> Mixup | None:
    if aug["mixup"] <= 0 and aug["cutmix"] <= 0:
        return None
    if multilabel:  # timm's Mixup one-hot encodes integer labels; multi-hot targets are not supported
        raise UserError("mixup/cutmix apply to single-label data; set aug.mixup=0 aug.cutmix=0 for multi-label")
    return Mixup(mixup_alpha=aug["mixup"], cutmix_alpha=aug["cutmix"], prob=aug["mixup_prob"],
                 switch_prob=aug["mixup_switch_prob"], label_smoothing=aug["label_smoothing"], num_classes=num_classes)


def make_loss(multilabel: bool, mixup: Mixup | None, smoothing: float):
    if multilabel:
        return torch.nn.BCEWithLogitsLoss()
    if mixup is not None:
        return SoftTargetCrossEntropy()  # mixup already produced smoothed soft targets
    return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else torch.nn.CrossEntropyLoss()


# --- seeding: seed_all at start, step_seed per update, seed_sample per sample -----------------


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) with one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_sample(*keys: int) -> None:
    """Seed Python, NumPy and torch's CPU generator from a sample's position, for its augmentation
    (in a DataLoader worker or per sample). Cheaper than step_seed: a blake2b hash instead of
    SeedSequence, and no device generators (torch.manual_seed costs ~1 ms, more than decoding a
    small image)."""
    seed = int.from_bytes(hashlib.blake2b(repr(keys).encode(), digest_size=8).digest(), "little")
    random.seed(seed)
    np.random.seed(seed >> 32)
    torch.default_generator.manual_seed(seed)


def seed_everything(seed: int, accelerator: Accelerator) -> None:
    """At start-up: each rank its own stream (model initialisation is then overwritten by rank 0's
    weights when Accelerate wraps the model)."""
    seed_all(seed + accelerator.process_index)


def position_seed(*keys: int) -> int:
    """One seed from a position (seed, epoch, update, rank, ...), well mixed by NumPy's SeedSequence."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def step_seed(*keys: int) -> None:
    """Seed from a position (seed, update, rank, ...): randomness that is a function of where the run
    is, so a resumed run draws exactly what the uninterrupted one drew."""
    seed_all(position_seed(*keys))


def rng_states() -> tuple[dict, dict]:
    """This process's RNG states as (tensors, JSON-able values), for a checkpoint."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    values = {"numpy": [kind, pos, has_gauss, gauss], "python": [version, list(internal), gauss_next]}
    return tensors, values


def set_rng_states(tensors: dict, values: dict) -> None:
    kind, pos, has_gauss, gauss = values["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = values["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in tensors]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


# --- the trainer ------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint's state.json."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    loss_avg: float | None = None  # running training loss (progress bar, epoch records)


def _tensors(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


class Trainer:
    def __init__(self, cfg: dict, model, accelerator: Accelerator, run_dir: str, *, num_classes: int,
                 multilabel: bool, steps_per_epoch: int, epochs: int, global_batch: int, train_mode=None,
                 train_metrics: bool = False):
        """The optimiser updates the parameters that require gradients (a linear probe freezes the
        rest first). train_mode(model): how to put the model in training mode (a linear probe keeps
        its backbone in eval mode). train_metrics: also report loss/accuracy/F1 of the training
        predictions each epoch."""
        self.cfg, self.acc, self.run_dir = cfg, accelerator, run_dir
        self.multilabel, self.num_classes = multilabel, num_classes
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.train_mode = train_mode or (lambda m: m.train())
        opt_cfg, aug = cfg["optim"], cfg["aug"]
        if cfg["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        self.optimizer = create_optimizer_v2(param_groups(model, opt_cfg), opt=opt_cfg["opt"],
                                             lr=scaled_lr(opt_cfg, global_batch),
                                             weight_decay=opt_cfg["weight_decay"], momentum=opt_cfg["momentum"])
        self.model, self.optimizer = accelerator.prepare(model, self.optimizer)
        # timm schedulers are not torch LRSchedulers: stepped by hand per update (a pure function of it)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=opt_cfg["sched"], num_epochs=epochs, warmup_epochs=opt_cfg["warmup_epochs"],
            warmup_lr=opt_cfg["warmup_lr"], min_lr=opt_cfg["min_lr"], decay_epochs=opt_cfg["decay_epochs"],
            decay_rate=opt_cfg["decay_rate"], step_on_epochs=False, updates_per_epoch=steps_per_epoch)
        if problem := warmup_problem(cfg):
            accelerator.print(f"warning: {problem}", file=sys.stderr)
        self.ema = None
        if cfg["ema"]["enabled"]:
            self.ema = ModelEmaV3(accelerator.unwrap_model(self.model), decay=cfg["ema"]["decay"])
        self.mixup = make_mixup(aug, num_classes, multilabel)
        self.loss_fn = make_loss(multilabel, self.mixup, aug["label_smoothing"])
        self.clip = opt_cfg["clip_grad"]
        self.metrics = StreamingMetrics(num_classes, multilabel, accelerator.device) if train_metrics else None
        self.progress = Progress()
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        self.tb, self._purge_step = None, None  # the run folder's files appear with the first record

    @property
    def eval_model(self):
        """The weights that are evaluated and exported: the EMA weights when enabled."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def weights_kind(self) -> str:
        return f"ema (decay {self.cfg['ema']['decay']})" if self.ema is not None else "final"

    def export_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.acc.unwrap_model(self.model)

    @contextlib.contextmanager
    def exporting(self):
        """Around writing the results: a failure (e.g. a full disk) is one line saying where the
        trained weights are (the last checkpoint stays: it is never removed by the export)."""
        try:
            yield
        except OSError as e:
            done = self.checkpoints()
            where = f"the trained weights are kept in {done[-1]}" if done else "no checkpoint holds the weights"
            raise UserError(f"could not write the results into {self.run_dir} ({e.strerror or e}); {where}; "
                            f"free space and run again with --resume to write them") from None

    # --- checkpoints

    def checkpoints(self) -> list[str]:
        """Complete checkpoint folders, oldest first."""
        if not os.path.isdir(self.ckpt_dir):
            return []
        names = sorted(d for d in os.listdir(self.ckpt_dir) if d.startswith("step_") and "." not in d)
        return [os.path.join(self.ckpt_dir, n) for n in names]

    def save_checkpoint(self) -> None:
        """Write checkpoints/step_N under a temporary name on every rank, then rename it (rank 0)."""
        p, acc = self.progress, self.acc
        if not all(torch.isfinite(t).all() for t in self.model.parameters()):  # never replace a good one with garbage
            raise UserError(f"weights became non-finite by update {p.step}; lower optim.lr or enable "
                            f"optim.clip_grad; the last good checkpoint is kept in {self.ckpt_dir}")
        final = os.path.join(self.ckpt_dir, f"step_{p.step:08d}")
        tmp = final + ".partial"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        acc.wait_for_everyone()
        rank = acc.process_index
        tensors, values = rng_states()
        if self.metrics is not None:
            tensors.update({f"metrics.{k}": v for k, v in self.metrics.state_dict().items()})
        with self._writing_checkpoint(tmp):
            save_file(tensors, os.path.join(tmp, f"rank{rank}.safetensors"))
            with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
                json.dump(values, f)
            if acc.is_main_process:
                save_file(_tensors(acc.unwrap_model(self.model)), os.path.join(tmp, "model.safetensors"))
                if self.ema is not None:
                    save_file(_tensors(self.ema.module), os.path.join(tmp, "ema.safetensors"))
                torch.save(self.optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"format": CHECKPOINT_FORMAT, "progress": asdict(p), "world_size": acc.num_processes,
                     "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                     "files": {name: os.path.getsize(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}}
            with self._writing_checkpoint(tmp):
                write_json(os.path.join(tmp, "state.json"), state)  # last: its presence marks a complete folder
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            with atomic_write(os.path.join(self.ckpt_dir, "latest")) as f:
                f.write(os.path.basename(final))
            for old in self.checkpoints()[:-self.cfg["keep_checkpoints"]]:
                os.replace(old, old + ".deleting")  # out of the list first, so a half-deleted one is never read
                shutil.rmtree(old + ".deleting", ignore_errors=True)
        acc.wait_for_everyone()

    @contextlib.contextmanager
    def _writing_checkpoint(self, tmp: str):
        """Around one rank's checkpoint writes: a failure (a full disk: torch.save reports it as a bare
        RuntimeError about zip positions) is one line with the free space and the way on; the partial
        folder is removed, the previous checkpoints stay."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
            try:
                free = f"{shutil.disk_usage(self.ckpt_dir).free / 2**20:,.0f} MiB free there"
            except OSError:
                free = "free space unknown"
            done = self.checkpoints()
            where = f"the last complete checkpoint is {done[-1]}" if done else "no complete checkpoint yet"
            raise UserError(f"could not write a checkpoint into {self.ckpt_dir} ({reason}; {free}); {where}; "
                            f"free space and run the same command again with --resume") from None

    def _read_checkpoint(self, path: str) -> dict:
        """Everything a checkpoint holds, read and checked before anything is applied."""
        with open(os.path.join(path, "state.json")) as f:
            state = json.load(f)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {state.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        for name, size in state["files"].items():
            actual = os.path.getsize(os.path.join(path, name))
            if actual != size:
                raise ValueError(f"{name} has {actual} bytes, {size} were written")
        out = {"state": state, "model": load_file(os.path.join(path, "model.safetensors")),
               "optimizer": torch.load(os.path.join(path, "optimizer.pt"), map_location="cpu", weights_only=True)}
        if self.ema is not None:
            out["ema"] = load_file(os.path.join(path, "ema.safetensors"))
        rank = self.acc.process_index
        if f"rank{rank}.json" in state["files"]:  # absent when resumed with more processes than saved
            out["rank_tensors"] = load_file(os.path.join(path, f"rank{rank}.safetensors"))
            with open(os.path.join(path, f"rank{rank}.json")) as f:
                out["rank_values"] = json.load(f)
        return out

    def resume(self, which: str | None = None) -> bool:
        """Load a checkpoint: `which`, or the newest readable one (an unreadable newest one, e.g.
        truncated by a full disk, is skipped with a warning). False when there is none."""
        candidates = [which] if which else self.checkpoints()[::-1]
        for path in candidates:
            try:
                loaded = self._read_checkpoint(path)
            except Exception as e:  # noqa: BLE001 - any failure to read means this checkpoint is unusable
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                if which:
                    raise UserError(f"checkpoint {path} cannot be read: {reason}") from None
                self.acc.print(f"warning: checkpoint {path} cannot be read ({reason}); trying the previous one",
                               file=sys.stderr)
                continue
            self._apply(loaded)
            self.acc.print(f"resumed from {path} at update {self.progress.step}")
            return True
        if candidates:
            raise UserError(f"no checkpoint in {self.ckpt_dir} can be read; remove the folder to start again")
        self._truncate_log(0)  # killed before its first checkpoint: the run starts again from update 0
        self._purge_step = 1
        return False

    def _apply(self, loaded: dict) -> None:
        try:
            self.acc.unwrap_model(self.model).load_state_dict(loaded["model"])
            if self.ema is not None:
                self.ema.module.load_state_dict(loaded["ema"])
            self.optimizer.load_state_dict(loaded["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"the checkpoint does not fit this model/optimiser: {str(e).splitlines()[0]}") from None
        state = loaded["state"]
        self.progress = Progress(**state["progress"])
        if state["scaler"] is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(state["scaler"])
        if "rank_tensors" in loaded:
            tensors = loaded["rank_tensors"]
            set_rng_states(tensors, loaded["rank_values"])
            if self.metrics is not None:
                self.metrics.load_state_dict({k[len("metrics."):]: v for k, v in tensors.items()
                                              if k.startswith("metrics.")})
        self._truncate_log(self.progress.step)
        self._purge_step = self.progress.step + 1

    def _truncate_log(self, step: int) -> None:
        """metrics.jsonl keeps the lines written up to the checkpoint (later ones are written again)."""
        if not self.acc.is_main_process or not os.path.exists(self.metrics_path):
            return
        keep = []
        with open(self.metrics_path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the interruption
                    continue
                if record.get("step", 0) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
        with atomic_write(self.metrics_path) as f:
            f.writelines(keep)

    # --- logging

    def log(self, record: dict) -> None:
        if not self.acc.is_main_process:
            return
        if self.tb is None:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

            os.makedirs(self.run_dir, exist_ok=True)
            # on resume, TensorBoard drops its events after the checkpoint (they are written again)
            self.tb = SummaryWriter(os.path.join(self.run_dir, "tensorboard"), purge_step=self._purge_step)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch", "time"):
                self.tb.add_scalar(key, value, record.get("step", self.progress.step))
        self.tb.flush()

    # --- the loop

    def train_step(self, images, targets) -> tuple[float, torch.Tensor]:
        """One forward/backward/update; returns (loss, logits)."""
        if self.mixup is not None and images.shape[0] % 2 == 0:
            images, targets = self.mixup(images, targets)
        elif self.multilabel or self.mixup is not None:
            targets = targets.float() if self.multilabel else torch.nn.functional.one_hot(
                targets, self.num_classes).float()
        if self.cfg["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.acc.accumulate(self.model):
            with self.acc.autocast():
                logits = self.model(images)
                loss = self.loss_fn(logits, targets)
            if not torch.isfinite(loss.detach()):
                raise UserError(f"loss became {float(loss.detach())} at update {self.progress.step} (epoch "
                                f"{self.progress.epoch}); lower optim.lr or enable optim.clip_grad; the last good "
                                f"checkpoint is kept in {self.ckpt_dir}")
            self.acc.backward(loss)
            if self.clip and self.acc.sync_gradients:
                self.acc.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and self.acc.sync_gradients:
            self.ema.update(self.acc.unwrap_model(self.model), step=self.progress.step)
        return float(loss.detach()), logits.detach()

    def fit(self, batches_for_epoch, evaluate=None, eval_every: float = 1, checkpoint_every: int = 0,
            key_log: str | None = None, finish_batch=None) -> None:
        """Train to the end. batches_for_epoch(epoch, skip) yields (images, targets, keys), skipping
        the first `skip` batches of that epoch (for resume). evaluate(model) returns validation
        metrics, every `eval_every` epochs (below 1: also inside epochs) and after the last.
        A checkpoint is written every `checkpoint_every` updates (0: never inside an epoch) and at
        every epoch end. finish_batch(images), if given, turns them into the model's input on the
        device (after the step's seed is set, so its random draws are keyed by position too).
        key_log, if given, is a per-rank file that records the keys of every sample trained on."""
        self._evaluate, self._eval_every, self._key_log, self._finish = evaluate, eval_every, key_log, finish_batch
        p = self.progress
        if key_log and os.path.exists(key_log):  # resumed: the updates after the checkpoint are done again
            with open(key_log) as f:
                kept = [line for line in f if line.endswith("\n") and int(line.split()[0]) < p.step]
            with atomic_write(key_log) as f:
                f.writelines(kept)
        if any(g.get("lr_scale", 1.0) != 1.0 for g in self.optimizer.param_groups):
            self.scheduler.step_update(num_updates=p.step)  # timm applies lr_scale when it sets the lr
        self._bar = tqdm(total=self.steps_per_epoch * self.epochs, initial=p.step, unit="step", dynamic_ncols=True,
                         disable=not self.acc.is_main_process, mininterval=0.5 if sys.stderr.isatty() else 30)
        self._rate_since = (time.time(), 0)
        self._waited = (0.0, time.perf_counter())  # (s waiting for batches, start) of the current log window
        try:
            while p.epoch < self.epochs:
                self.train_epoch(batches_for_epoch, checkpoint_every)
                self.end_epoch()
                self.save_checkpoint()
        except KeyboardInterrupt:
            done = self.checkpoints()
            where = f"the last checkpoint is {done[-1]}" if done else "no checkpoint was written yet"
            raise Interrupted(f"interrupted at update {p.step}; {where} (continue with --resume)") from None
        finally:
            self._bar.close()

    def train_epoch(self, batches_for_epoch, checkpoint_every: int) -> None:
        p = self.progress
        self.train_mode(self.model)
        ready = time.perf_counter()
        for images, targets, keys in batches_for_epoch(p.epoch, p.step_in_epoch):
            self._waited = (self._waited[0] + time.perf_counter() - ready, self._waited[1])
            loss = self.update(images, targets, keys)
            if p.step % self.cfg["log_every"] == 0:
                self.log(self.step_record(loss))
            if p.step_in_epoch >= self.steps_per_epoch:
                break
            if self.evaluates_inside_epoch():
                record = {"step": p.step, "epoch": round(p.epoch + p.step_in_epoch / self.steps_per_epoch, 3)}
                self.log({**record, **self._evaluate(self.eval_model)})
                self.train_mode(self.model)
            if checkpoint_every and p.step % checkpoint_every == 0:
                self.save_checkpoint()
            ready = time.perf_counter()

    def update(self, images, targets, keys) -> float:
        """One optimiser update on one batch, its randomness keyed by the update's position."""
        p = self.progress
        if self._key_log:
            with open(self._key_log, "a") as f:
                f.write("".join(f"{p.step} {k}\n" for k in keys))
        step_seed(self.cfg["seed"], p.step, self.acc.process_index)
        if self._finish is not None:
            images = self._finish(images)
        loss, logits = self.train_step(images, targets)
        if self.metrics is not None:
            self.metrics.update(logits, targets)
        p.step += 1
        p.step_in_epoch += 1
        self.scheduler.step_update(num_updates=p.step)
        p.loss_avg = loss if p.loss_avg is None else 0.98 * p.loss_avg + 0.02 * loss
        since, seen = self._rate_since
        self._rate_since = (since, seen + images.shape[0] * self.acc.num_processes)
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{p.loss_avg:.3f}", lr=f"{self.lr:.2e}", img_s=f"{self.rate:.0f}", refresh=False)
        return loss

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def rate(self) -> float:
        since, seen = self._rate_since
        return seen / max(time.time() - since, 1e-9)

    def step_record(self, loss: float) -> dict:
        return {"step": self.progress.step, "epoch": self.progress.epoch, "train_loss": loss, "lr": self.lr,
                "img_per_s": self.rate, "time": round(time.time(), 3), **self.pipeline_figures()}

    def pipeline_figures(self) -> dict:
        """data_wait: share of the log window's wall time the loop waited for the next batch (the step
        syncs on the loss, so the device sat idle then); max_mem_gib: peak device memory (CUDA)."""
        waited, start = self._waited
        now = time.perf_counter()
        self._waited = (0.0, now)
        out = {"data_wait": round(waited / max(now - start, 1e-9), 4)}
        if self.acc.device.type == "cuda":
            out["max_mem_gib"] = round(torch.cuda.max_memory_allocated(self.acc.device) / 2**30, 3)
        return out

    def evaluates_inside_epoch(self) -> bool:
        """eval_every below 1 (e.g. 0.5): also evaluate at fractional epochs."""
        if self._evaluate is None or self._eval_every >= 1:
            return False
        within = max(1, round(self.steps_per_epoch * self._eval_every))
        return self.progress.step_in_epoch % within == 0

    def end_epoch(self) -> None:
        p = self.progress
        p.epoch += 1
        p.step_in_epoch = 0
        record = {"step": p.step, "epoch": p.epoch, "train_loss_avg": p.loss_avg}
        if self.metrics is not None:
            record.update({f"train_{k}": v for k, v in self.metrics.result(self.acc).items()})
            self.metrics.reset()
        if self._evaluate is not None and (math.isclose(p.epoch % self._eval_every, 0, abs_tol=1e-9)
                                           or p.epoch == self.epochs):
            record.update(self._evaluate(self.eval_model))
        self.log(record)
        self.acc.print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                                if not isinstance(v, (list, dict))))


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
