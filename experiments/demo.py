"""The main job: the whole pipeline at a tiny scale, offline, on a CPU, in a few minutes.

    python -m experiments.demo --out runs/demo [--cifar PATH]

1. render a small colour FractalDB-style dataset to shards, with a preview contact sheet
2. pretrain a tiny ResNet on it (configs/pretrain/tiny_cpu.yaml)
3. on real images (scikit-learn's bundled handwritten digits, no download; or CIFAR-10 when --cifar
   points at its folder), with few labels: a linear classifier on the frozen features of the
   pretrained model and of the same network at random initialisation (1/5/10/25 labelled images
   per class), then full fine-tuning of the pretrained model and of a from-scratch twin with the
   same recipe (10 labelled images per class, three seeds each)
4. write the comparison report and the first-layer filters of the pretrained model, and print both
   comparisons: what the pretraining is worth, measured, whichever way it comes out

Each step is an ordinary project command, printed before it runs; a finished step is skipped.
"""

import json
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
    ap.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs")
    ap.add_argument("--per-class", type=int, default=10,
                    help="labelled training images per class (0: every training image)")
    ap.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per arm (seeds 0..N-1)")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.seeds < 1 or args.per_class < 0:
        raise UserError("--epochs and --seeds must be 1 or more, --per-class 0 or more")
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
        config, target = "configs/finetune/cifar10.yaml", args.cifar
    else:
        target = os.path.join(out, "digits")
        step([py, "-m", "experiments.prepare_digits", "--out", target, "--size", "32"], target)
        config = "configs/finetune/imagefolder.yaml"
    shots = {}
    for name, init in (("pretrained", os.path.join(pre, "model.safetensors")), ("random", "scratch")):
        run = os.path.join(out, "few_shot", name)
        model = [] if init != "scratch" else ["model=resnet10t", "seed=0"]
        step([py, "-m", "finetune.main", "--config", config, "--data", target, "--init", init, "--out", run,
              "mode=few_shot", *model], os.path.join(run, "final.json"))
        with open(os.path.join(run, "final.json")) as f:
            shots[name] = json.load(f)["few_shot"]
    few = [f"data.train_per_class={args.per_class}"] if args.per_class else []
    runs = {"pretrained": [], "scratch": []}
    for seed in range(args.seeds):
        for name, init in (("pretrained", os.path.join(pre, "model.safetensors")), ("scratch", "scratch")):
            run = os.path.join(out, "finetune", f"{name}-s{seed}")
            model = [] if init != "scratch" else ["model=resnet10t"]
            step([py, "-m", "finetune.main", "--config", config, "--data", target, "--init", init, "--out", run,
                  f"epochs={args.epochs}", "batch_size=32", "optim.lr=2e-3", "eval_every=5", f"seed={seed}",
                  f"data.subset_seed={seed}",
                  *model, *few], os.path.join(run, "final.json"))
            runs[name].append(run)
    report = os.path.join(out, "report")
    step([py, "-m", "finetune.report", *runs["pretrained"], *runs["scratch"], "--out", report],
         os.path.join(report, "report.md"))
    analysis = os.path.join(out, "analysis")
    step([py, "-m", "finetune.analyze", "--weights", os.path.join(pre, "model.safetensors"), "--out", analysis],
         os.path.join(analysis, "first_layer_filters.png"))
    print("\n[demo] linear classifier on frozen features (mean of 3 draws of the labelled images):")
    for key in (k for k in shots["pretrained"] if k.endswith("shot_acc")):
        n = key.removesuffix("shot_acc")
        print(f"  {n:>2} per class: pretrained on fractals {100 * shots['pretrained'][key]:.1f} %, random "
              f"initialisation {100 * shots['random'][key]:.1f} %: "
              f"{100 * (shots['pretrained'][key] - shots['random'][key]):+.1f} points from pretraining")
    acc = {name: [_last_accuracy(run) for run in folders] for name, folders in runs.items()}
    mean = {name: 100 * sum(values) / len(values) for name, values in acc.items()}
    labels = f"{args.per_class} labelled images per class" if args.per_class else "every training image"
    print(f"[demo] full fine-tuning, {labels}, {args.seeds} seed(s), last-epoch validation accuracy: pretrained "
          f"{mean['pretrained']:.1f} % ({', '.join(f'{100 * a:.1f}' for a in acc['pretrained'])}), from scratch "
          f"{mean['scratch']:.1f} % ({', '.join(f'{100 * a:.1f}' for a in acc['scratch'])}): "
          f"{mean['pretrained'] - mean['scratch']:+.1f} points from pretraining")
    print(f"[demo] finished in {(time.time() - start) / 60:.1f} min")
    print(f"  dataset + card : {data}/dataset.json   preview: {out}/preview.png")
    print(f"  pretraining    : {pre}/ (metrics.jsonl, model.safetensors)")
    print(f"  few-shot       : {out}/few_shot/*/final.json")
    print(f"  fine-tuning    : {out}/finetune/*/ (curves.png, confusion.png, final.json)")
    print(f"  report         : {report}/report.md (bars.png, curves.png)")
    print(f"  filters        : {analysis}/first_layer_filters.png")


def _last_accuracy(run: str) -> float:
    with open(os.path.join(run, "final.json")) as f:
        return json.load(f)["last_epoch"]["val_acc"]


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
