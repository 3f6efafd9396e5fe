"""Training-step speed of a small model in fp32 and in bf16 autocast on this CPU, one thread.

    python benchmarks/bench_precision.py [--model resnet10t] [--batch 64] [--size 32] [--steps 5]

On CPUs with AVX512-BF16 (or AMX) bf16 autocast is faster; without, PyTorch emulates it and a step
is many times slower (docs/benchmarks.md, "A second host type"; the trainers warn at start). Not a test.
"""

import argparse
import time

import timm
import torch

from common.engine import cpu_has_native_bf16


def rate(model, x, bf16: bool, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters())

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(x) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=20)
    x = torch.randn(args.batch, 3, args.size, args.size)
    fp32, bf16 = rate(model, x, False, args.steps), rate(model, x, True, args.steps)
    print(f"{args.model}, batch {args.batch}, {args.size} px, one thread; native bf16: {cpu_has_native_bf16()}")
    print(f"fp32 {fp32:.1f} img/s, bf16 autocast {bf16:.1f} img/s ({fp32 / bf16:.1f}x slower in bf16)")


if __name__ == "__main__":
    main()
