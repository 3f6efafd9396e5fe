"""Pretraining data-pipeline efficiency and on-the-fly rendering rate.

    python benchmarks/bench_pretrain_pipeline.py

1. images/s of the real pretraining loop (pretrain.main reading fractalgen shards: tar reading, PNG
   decoding, timm transforms, batching in a DataLoader worker) divided by images/s of the same model
   step on a batch already in memory. Small model: ViT patch 4, dim 128, depth 4 at 32 px.
2. images/s one process renders on the fly at 224 px (render_sample + transform), and how many
   DataLoader workers would keep one H100 busy training DeiT-S/16 (the GPU rate is an assumption).
"""

import json
import os
import shutil
import tempfile
import time

import torch

from common.models import build
from common.transforms import make_transforms
from fractalgen import DatasetSpec, render_dataset, render_sample
from pretrain.main import main as pretrain

VIT = {"patch_size": 4, "embed_dim": 128, "depth": 4, "num_heads": 4}
H100_DEIT_S16_IMG_S = 3000  # assumed: bf16 DeiT-S/16 training throughput of one H100, public ballpark


def in_memory_rate(batch: int = 128, steps: int = 30) -> float:
    model = build("vit_tiny_patch16_224", 100, 32, model_kwargs=VIT)
    opt = torch.optim.AdamW(model.parameters())
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 100, (batch,))
    for i in range(steps + 5):
        if i == 5:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def pipeline_rate(workdir: str, batch: int = 128) -> float:
    data = os.path.join(workdir, "data")
    spec = DatasetSpec.create("single", 12_800, 100, size=32, points=2000)
    render_dataset(spec, data, shard_size=1600, workers=2, progress=False)
    run = os.path.join(workdir, "run")
    pretrain(["--config", "configs/pretrain/deit_s16_single.yaml", "--data", data, "--out", run,
              "model=vit_tiny_patch16_224", f"model_kwargs={json.dumps(VIT)}", "img_size=32", "epochs=1",
              f"batch_size={batch}", "precision=no", "checkpoint_every=0", "log_every=10", "data.workers=1",
              "data.val_samples=128", "aug.auto_augment=null", "aug.re_prob=0", "aug.mixup=0", "aug.cutmix=0",
              "aug.scale=[0.5, 1.0]"])
    steps = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    steps = [r for r in steps if "time" in r]
    first, last = steps[1], steps[-1]  # skip worker start-up
    return (last["step"] - first["step"]) * batch / (last["time"] - first["time"])


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
    torch.set_num_threads(2)
    workdir = tempfile.mkdtemp(prefix="bench-pipeline-")
    try:
        mem = in_memory_rate()
        real = pipeline_rate(workdir)
        print(f"model step on in-memory tensors: {mem:.0f} img/s")
        print(f"real pretraining loop from shards: {real:.0f} img/s")
        print(f"data-pipeline efficiency: {real / mem:.3f}")
    finally:
        shutil.rmtree(workdir)
    torch.set_num_threads(1)
    rate = on_the_fly_rate()
    print(f"on-the-fly multi-instance at 224 px + RandAugment transform, 1 process: {rate:.0f} img/s")
    print(f"workers to feed one H100 training DeiT-S/16 at an assumed {H100_DEIT_S16_IMG_S} img/s: "
          f"{H100_DEIT_S16_IMG_S / rate:.0f}")


if __name__ == "__main__":
    main()
