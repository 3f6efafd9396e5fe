"""The main job: the whole pipeline at a tiny scale, offline, on a CPU, in a few minutes.

    python -m experiments.demo --out runs/demo [--cifar PATH]

1. render a small colour FractalDB-style dataset to shards, with a preview contact sheet
2. pretrain a tiny ResNet on it (configs/pretrain/tiny_cpu.yaml)
3. fine-tune it, and a from-scratch twin with the same recipe, on real images: scikit-learn's bundled
   handwritten digits (no download), or CIFAR-10 when --cifar points at its folder
4. write the comparison report and the first-layer filters of the pretrained model

Each step is an ordinary project command, printed before it runs; a finished step is skipped.
"""

import os
import shlex
import subprocess
import sys
import time

from common.errors import ArgumentParser, UserError, run_main


def step(cmd: list, done: str) -> None:
    if os.path.exists(done):
        print(f"[demo] done already: {shlex.join(cmd)}", flush=True)
        return
    print(f"\n[demo] {shlex.join(cmd)}", flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise UserError(f"step failed: {shlex.join(cmd)}")


def main(argv=None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--cifar", help="CIFAR-10 folder (cifar-10-batches-py/) to fine-tune on instead of digits")
    ap.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs")
    args = ap.parse_args(argv)
    if args.cifar and not os.path.exists(args.cifar):
        raise UserError(f"--cifar {args.cifar} does not exist; pass the folder that holds cifar-10-batches-py/ "
                        f"or leave it out to use the bundled digits")
    out, py = args.out, sys.executable
    fractalgen = os.path.join(os.path.dirname(py), "fractalgen")
    start = time.time()
    data = os.path.join(out, "data")
    step([fractalgen, "render", "--kind", "fractaldb", "--color", "--n", "2048", "--classes", "8", "--size", "32",
          "--points", "1000", "--shard-size", "256", "--out", data], os.path.join(data, "dataset.json"))
    step([fractalgen, "preview", "--from", data, "--n", "32", "--out", os.path.join(out, "preview.png")],
         os.path.join(out, "preview.png"))
    pre = os.path.join(out, "pretrain")
    step([py, "-m", "pretrain.main", "--config", "configs/pretrain/tiny_cpu.yaml", "--data", data, "--out", pre,
          "epochs=3"], os.path.join(pre, "model.safetensors"))
    if args.cifar:
        config, target, extra = "configs/finetune/cifar10.yaml", args.cifar, ["data.train_per_class=100"]
    else:
        target = os.path.join(out, "digits")
        step([py, "-m", "experiments.prepare_digits", "--out", target, "--size", "32"], target)
        config, extra = "configs/finetune/imagefolder.yaml", []
    runs = []
    for name, init in (("pretrained", os.path.join(pre, "model.safetensors")), ("scratch", "scratch")):
        run = os.path.join(out, "finetune", name)
        model = [] if init != "scratch" else ["model=resnet10t"]
        step([py, "-m", "finetune.main", "--config", config, "--data", target, "--init", init, "--out", run,
              f"epochs={args.epochs}", "batch_size=64", "optim.lr=2e-3", *model, *extra], os.path.join(run, "final.json"))
        runs.append(run)
    report = os.path.join(out, "report")
    step([py, "-m", "finetune.report", *runs, "--out", report], os.path.join(report, "report.md"))
    analysis = os.path.join(out, "analysis")
    step([py, "-m", "finetune.analyze", "--weights", os.path.join(pre, "model.safetensors"), "--out", analysis],
         os.path.join(analysis, "first_layer_filters.png"))
    print(f"\n[demo] finished in {(time.time() - start) / 60:.1f} min")
    print(f"  dataset + card : {data}/dataset.json   preview: {out}/preview.png")
    print(f"  pretraining    : {pre}/ (metrics.jsonl, model.safetensors)")
    print(f"  fine-tuning    : {out}/finetune/*/ (curves.png, confusion.png, final.json)")
    print(f"  report         : {report}/report.md (bars.png, curves.png)")
    print(f"  filters        : {analysis}/first_layer_filters.png")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
