"""Compare runs: a markdown table (a row per distinct setting, columns dataset x metric, mean ± std over
seeds), the gain over the from-scratch twin, bars, accuracy and loss curves, accuracy vs pretraining budget.

    python -m finetune.report RUN_DIR... --out report/

A row is one combination of everything that differs between runs compared on the same dataset: the
model, the pretraining source, the mode, the augmentation, the resolution and any recipe override
(lr, epochs, head lr, EMA, ...), read from each run's config.yaml; runs that differ only in the seed (or
STL-10 fold) are averaged. Rows are labelled in words ("ViT p4 w128 d4", "ImageNet-21k (augreg_in21k)",
"linear probe"), naming only the settings needed to tell rows apart. Last-epoch figures are the result;
best-epoch accuracy, best macro-F1 and minimum loss are labelled extras. Rows pooled over several
pretrainings each (pretraining seeds) are also compared pairwise: the gap of their gains with its 95 %
interval over pretrainings, and with --margin an equivalence test ("the two transfer the same within
±margin points").
"""

import glob
import json
import os
import sys
from collections import defaultdict
from itertools import combinations

import numpy as np
import yaml

from common.errors import ArgumentParser, UserError, run_main
from common.io import read_json, write_json, write_text
from common.runs import check_out_folder
from common.plots import plt, save

MODES = {"finetune": "fine-tune", "linear_probe": "linear probe", "few_shot": "few-shot"}
# config keys that are not settings of the result: bookkeeping, seeds (averaged over), what the row's
# model and source already say, and data.* (the dataset column says those)
NOT_SETTINGS = {"seed", "init", "run_dir", "pretrain_source", "model", "model_kwargs", "device", "log_every",
                "eval_batch", "eval_every", "checkpoint_every", "keep_checkpoints"}
# settings in the order a row label names them (others follow alphabetically)
SETTING_ORDER = ["mode", "augment", "img_size", "epochs", "optim.lr", "optim.head_lr_scale", "ema.enabled",
                 "optim.opt", "batch_size"]
METRIC_ORDER = ["acc", "macro_f1", "mAP", "best acc (extra)", "best macro-F1 (extra)", "min loss (extra)"]
# timm model families by name prefix (longest first), for models built with model_kwargs
FAMILIES = {"vit": "ViT", "deit": "DeiT", "resnet": "ResNet", "vgg": "VGG", "densenet": "DenseNet",
            "convnext": "ConvNeXt", "swin": "Swin", "efficientnet": "EfficientNet", "test_vit": "ViT",
            "test_resnet": "ResNet"}
FINAL_KEYS = ("mode", "model", "init", "dataset")
ARCH_ABBREV = {"patch_size": "p", "embed_dim": "w", "depth": "d", "num_heads": "h", "mlp_ratio": "mlp"}


# --- words for a run's model, source, settings and dataset ----------------------------------------

def model_name(model: str, model_kwargs: dict | None = None) -> str:
    """The timm name, or for a model built with model_kwargs what it is: "ViT p4 w128 d4 h4"."""
    if not model_kwargs:
        return model
    family = next((FAMILIES[p] for p in sorted(FAMILIES, key=len, reverse=True) if model.startswith(p)), model)
    order = sorted(model_kwargs, key=lambda k: (list(ARCH_ABBREV).index(k) if k in ARCH_ABBREV else len(ARCH_ABBREV), k))
    parts = [f"{ARCH_ABBREV[k]}{model_kwargs[k]}" if k in ARCH_ABBREV else f"{k}={model_kwargs[k]}" for k in order]
    return " ".join([family, *parts])


def source_name(final: dict) -> str:
    """scratch; a fractal kind with its pretraining budget ("single (2.05k img)"); published weights in
    words ("ImageNet-21k (augreg_in21k)"); else the weights file's name."""
    init = final.get("init")
    if init in (None, "", "scratch"):
        return "scratch"
    src = final.get("pretrain_source") or {}
    if src.get("description"):
        return src["description"]
    name = src.get("kind") or (init[len("timm:"):] if init.startswith("timm:") else os.path.basename(init))
    return f"{name} ({_count(src['images_seen'])} img)" if src.get("images_seen") else name


def _count(n: int) -> str:
    # 3 significant digits: 781 steps x 128 = 99,968 images reads as "100k"
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e3 else str(n)


def dataset_name(final: dict, data: dict | None = None) -> str:
    """cifar10, "cifar10 (1000 img)"; runs evaluated on held-out training images never share a column
    with test-split runs: "cifar10 (holdout 0.1)"; STL-10 fold runs: "stl10 (1k-image folds)"."""
    extras = [f"{final['train_images']} img"] if final.get("train_images") else []
    extras += [f"holdout {final['holdout']:g}"] if final.get("holdout") else []
    extras += ["1k-image folds"] if (data or {}).get("fold") is not None else []
    extras += [f"{data['labels']} labels"] if final["dataset"] == "cifar100" and (data or {}).get("labels") == "coarse" else []
    return f"{final['dataset']} ({', '.join(extras)})" if extras else final["dataset"]


def setting_words(key: str, value) -> str:
    if key == "mode":
        return MODES.get(value, value)
    if key == "augment":
        return f"augmentation {value}"
    if key == "img_size":
        return f"{value} px"
    if key == "epochs":
        return f"{value} epochs"
    if key == "optim.lr":
        return "lr scaled by batch" if value is None else f"lr {value:g}"
    if key == "optim.head_lr_scale":
        return f"head lr x{value:g}"
    if key == "ema.enabled":
        return "EMA" if value else "no EMA"
    if key == "ema.decay":
        return f"EMA decay {value:g}"
    if key == "optim.opt":
        return f"optimiser {value}"
    if key == "batch_size":
        return f"batch {value}"
    return f"{key} {value}"


def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and key != "model_kwargs":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _settings(final: dict, cfg: dict | None) -> dict:
    """Everything that could make two runs' results differ, besides model, source and seed."""
    # NOT_SETTINGS leave before flattening: a mapping among them (pretrain_source: the weights' data and
    # its path) would otherwise pass as its dotted keys
    flat = (_flat({k: v for k, v in cfg.items() if k not in NOT_SETTINGS}) if cfg else
            {k: final[k] for k in ("augment", "epochs") if final.get(k) is not None})
    out = {k: v for k, v in flat.items() if not k.startswith("data.")}
    if final["mode"] == "few_shot":  # no training: the training recipe is not a setting of the result
        out = {k: v for k, v in out.items() if k.startswith("few_shot.") or k in ("img_size", "mean", "std")}
    else:
        out = {k: v for k, v in out.items() if not k.startswith("few_shot.")}
    out["mode"] = final["mode"]
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v for k, v in out.items()}


# --- loading and grouping ------------------------------------------------------------------------

def load_runs(paths: list) -> list:
    runs = []
    for path in paths:
        final_path = os.path.join(path, "final.json")
        if not os.path.exists(final_path):
            raise UserError(f"{path} has no final.json (not a finished finetune run)")
        final = read_json(final_path, "final.json of a finished run")
        missing = [k for k in FINAL_KEYS if not isinstance(final, dict) or k not in final]
        if missing or final["mode"] != "few_shot" and not {"last_epoch", "best_epoch"} <= set(final):
            raise UserError(f"{final_path} lacks {', '.join(missing or ['last_epoch', 'best_epoch'])}; it must be the "
                            f"final.json written by finetune.main")
        cfg = _read_config(os.path.join(path, "config.yaml"))
        history = [r for r in _read_metrics(os.path.join(path, "metrics.jsonl"))
                   if any(k in r for k in ("val_acc", "val_map", "val_loss"))]
        src = final.get("pretrain_source") or {}
        scratch = source_name(final) == "scratch"
        runs.append({"path": path, "final": final, "history": history,
                     "model": model_name(final["model"], (cfg or {}).get("model_kwargs")),
                     "source": source_name(final), "settings": _settings(final, cfg),
                     "col": dataset_name(final, (cfg or {}).get("data")),
                     "kind": "scratch" if scratch else src.get("kind"),
                     "images": 0 if scratch else src.get("images_seen", 0)})
    if not runs:
        raise UserError("no runs given")
    name_distinct_data(runs)
    label_rows(runs)
    return runs


def _data_folder(src: dict) -> str | None:
    return os.path.basename(os.path.normpath(src.get("path") or "")) or None


def data_identity(src: dict):
    """What tells two pretraining datasets apart: a render's card digest (the same for a folder linked
    in from another run), else the data folder's name."""
    return src.get("card_sha256") or _data_folder(src)


def name_distinct_data(runs: list) -> None:
    """Runs whose sources read alike ("single (100k img)") but were pretrained on different data (two
    renders of a kind with different options, two class folders) would pool into one row: name each
    one's data folder after the source ("single (100k img; single-refcolour)"), and its card digest too
    where folder names repeat. Pretrainings of the same data under different seeds keep pooling."""
    groups = defaultdict(dict)  # source -> data identity -> folder name
    for r in runs:
        src = r["final"].get("pretrain_source") or {}
        groups[r["source"]][data_identity(src)] = _data_folder(src)
    for r in runs:
        names = groups[r["source"]]
        if len(names) < 2:
            continue
        src = r["final"].get("pretrain_source") or {}
        folder = names[data_identity(src)]
        if folder is None or list(names.values()).count(folder) > 1:  # on the fly, or a folder name twice
            folder = f"{folder or 'card'} {str(src.get('card_sha256'))[:8]}"
        r["source"] = f"{r['source'][:-1]}; {folder})" if r["source"].endswith(")") else f"{r['source']} ({folder})"


def _read_config(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path} is not a run's config (a mapping of keys to values)")
    return cfg


def _read_metrics(path: str) -> list:
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}: line {number} is not valid JSON; re-run that run or remove the line") from None
    return records


def label_rows(runs: list) -> None:
    """Give each run its row (model, source, setting words). A setting is part of the row when runs on
    the same dataset differ in it; the label names the mode, if it differs, and the fewest other settings
    that still tell every row apart (an lr that comes with the model is not repeated)."""
    keys = sorted({k for r in runs for k in r["settings"]})
    by_col = defaultdict(list)
    for r in runs:
        by_col[r["col"]].append(r)
    varying = [k for k in keys if any(len({str(r["settings"].get(k)) for r in group}) > 1 for group in by_col.values())]
    varying.sort(key=lambda k: (SETTING_ORDER.index(k) if k in SETTING_ORDER else len(SETTING_ORDER), k))

    def identity(r, ks):
        return (r["model"], r["source"], *(str(r["settings"].get(k)) for k in ks))

    distinct = len({identity(r, varying) for r in runs})
    shown = list(varying)
    for k in reversed(varying):  # least telling first: drop a setting when the rows stay apart without it
        if k == "mode":  # a linear probe is never left to be guessed from its numbers
            continue
        trial = [x for x in shown if x != k]
        if len({identity(r, trial) for r in runs}) == distinct:
            shown = trial
    for r in runs:
        r["row"] = (r["model"], r["source"], ", ".join(setting_words(k, r["settings"].get(k)) for k in shown))


def shared_settings(runs: list) -> str:
    """The labelled settings every run has in common, in words (the table does not repeat them)."""
    words = []
    for key in SETTING_ORDER:
        values = {json.dumps(r["settings"].get(key)) for r in runs}
        if len(values) == 1 and key in runs[0]["settings"] and not (key == "optim.lr" and runs[0]["settings"][key] is None):
            words.append(setting_words(key, runs[0]["settings"][key]))
    return ", ".join(words)


def metric_values(run: dict) -> dict:
    """Last-epoch results, then the labelled extras: best-epoch accuracy, best macro-F1, minimum loss."""
    final = run["final"]
    if final["mode"] == "few_shot":
        return {k: v for k, v in final["few_shot"].items() if not k.endswith("_std")}
    last, best, history = final["last_epoch"], final["best_epoch"], run["history"]
    out = {"acc": last.get("val_acc"), "macro_f1": last.get("val_macro_f1"), "mAP": last.get("val_map"),
           "best acc (extra)": best.get("val_acc")}
    f1 = [h["val_macro_f1"] for h in history if "val_macro_f1" in h] or [v for v in (best.get("val_macro_f1"),) if v is not None]
    loss = [h["val_loss"] for h in history if "val_loss" in h] or [v for v in (last.get("val_loss"),) if v is not None]
    out["best macro-F1 (extra)"] = max(f1) if f1 else None
    out["min loss (extra)"] = min(loss) if loss else None
    return {k: v for k, v in out.items() if v is not None}


def fmt(values: list, metric: str = "acc") -> str:
    scale, digits = (1, 3) if "loss" in metric else (100, 1)  # a loss is no percentage
    v = scale * np.array(values)
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f} (n={len(v)})" if len(v) > 1 else f"{v[0]:.{digits}f}"


def _metric_rank(metric: str) -> tuple:
    return (METRIC_ORDER.index(metric), "") if metric in METRIC_ORDER else (len(METRIC_ORDER), metric)


def _row_sort(row: tuple) -> tuple:
    model, source, setting = row
    return model, source != "scratch", source, setting


# --- the report --------------------------------------------------------------------------------

def build(runs: list, out: str, margin: float | None = None) -> str:
    os.makedirs(out, exist_ok=True)
    cells = defaultdict(list)  # (row, col, metric) -> values over seeds
    for run in runs:
        for metric, value in metric_values(run).items():
            cells[(run["row"], run["col"], metric)].append(value)
    rows = sorted({r for r, _, _ in cells}, key=_row_sort)
    cols = sorted({(c, m) for _, c, m in cells}, key=lambda cm: (cm[0], _metric_rank(cm[1])))
    with_setting = any(r[2] for r in rows)
    head = "| model | pretraining | " + ("setting | " if with_setting else "")
    lines = [head + " | ".join(f"{c}: {m}" for c, m in cols) + " |",
             "|---|---|" + ("---|" if with_setting else "") + "---|" * len(cols)]
    for row in rows:
        label = " | ".join(row if with_setting else row[:2])
        lines.append(f"| {label} | " + " | ".join(fmt(cells[(row, c, m)], m) if cells.get((row, c, m)) else "–"
                                                 for c, m in cols) + " |")
    table = "\n".join(lines)
    by_weights = _accs_by_pretraining(runs)
    versus = _versus_scratch(runs, cells, by_weights, with_setting)
    between = _between_sources(by_weights, with_setting, margin)
    sizes = _parameters(runs)
    _bar_chart(cells, rows, sorted({c for c, _ in cols}), os.path.join(out, "bars.png"))
    _curves(runs, os.path.join(out, "curves.png"))
    budget = _budget_plot(runs, os.path.join(out, "budget.png"))
    shared = shared_settings(runs)
    text = ("# Fine-tuning report\n\nTop-1 accuracy / macro-F1 in %, last epoch, mean ± std over seeds; best-epoch "
            "accuracy, best macro-F1 (chosen on the validation split) and minimum validation loss only as labelled "
            "extras.\n\n" + (f"All runs: {shared}.\n\n" if shared else "") + table +
            (("\n\n## Against the from-scratch twin\n\n" + versus) if versus else "") +
            (("\n\n## Between sources pretrained several times\n\n" + between) if between else "") +
            (("\n\n## Parameters\n\n" + sizes) if sizes else "") +
            "\n\n![accuracy by pretraining source](bars.png)\n\n![validation accuracy and loss per epoch](curves.png)\n\n" +
            ("![accuracy vs pretraining budget](budget.png)\n\n" if budget else "") + f"Runs: {len(runs)}\n")
    write_json(os.path.join(out, "runs.json"), [{"path": r["path"], "row": " | ".join(x for x in r["row"] if x),
                                                  "col": r["col"], **metric_values(r)} for r in runs], indent=1)
    write_text(os.path.join(out, "report.md"), text)  # last: its presence marks a complete report
    return table


def _twin(row: tuple, col: str, cells) -> tuple | None:
    """The same model's scratch row on the same dataset: the one with the same settings, else the only one."""
    scratch = sorted({r for r, c, m in cells if r[0] == row[0] and r[1] == "scratch" and c == col and m == "acc"})
    same = [r for r in scratch if r[2] == row[2]]
    return same[0] if same else scratch[0] if len(scratch) == 1 else None


def _versus_scratch(runs, cells, by_weights, with_setting: bool) -> str:
    """Per pretrained row: last-epoch accuracy minus its scratch twin's (points, means over seeds), and
    the first epoch at which its mean accuracy curve reaches the twin's final mean. A row pooled over
    several pretrainings of one source (pretraining seeds: other weights files) also gets the gain of
    each, since they vary more than fine-tuning seeds do."""
    curves = defaultdict(list)
    for r in runs:
        if any("val_acc" in h for h in r["history"]):
            curves[(r["row"], r["col"])].append({h["epoch"]: h["val_acc"] for h in r["history"] if "val_acc" in h})
    lines = ["| model | pretraining | " + ("setting | " if with_setting else "") + "dataset | " +
             ("scratch twin's setting | " if with_setting else "") + "Δ acc vs scratch (points) | "
             "epochs to reach scratch's final acc |", "|---|---|---|---|---|" + ("---|---|" if with_setting else "")]
    for (row, col, metric), values in sorted(cells.items(), key=lambda kv: (_row_sort(kv[0][0]), kv[0][1], kv[0][2])):
        twin = _twin(row, col, cells) if metric == "acc" and row[1] != "scratch" else None
        if twin is None:
            continue
        target = np.mean(cells[(twin, col, "acc")])
        epochs = sorted(set.intersection(*(set(c) for c in curves[(row, col)]))) if curves[(row, col)] else []
        reached = next((e for e in epochs if np.mean([c[e] for c in curves[(row, col)]]) >= target), None)
        total = max(epochs) if epochs else "?"
        label = " | ".join(row if with_setting else row[:2])
        twin_setting = f"{twin[2]} | " if with_setting else ""
        pretrainings = by_weights[(row, col)]
        gains = [100 * (np.mean(accs) - target) for _, accs in sorted(pretrainings.items())]
        each = ("" if len(gains) < 2 else f" ({len(gains)} pretrainings: " + " / ".join(f"{g:+.1f}" for g in gains)
                + f"; std {np.std(gains):.1f})")
        lines.append(f"| {label} | {col} | {twin_setting}{100 * (np.mean(values) - target):+.1f}{each} | "
                     f"{f'{reached} of {total}' if reached is not None else f'not within {total}'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _accs_by_pretraining(runs) -> dict:
    """(row, col) -> weights file -> the last-epoch accuracies of the runs fine-tuned from it."""
    by_weights = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if "acc" in (values := metric_values(r)):
            by_weights[(r["row"], r["col"])][r["final"]["init"]].append(values["acc"])
    return by_weights


def _between_sources(by_weights, with_setting: bool, margin: float | None) -> str:
    """Every two pretrained rows of one model, setting and dataset that each pool >= 2 pretrainings: the
    gap of their mean accuracies (= of their gains over a shared twin), in points, with Welch's 95 %
    interval and two-sided p. The unit is the pretraining (the mean over its fine-tuning seeds): it
    varies more than a fine-tuning seed, and fine-tunes of one pretraining are not independent. With a
    margin, two one-sided tests: p < 0.05 shows the gap is inside ±margin."""
    from scipy import stats

    per = {key: np.array([100 * np.mean(a) for _, a in sorted(w.items())])
           for key, w in by_weights.items() if len(w) >= 2 and key[0][1] != "scratch"}
    keys = sorted(per, key=lambda k: (_row_sort(k[0]), k[1]))
    lines = []
    for (ra, col), (rb, col_b) in combinations(keys, 2):
        if col != col_b or ra[0] != rb[0] or ra[2] != rb[2]:
            continue
        x, y = per[(ra, col)], per[(rb, col)]
        gap = x.mean() - y.mean()
        if x.var() + y.var() > 0:
            welch = stats.ttest_ind(x, y, equal_var=False)
            low, high = welch.confidence_interval(0.95)
            interval = f"{low:+.1f} to {high:+.1f}"
            p = f"{welch.pvalue:.2f}" if welch.pvalue >= 0.01 else "< 0.01"
            tost = max(stats.ttest_ind(x + margin, y, equal_var=False, alternative="greater").pvalue,
                       stats.ttest_ind(x - margin, y, equal_var=False, alternative="less").pvalue) if margin else None
        else:  # every pretraining of both rows gave the same accuracy: nothing to test
            interval, p, tost = "–", "–", None
        setting = f"{ra[2]} | " if with_setting else ""
        cells = [ra[0], setting + ra[1], rb[1], col, f"{len(x)} / {len(y)}", f"{gap:+.1f}", interval, p]
        if margin:
            cells.append("–" if tost is None else f"{tost:.2f} ({'yes' if tost < 0.05 else 'not shown'})")
        lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return ""
    head = ["model", ("setting | " if with_setting else "") + "pretraining A", "pretraining B", "dataset",
            "pretrainings", "gap A − B (points)", "95 % interval (Welch)", "p (gap ≠ 0)"]
    if margin:
        head.append(f"within ±{margin:g} (two one-sided tests: p, shown?)")
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * (len(head) + with_setting), *lines])


def _parameters(runs) -> str:
    """Total and trainable parameters per model and mode (a linear probe trains only the head)."""
    seen = {}
    for r in runs:
        final = r["final"]
        if final.get("parameters"):
            seen[(r["model"], MODES.get(final["mode"], final["mode"]))] = (final["parameters"],
                                                                         final.get("trainable_parameters"))
    if not seen:
        return ""
    lines = ["| model | mode | parameters | trainable |", "|---|---|---|---|"]
    for (model, mode), (total, trainable) in sorted(seen.items()):
        lines.append(f"| {model} | {mode} | {total:,} | {trainable:,} |" if trainable is not None
                     else f"| {model} | {mode} | {total:,} | – |")
    return "\n".join(lines)


def _row_label(row: tuple) -> str:
    return ": ".join([row[0], ", ".join(x for x in row[1:] if x)])


def _bar_chart(cells, rows, datasets, path):
    metric = "acc" if any(m == "acc" for _, _, m in cells) else sorted({m for _, _, m in cells})[0]
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(datasets) * max(1, len(rows)) / 3), 4))
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        means = [100 * np.mean(cells.get((row, d, metric)) or [np.nan]) for d in datasets]
        stds = [100 * np.std(cells.get((row, d, metric)) or [0]) for d in datasets]
        ax.bar(np.arange(len(datasets)) + i * width, means, width, yerr=stds, capsize=3, label=_row_label(row))
    ax.set_xticks(np.arange(len(datasets)) + width * (len(rows) - 1) / 2, datasets)
    ax.set_ylabel(f"{metric} (%), last epoch")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never over them
    ax.grid(axis="y", alpha=0.3)
    save(fig, path)


def _mean_curve(histories: list, key: str) -> tuple[list, np.ndarray] | None:
    """Epochs and the mean over seeds of `key`, over the epochs every seed has."""
    curves = [{h["epoch"]: h[key] for h in hist if key in h} for hist in histories]
    epochs = sorted(set.intersection(*(set(c) for c in curves))) if all(curves) else []
    return (epochs, np.mean([[c[e] for e in epochs] for c in curves], 0)) if epochs else None


def _curves(runs, path):
    """Per dataset: validation accuracy (top) and loss (bottom, training loss dashed), mean over seeds."""
    from matplotlib.ticker import MaxNLocator

    groups = defaultdict(list)
    for r in runs:
        if r["history"]:
            groups[(r["col"], _row_sort(r["row"]), r["row"])].append(r["history"])
    datasets = sorted({c for c, _, _ in groups})
    n = max(1, len(datasets))
    fig, axes = plt.subplots(2, n, figsize=(5.5 * n, 7), squeeze=False)
    for i, d in enumerate(datasets):
        acc_ax, loss_ax = axes[0][i], axes[1][i]
        for (col, _, row), histories in sorted(groups.items()):
            if col != d:
                continue
            acc = _mean_curve(histories, "val_acc") or _mean_curve(histories, "val_map")
            line = acc_ax.plot(acc[0], 100 * acc[1], "-o", ms=3, label=_row_label(row))[0] if acc else None
            color = line.get_color() if line else None
            val_loss, train_loss = _mean_curve(histories, "val_loss"), _mean_curve(histories, "train_loss")
            if val_loss:
                color = loss_ax.plot(*val_loss, "-o", ms=3, color=color, label=_row_label(row))[0].get_color()
            if train_loss:
                loss_ax.plot(*train_loss, "--", color=color)
        for ax, ylabel in ((acc_ax, "val accuracy (%)"), (loss_ax, "loss (val solid, train dashed)")):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _label(ax, d, "epoch", ylabel)
    save(fig, path)


def _budget_plot(runs, path) -> bool:
    """Last-epoch accuracy against pretraining images seen, for every (model, kind) pretrained at two
    or more budgets, with the model's from-scratch accuracy as a dashed line. False when no kind has
    more than one budget."""
    acc = defaultdict(list)  # (dataset, model, kind, images) -> last-epoch accuracies
    for r in runs:
        value = metric_values(r).get("acc")
        if value is not None and r["final"]["mode"] != "few_shot":
            acc[(r["col"], r["model"], r["kind"], r["images"])].append(value)
    budgets = defaultdict(set)
    for d, m, k, n in acc:
        if k != "scratch":
            budgets[(d, m, k)].add(n)
    series = {key: sorted(ns) for key, ns in budgets.items() if len(ns) > 1}
    if not series:
        return False
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
    save(fig, path)
    return True


def _label(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def main(argv=None) -> None:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (or parent folders: every sub-folder with final.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--margin", type=float, default=None, metavar="POINTS",
                    help="equivalence margin for rows pretrained several times: are their gains the same within "
                         "±POINTS (two one-sided tests)? e.g. 1 for a parity goal of 1 point")
    args = ap.parse_args(argv)
    if args.margin is not None and not 0 < args.margin < float("inf"):
        raise UserError(f"--margin {args.margin:g}: give a positive, finite number of accuracy points, e.g. --margin 1")
    check_out_folder(args.out)
    paths = []
    for p in args.runs:
        found = [p] if os.path.exists(os.path.join(p, "final.json")) else sorted(
            os.path.dirname(f) for f in glob.glob(os.path.join(p, "**", "final.json"), recursive=True))
        if not found:
            raise UserError(f"no finished run under {p} (a run folder holds final.json when finetune.main has finished)")
        paths += found
    table = build(load_runs(paths), args.out, args.margin)
    print(table)
    print(f"\nreport: {os.path.join(args.out, 'report.md')} (with its pictures beside it)")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
