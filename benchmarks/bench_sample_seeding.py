"""What exact resume costs on shards: one epoch of the shard pipeline (tar read, PNG decode, timm
transforms, batching; 2,048 single-instance images at 32 px, workers=0, where every sample is seeded;
in a DataLoader worker the stream is seeded once per epoch) with the seeding
(common.engine.seed_sample, as pretrain.shards uses it) and with it switched off.

    python benchmarks/bench_sample_seeding.py [--repeats 3]
"""

import argparse
import statistics
import tempfile
import time

import pretrain.shards as shards
from common.config import load_config
from common.transforms import make_transforms
from fractalgen import DatasetSpec, render_dataset
from pretrain.config import PretrainConfig
from pretrain.data import make_source


def us_per_image(folder: str, seeded: bool, real_seed) -> float:
    shards.seed_sample = real_seed if seeded else (lambda *keys: None)
    cfg = load_config("configs/pretrain/tiny_cpu.yaml", ["data.source=shards", "data.workers=0", "batch_size=64"],
                      PretrainConfig)
    cfg["data"]["path"] = folder
    transforms = make_transforms(cfg["aug"], cfg["img_size"], cfg["mean"], cfg["std"], uint8_train=True)
    source = make_source(cfg, transforms, 64, 0, 1)
    start = time.perf_counter()
    n = sum(len(keys) for _, _, keys in source.train_batches(0, 0))
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    folder = tempfile.mkdtemp()
    render_dataset(DatasetSpec.create("single", 2048, 8, size=32, points=1000), folder, shard_size=256, workers=1,
                   progress=False)
    real = shards.seed_sample
    runs = {True: [], False: []}
    for _ in range(args.repeats):
        for seeded in (True, False):
            runs[seeded].append(us_per_image(folder, seeded, real))
    on, off = statistics.median(runs[True]), statistics.median(runs[False])
    print(f"seeded {on:.0f} us/img {[round(x) for x in runs[True]]}, unseeded {off:.0f} us/img "
          f"{[round(x) for x in runs[False]]}: +{100 * (on / off - 1):.1f} %")


if __name__ == "__main__":
    main()
