"""Pretraining data-pipeline efficiency and on-the-fly rendering rate.

    python benchmarks/bench_pretrain_pipeline.py [--width 128 --depth 4] [--repeats 5] [--pipeline-only]

1. images/s of the real pretraining loop (pretrain.main reading fractalgen shards: tar reading, PNG
   decoding, timm transforms, batching in a DataLoader worker) divided by images/s of the same
   trainer step (same config, model, loss, optimiser) on a batch already in memory. Small model:
   ViT patch 4, dim 128, depth 4 at 32 px, 2 threads; the worker shares the same 2 cores.
2. images/s one process renders on the fly at 224 px (render_sample + transform), and how many
   DataLoader workers would keep one H100 busy training DeiT-S/16 (the GPU rate is an assumption).
"""

import json
import os
import shutil
import statistics
import tempfile
import time

import torch

from common.transforms import make_transforms
from fractalgen import DatasetSpec, render_dataset, render_sample
from pretrain.main import main as pretrain

H100_DEIT_S16_IMG_S = 3000  # assumed: bf16 DeiT-S/16 training throughput of one H100, public ballpark
BATCH = 128


def overrides(width: int, depth: int) -> list:
    """The DeiT recipe on a small ViT (patch 4, 32 px) minus the per-image augmentations a 32 px ViT
    does not use here; the same in both loops."""
    vit = {"patch_size": 4, "embed_dim": width, "depth": depth, "num_heads": width // 32}
    return ["model=vit_tiny_patch16_224", f"model_kwargs={json.dumps(vit)}", "img_size=32", "epochs=1",
            f"batch_size={BATCH}", "precision=no", "checkpoint_every=0", "log_every=10", "data.workers=1",
            "data.val_samples=128", "aug.auto_augment=null", "aug.re_prob=0", "aug.mixup=0", "aug.cutmix=0",
            "aug.scale=[0.5, 1.0]"]


CONFIG = "configs/pretrain/deit_s16_single.yaml"


def _rate(run_dir: str) -> float:
    steps = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    steps = [r for r in steps if "time" in r]
    first, last = steps[1], steps[-1]  # skip start-up
    return (last["step"] - first["step"]) * BATCH / (last["time"] - first["time"])


def in_memory_rate(workdir: str, over: list, steps: int = 100) -> float:
    """The trainer's own step (same config, model, loss, optimiser, schedule) fed one uint8 batch
    that is already in memory: the ceiling the data pipeline is measured against."""
    from common.config import load_config
    from common.engine import Trainer, make_accelerator
    from common.models import create_model
    from common.transforms import BatchFinish

    cfg = load_config(CONFIG, over)
    acc = make_accelerator(cfg)
    model = create_model(cfg["model"], 100, img_size=32, drop_path_rate=float(cfg["drop_path"]),
                         model_kwargs=cfg["model_kwargs"])
    run = tempfile.mkdtemp(dir=workdir)
    trainer = Trainer(cfg, model, acc, run, num_classes=100, multilabel=False, steps_per_epoch=steps, epochs=1,
                      global_batch=BATCH)
    x = torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 100, (BATCH,))
    trainer.fit(lambda epoch, skip: ((x, y, []) for _ in range(skip, steps)),
                finish_batch=BatchFinish(cfg["aug"], cfg["mean"], cfg["std"], acc.device))
    return _rate(run)


def pipeline_rate(workdir: str, data: str, over: list) -> float:
    """The real loop: pretrain.main reading the shards through one DataLoader worker."""
    run = tempfile.mkdtemp(dir=workdir)
    os.rmdir(run)
    pretrain(["--config", CONFIG, "--data", data, "--out", run, *over])
    return _rate(run)


def pipeline_alone_rate(data: str, batches: int = 60) -> float:
    """The data path with no training: shards -> samples -> uint8 batches, in this process, one
    thread. Its inverse is the CPU time per image the DataLoader worker takes from the step."""
    from pretrain.data import FractalSource

    transforms = make_transforms({"scale": [0.5, 1.0]}, 32, [0.5] * 3, [0.5] * 3, uint8_train=True)
    source = FractalSource.from_folder(data, {"seed": 0, "data": {"workers": 0, "val_samples": 1}}, transforms,
                                       BATCH, 0, 1, on_the_fly=False)
    it = source.train_batches(0, 0)
    next(it)  # start-up and the shuffle buffer
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * BATCH / (time.perf_counter() - start)


def on_the_fly_rate(count: int = 100) -> float:
    spec = DatasetSpec.create("multi", 100_000, 1000, size=224, points=100_000)
    train_tf, _ = make_transforms({"scale": [0.08, 1.0], "auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25},
                                  224, [0.5] * 3, [0.5] * 3)
    from PIL import Image

    render_sample(spec, 0)
    start = time.perf_counter()
    for i in range(count):
        train_tf(Image.fromarray(render_sample(spec, i).image))
    return count / (time.perf_counter() - start)


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=128, help="ViT embedding width (heads = width / 32)")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pipeline-only", action="store_true", help="skip the on-the-fly 224 px measurement")
    args = ap.parse_args()
    over = overrides(args.width, args.depth)
    torch.set_num_threads(2)
    workdir = tempfile.mkdtemp(prefix="bench-pipeline-")
    try:
        data = os.path.join(workdir, "data")
        spec = DatasetSpec.create("single", 12_800, 100, size=32, points=2000)
        render_dataset(spec, data, shard_size=1600, workers=2, progress=False)
        torch.set_num_threads(1)
        alone = pipeline_alone_rate(data)
        print(f"data path alone (1 process, 1 thread): {alone:.0f} img/s = {1e6 / alone:.0f} us of CPU per image")
        torch.set_num_threads(2)
        mem, real = [], []
        for _ in range(args.repeats):  # interleaved pairs: the machine's speed drifts between runs
            mem.append(in_memory_rate(workdir, over))
            real.append(pipeline_rate(workdir, data, over))
        print(f"ViT width {args.width} depth {args.depth}: in memory", [round(r) for r in mem],
              "from shards", [round(r) for r in real])
        pairs = sorted(r / m for r, m in zip(real, mem))
        mem_med, real_med = statistics.median(mem), statistics.median(real)
        print(f"trainer step on in-memory batches: {mem_med:.0f} img/s (median of {args.repeats})")
        print(f"real pretraining loop from shards: {real_med:.0f} img/s (median of {args.repeats})")
        print(f"data-pipeline efficiency: {real_med / mem_med:.3f} (ratio of medians); per pair",
              [round(r, 3) for r in pairs], f"median {statistics.median(pairs):.3f}")
        # Cross-check that does not depend on run-to-run drift: if every CPU-second the worker spends
        # were taken from the 2-thread step, the loop would run at 1 - t_data / (2 t_step).
        print(f"expected from CPU accounting: {1 - mem_med / (2 * alone):.3f} "
              f"({1e6 / alone:.0f} us of data path per image vs {1e6 / mem_med:.0f} us of step on 2 threads)")
    finally:
        shutil.rmtree(workdir)
    if args.pipeline_only:
        return
    torch.set_num_threads(1)
    rate = on_the_fly_rate()
    print(f"on-the-fly multi-instance at 224 px + RandAugment transform, 1 process: {rate:.0f} img/s")
    print(f"workers to feed one H100 training DeiT-S/16 at an assumed {H100_DEIT_S16_IMG_S} img/s: "
          f"{H100_DEIT_S16_IMG_S / rate:.0f}")


if __name__ == "__main__":
    main()
