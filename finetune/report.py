"""Compare runs: a markdown table (rows: model x pretraining source; columns: dataset x metric, mean ±
std over seeds), a grouped bar chart and accuracy-vs-epoch curves.

    python -m finetune.report RUN_DIR... --out report/

Last-epoch figures are the result; best-epoch accuracy (chosen on the validation split) is an extra.
"""

import glob
import json
import os
import sys
from collections import defaultdict

import numpy as np

from common.errors import ArgumentParser, UserError, run_main


def source_name(final: dict) -> str:
    src = final.get("pretrain_source")
    if not src or final.get("init") in (None, "scratch"):
        return "scratch"
    name = src.get("kind") or os.path.basename(str(final.get("init")))
    return f"{name} ({_count(src['images_seen'])} img)" if src.get("images_seen") else name


def _count(n: int) -> str:
    # 3 significant digits: 781 steps x 128 = 99,968 images reads as "100k"
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e3 else str(n)


def dataset_name(final: dict) -> str:
    """cifar10, "cifar10 (1000 img)"; runs evaluated on held-out training images never share a column
    with test-split runs: "cifar10 (holdout 0.1)"."""
    extras = [f"{final['train_images']} img"] if final.get("train_images") else []
    extras += [f"holdout {final['holdout']:g}"] if final.get("holdout") else []
    return f"{final['dataset']} ({', '.join(extras)})" if extras else final["dataset"]


def load_runs(paths: list) -> list:
    runs = []
    for path in paths:
        final_path = os.path.join(path, "final.json")
        if not os.path.exists(final_path):
            raise UserError(f"{path} has no final.json (not a finished finetune run)")
        with open(final_path) as f:
            final = json.load(f)
        history = []
        metrics = os.path.join(path, "metrics.jsonl")
        if os.path.exists(metrics):
            with open(metrics) as f:
                history = [r for r in map(json.loads, f) if "val_acc" in r or "val_map" in r]
        src = final.get("pretrain_source") or {}
        runs.append({"path": path, "final": final, "history": history,
                     "row": f"{final['model']} | {source_name(final)}", "col": dataset_name(final),
                     "kind": src.get("kind") if source_name(final) != "scratch" else "scratch",
                     "images": src.get("images_seen", 0) if source_name(final) != "scratch" else 0})
    if not runs:
        raise UserError("no runs given")
    return runs


def metric_values(run: dict) -> dict:
    final = run["final"]
    if final["mode"] == "few_shot":
        return {k: v for k, v in final["few_shot"].items() if not k.endswith("_std")}
    last, best = final["last_epoch"], final["best_epoch"]
    out = {"acc": last.get("val_acc"), "macro_f1": last.get("val_macro_f1")}
    if "val_map" in last:
        out["mAP"] = last["val_map"]
    out["best acc (extra)"] = best.get("val_acc")
    return {k: v for k, v in out.items() if v is not None}


def fmt(values: list) -> str:
    v = 100 * np.array(values)
    return f"{v.mean():.1f} ± {v.std():.1f} (n={len(v)})" if len(v) > 1 else f"{v[0]:.1f}"


def build(runs: list, out: str) -> str:
    os.makedirs(out, exist_ok=True)
    cells = defaultdict(list)  # (row, col, metric) -> values over seeds
    for run in runs:
        for metric, value in metric_values(run).items():
            cells[(run["row"], run["col"], metric)].append(value)
    rows = sorted({r for r, _, _ in cells}, key=lambda r: (r.split(" | ")[0], r.split(" | ")[1] != "scratch", r))
    cols = sorted({(c, m) for _, c, m in cells}, key=lambda cm: (cm[0], cm[1] == "best acc (extra)", cm[1]))
    lines = ["| model | pretraining | " + " | ".join(f"{c}: {m}" for c, m in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for row in rows:
        model, source = row.split(" | ")
        lines.append(f"| {model} | {source} | " + " | ".join(fmt(cells[(row, c, m)]) if cells.get((row, c, m)) else "–"
                                                           for c, m in cols) + " |")
    table = "\n".join(lines)
    versus = _versus_scratch(runs, cells)
    _bar_chart(cells, rows, sorted({c for c, _ in cols}), os.path.join(out, "bars.png"))
    _curves(runs, os.path.join(out, "curves.png"))
    budget = _budget_plot(runs, os.path.join(out, "budget.png"))
    text = ("# Fine-tuning report\n\nTop-1 accuracy / macro-F1 in %, last epoch, mean ± std over seeds "
            "(best epoch, chosen on the validation split, only as a labelled extra).\n\n" + table +
            (("\n\n## Against the from-scratch twin\n\n" + versus) if versus else "") +
            "\n\n![accuracy by pretraining source](bars.png)\n\n![validation accuracy per epoch](curves.png)\n\n" +
            ("![accuracy vs pretraining budget](budget.png)\n\n" if budget else "") + f"Runs: {len(runs)}\n")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "runs.json"), "w") as f:
        json.dump([{"path": r["path"], "row": r["row"], "col": r["col"], **metric_values(r)} for r in runs], f, indent=1)
    return table


def _versus_scratch(runs, cells) -> str:
    """Per pretrained row: last-epoch accuracy minus the same model's scratch accuracy (points, means
    over seeds), and the first epoch at which its mean accuracy curve reaches scratch's final mean."""
    curves = defaultdict(list)
    for r in runs:
        if r["history"]:
            curves[(r["row"], r["col"])].append({h["epoch"]: h.get("val_acc") for h in r["history"]})
    lines = ["| model | pretraining | dataset | Δ acc vs scratch (points) | epochs to reach scratch's final acc |",
             "|---|---|---|---|---|"]
    for (row, col, metric), values in sorted(cells.items()):
        model, source = row.split(" | ")
        scratch = cells.get((f"{model} | scratch", col, "acc"))
        if metric != "acc" or source == "scratch" or not scratch:
            continue
        target = np.mean(scratch)
        epochs = sorted(set.intersection(*(set(c) for c in curves[(row, col)]))) if curves[(row, col)] else []
        reached = next((e for e in epochs if np.mean([c[e] for c in curves[(row, col)]]) >= target), None)
        total = max(epochs) if epochs else "?"
        lines.append(f"| {model} | {source} | {col} | {100 * (np.mean(values) - target):+.1f} | "
                     f"{f'{reached} of {total}' if reached is not None else f'not within {total}'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _bar_chart(cells, rows, datasets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "acc" if any(m == "acc" for _, _, m in cells) else sorted({m for _, _, m in cells})[0]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(datasets) * max(1, len(rows)) / 3), 4))
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        means = [100 * np.mean(cells.get((row, d, metric)) or [np.nan]) for d in datasets]
        stds = [100 * np.std(cells.get((row, d, metric)) or [0]) for d in datasets]
        ax.bar(np.arange(len(datasets)) + i * width, means, width, yerr=stds, capsize=3, label=row.replace(" | ", ": "))
    ax.set_xticks(np.arange(len(datasets)) + width * (len(rows) - 1) / 2, datasets)
    ax.set_ylabel(f"{metric} (%), last epoch")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _curves(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = defaultdict(list)
    for r in runs:
        if r["history"]:
            groups[(r["col"], r["row"])].append([(h["epoch"], h.get("val_acc", h.get("val_map"))) for h in r["history"]])
    datasets = sorted({c for c, _ in groups})
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(5.5 * max(1, len(datasets)), 3.8), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for (col, row), curves in sorted(groups.items()):
            if col != d:
                continue
            n = min(len(c) for c in curves)
            epochs = [e for e, _ in curves[0][:n]]
            mean = 100 * np.mean([[v for _, v in c[:n]] for c in curves], 0)
            ax.plot(epochs, mean, "-o", ms=3, label=row.replace(" | ", ": "))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _label(ax, d, "epoch", "val accuracy (%)")
    _save(fig, path)


def _budget_plot(runs, path) -> bool:
    """Last-epoch accuracy against pretraining images seen, for every (model, kind) pretrained at two
    or more budgets, with the model's from-scratch accuracy as a dashed line. False when no kind has
    more than one budget."""
    acc = defaultdict(list)  # (dataset, model, kind, images) -> last-epoch accuracies
    for r in runs:
        value = metric_values(r).get("acc")
        if value is not None and r["final"]["mode"] != "few_shot":
            acc[(r["col"], r["final"]["model"], r["kind"], r["images"])].append(value)
    budgets = defaultdict(set)
    for d, m, k, n in acc:
        if k != "scratch":
            budgets[(d, m, k)].add(n)
    series = {key: sorted(ns) for key, ns in budgets.items() if len(ns) > 1}
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({d for d, _, _ in series})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.8), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for (dd, model, kind), ns in sorted(series.items()):
            if dd != d:
                continue
            means = [100 * np.mean(acc[(d, model, kind, n)]) for n in ns]
            stds = [100 * np.std(acc[(d, model, kind, n)]) for n in ns]
            line = ax.errorbar(ns, means, yerr=stds, fmt="-o", ms=4, capsize=3, label=f"{model}: {kind}")
            scratch = acc.get((d, model, "scratch", 0))
            if scratch:
                ax.axhline(100 * np.mean(scratch), ls="--", color=line[0].get_color(), label=f"{model}: scratch")
        ax.set_xscale("log")
        ticks = sorted({n for (dd, _, _), ns in series.items() if dd == d for n in ns})
        ax.set_xticks(ticks, [_count(n) for n in ticks])
        ax.minorticks_off()
        _label(ax, d, "pretraining images seen", "accuracy (%), last epoch")
    _save(fig, path)
    return True


def _label(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (or parent folders: every sub-folder with final.json)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    paths = []
    for p in args.runs:
        paths += [p] if os.path.exists(os.path.join(p, "final.json")) else sorted(
            os.path.dirname(f) for f in glob.glob(os.path.join(p, "**", "final.json"), recursive=True))
    table = build(load_runs(paths), args.out)
    print(table)
    print(f"\nreport: {os.path.join(args.out, 'report.md')} (with its pictures beside it)")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
