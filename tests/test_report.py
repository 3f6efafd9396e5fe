"""finetune.report: a row per distinct setting, labelled in words; last epoch as the result with labelled
extras; accuracy and loss curves. Real runs (published weights from a fabricated cache, scratch, linear
probe, two augmentations) and fabricated run folders in the format finetune.main writes."""

import json
import os

import numpy as np
import pytest
import yaml

from common.errors import UserError
from finetune.main import main
from finetune.report import main as report_main, model_name, source_name
from tests.conftest import write_imagefolder
from tests.test_models import fake_published, offline_hub  # noqa: F401  (a fixture)

CFG = "configs/finetune/imagefolder.yaml"
QUICK = ["epochs=2", "batch_size=8", "data.workers=0", "eval_batch=16", "img_size=32", "model=test_resnet"]


def table_rows(text: str) -> dict:
    """First table of report.md: {(model, pretraining, setting): {column: cell}}."""
    lines = [block for block in text.split("\n\n") if block.startswith("| model |")][0].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[tuple(cells[:3])] = dict(zip(header[3:], cells[3:]))
    return rows


@pytest.mark.slow  # four short training runs: ~45 s on a loaded 2-core CPU
def test_real_runs_by_source_mode_and_augmentation(tmp_path, offline_hub):  # noqa: F811
    fake_published(offline_hub, "test_resnet.r160_in1k")
    data = write_imagefolder(str(tmp_path / "data"), per_class=4)
    runs = {"scratch": ["--init", "scratch"],
            "timm-ft": ["--init", "timm:test_resnet.r160_in1k"],
            "timm-probe": ["--init", "timm:test_resnet.r160_in1k", "mode=linear_probe"],
            "timm-ft-none": ["--init", "timm:test_resnet.r160_in1k", "augment=none"]}
    for name, args in runs.items():
        main(["--config", CFG, "--data", data, "--out", str(tmp_path / name), *QUICK, *args])
    out = tmp_path / "report"
    report_main([str(tmp_path / n) for n in runs] + ["--out", str(out)])
    text = (out / "report.md").read_text()
    rows = table_rows(text)
    imagenet = "ImageNet-1k (r160_in1k)"
    assert set(rows) == {("test_resnet", "scratch", "fine-tune, augmentation basic"),
                         ("test_resnet", imagenet, "fine-tune, augmentation basic"),
                         ("test_resnet", imagenet, "linear probe, augmentation basic"),
                         ("test_resnet", imagenet, "fine-tune, augmentation none")}, text
    cells = rows[("test_resnet", imagenet, "fine-tune, augmentation basic")]
    assert list(cells) == ["imagefolder: acc", "imagefolder: macro_f1", "imagefolder: best acc (extra)",
                           "imagefolder: best macro-F1 (extra)", "imagefolder: min loss (extra)"]
    # the last epoch is the result; the extras are the best / minimum over the run's epochs
    final = json.loads((tmp_path / "timm-ft" / "final.json").read_text())
    history = [json.loads(line) for line in open(tmp_path / "timm-ft" / "metrics.jsonl") if "val_loss" in line]
    assert cells["imagefolder: acc"] == f"{100 * final['last_epoch']['val_acc']:.1f}"
    assert cells["imagefolder: min loss (extra)"] == f"{min(h['val_loss'] for h in history):.3f}"
    assert cells["imagefolder: best macro-F1 (extra)"] == f"{100 * max(h['val_macro_f1'] for h in history):.1f}"
    probe = json.loads((tmp_path / "timm-probe" / "final.json").read_text())  # a probe trains only the head
    assert probe["trainable_parameters"] < probe["parameters"]
    assert f"| test_resnet | linear probe | {probe['parameters']:,} | {probe['trainable_parameters']:,} |" in text
    assert "All runs: 32 px, 2 epochs" in text and "Runs: 4" in text
    assert (out / "curves.png").stat().st_size > 1000


def fabricate(root, name, acc, seed=0, model="vit_tiny_patch16_224", source=None, dataset="cifar10", weights=None,
              **cfg):
    """A run folder as finetune.main leaves it: final.json, config.yaml (the settings), metrics.jsonl.
    `weights`: the pretraining's folder (default: the source's name)."""
    run = os.path.join(root, name)
    os.makedirs(run)
    config = {"seed": seed, "model": model, "model_kwargs": cfg.pop("model_kwargs", {}), "mode": "finetune",
              "augment": "basic", "img_size": 32, "epochs": 3, "optim": {"lr": 0.001, "head_lr_scale": 1.0},
              "ema": {"enabled": False, "decay": 0.9998}, "data": {"format": dataset, "path": "/x", "fold": None}}
    for key, value in cfg.items():  # dotted keys: optim.lr=...
        node = config
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    init = "scratch" if source is None else f"runs/{weights or source}/model.safetensors"
    history = [{"epoch": e, "val_acc": acc * e / 3, "val_macro_f1": acc * e / 3 - 0.05, "val_loss": 2.0 - acc * e,
                "train_loss": 2.1 - acc * e} for e in (1, 2, 3)]
    final = {"mode": config["mode"], "model": model, "init": init, "dataset": dataset, "seed": seed,
             "pretrain_source": None if source is None else config.get("pretrain_source") or {"kind": source},
             "train_images": None,
             "last_epoch": history[-1], "best_epoch": history[-1], "parameters": 1000, "trainable_parameters": 1000}
    json.dump(final, open(os.path.join(run, "final.json"), "w"))
    yaml.safe_dump(config, open(os.path.join(run, "config.yaml"), "w"))
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(h) + "\n" for h in history)
    return run


def test_rows_name_only_the_settings_that_tell_them_apart(tmp_path):
    vit = {"model_kwargs": {"patch_size": 4, "embed_dim": 128, "depth": 4, "num_heads": 4}}
    runs = [fabricate(tmp_path, f"v{s}", 0.5 + 0.02 * s, s, **vit) for s in range(2)]  # seeds average
    runs += [fabricate(tmp_path, "vs", 0.6, 0, source="single", **vit)]
    runs += [fabricate(tmp_path, "r", 0.4, model="resnet10t", optim__lr=0.004)]
    runs += [fabricate(tmp_path, "r-lr", 0.45, model="resnet10t", optim__lr=0.01, source="single")]
    runs += [fabricate(tmp_path, "r-lr2", 0.46, model="resnet10t", optim__lr=0.004, source="single")]
    runs += [fabricate(tmp_path, "v-ema", 0.55, ema__enabled=True, **vit)]
    runs += [fabricate(tmp_path, "v-head", 0.56, optim__head_lr_scale=10.0, **vit)]
    runs += [fabricate(tmp_path, "c100", 0.3, dataset="cifar100", epochs=9, **vit)]  # epochs differ only across datasets
    out = tmp_path / "report"
    report_main([*runs, "--out", str(out)])
    text = (out / "report.md").read_text()
    rows = table_rows(text)
    vit_name, plain = "ViT p4 w128 d4 h4", "lr 0.001, head lr x1, no EMA"
    assert set(rows) == {(vit_name, "scratch", plain), (vit_name, "scratch", "lr 0.001, head lr x1, EMA"),
                         (vit_name, "scratch", "lr 0.001, head lr x10, no EMA"), (vit_name, "single", plain),
                         ("resnet10t", "scratch", "lr 0.004, head lr x1, no EMA"),
                         ("resnet10t", "single", "lr 0.004, head lr x1, no EMA"),
                         ("resnet10t", "single", "lr 0.01, head lr x1, no EMA")}, text
    assert rows[(vit_name, "scratch", plain)]["cifar10: acc"] == "51.0 ± 1.0 (n=2)"
    assert rows[(vit_name, "scratch", plain)]["cifar100: acc"] == "30.0"
    assert rows[(vit_name, "single", plain)]["cifar100: acc"] == "–"
    # against the twin with the same settings: resnet10t single lr 0.004 vs scratch lr 0.004
    same = "lr 0.004, head lr x1, no EMA"
    assert f"| resnet10t | single | {same} | cifar10 | {same} | +6.0 | 3 of 3 |" in text
    # no scratch run at lr 0.01: the model's only scratch row, named
    assert f"| resnet10t | single | lr 0.01, head lr x1, no EMA | cifar10 | {same} | +5.0 |" in text
    assert f"| {vit_name} | single | {plain} | cifar10 | {plain} | +9.0 |" in text  # not the EMA or head-lr twin
    # an lr that comes with the model tells no rows apart: no setting column at all
    report_main([runs[0], runs[2], runs[3], "--out", str(tmp_path / "r2")])
    text = (tmp_path / "r2" / "report.md").read_text()
    assert "| model | pretraining | cifar10: acc |" in text and f"| {vit_name} | single | 60.0 |" in text


def test_a_row_pooled_over_several_pretrainings_gives_the_gain_of_each(tmp_path):
    runs = [fabricate(tmp_path, f"scratch-s{f}", 0.30 + 0.01 * f, f) for f in range(2)]  # twin: 30.5
    for p, acc in ((2, 0.35), (3, 0.29), (4, 0.33)):  # pretraining seeds p2-p4, two fine-tuning seeds each
        runs += [fabricate(tmp_path, f"single-p{p}-s{f}", acc + 0.01 * f, f, source="single", weights=f"single-p{p}",
                           pretrain_source={"kind": "single", "path": f"/runs/{p % 2}/data"})  # data linked in
                 for f in range(2)]
    runs += [fabricate(tmp_path, "rcdb-s0", 0.31, source="rcdb")]  # one pretraining: no breakdown
    report_main([*runs, "--out", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| vit_tiny_patch16_224 | single | 32.8 ± 2.5 (n=6) |" in text  # all six runs in one row
    assert "| vit_tiny_patch16_224 | single | cifar10 | +2.3 (3 pretrainings: +5.0 / -1.0 / +3.0; std 2.5) |" in text
    assert "| vit_tiny_patch16_224 | rcdb | cifar10 | +0.5 |" in text


def test_sources_alike_in_name_but_on_different_data_get_their_own_rows(tmp_path):
    """Two renders of one kind (different cards) and two class folders: four rows, each named after its
    data folder; a render's pretraining seeds pool even when its folder was linked into another run."""
    runs = [fabricate(tmp_path, "scratch-s0", 0.30)]
    for name, src, acc in (("a", {"kind": "single", "card_sha256": "aaa", "path": "/r/x/data/single"}, 0.35),
                           ("a2", {"kind": "single", "card_sha256": "aaa", "path": "/r/x-b/data/single"}, 0.37),
                           ("b", {"kind": "single", "card_sha256": "bbb", "path": "/r/x/data/single-refcolour"}, 0.32),
                           ("f", {"kind": "imagenet-folder", "path": "/r/reference-fractaldb"}, 0.31),
                           ("g", {"kind": "imagenet-folder", "path": "/r/reference-single/"}, 0.29)):
        runs.append(fabricate(tmp_path, name, acc, source=src["kind"], weights=name, pretrain_source=src))
    report_main([*runs, "--out", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text()
    rows = {row[1]: row[2] for row in table_rows(text)}  # no setting column: the third cell is the accuracy
    assert rows == {"scratch": "30.0", "single (single)": "36.0 ± 1.0 (n=2)", "single (single-refcolour)": "32.0",
                    "imagenet-folder (reference-fractaldb)": "31.0", "imagenet-folder (reference-single)": "29.0"}, text
    # two renders in folders of the same name: the card digest tells them apart
    same = [fabricate(tmp_path, f"same-{c}", 0.3 + 0.01 * i, source="single", weights=f"same-{c}",
                      pretrain_source={"kind": "single", "card_sha256": c * 12, "path": f"/r/{c}/data/single"})
            for i, c in enumerate("cd")]
    report_main([runs[0], *same, "--out", str(tmp_path / "r3")])
    text = (tmp_path / "r3" / "report.md").read_text()
    assert "| single (single cccccccc) | 30.0 |" in text and "| single (single dddddddd) | 31.0 |" in text, text
    # one source: the plain name, as before
    report_main([runs[0], runs[3], "--out", str(tmp_path / "r2")])
    assert "| vit_tiny_patch16_224 | single | 32.0 |" in (tmp_path / "r2" / "report.md").read_text()


def test_words_for_models_and_sources():
    assert model_name("vit_tiny_patch16_224", {"patch_size": 4, "embed_dim": 128, "depth": 4}) == "ViT p4 w128 d4"
    assert model_name("resnet50", {}) == "resnet50"
    assert source_name({"init": "scratch", "pretrain_source": None}) == "scratch"
    assert source_name({"init": "w/imagenet.pth", "pretrain_source": None}) == "imagenet.pth"  # not "scratch"
    assert source_name({"init": "timm:vit_base_patch16_224.augreg_in21k",
                        "pretrain_source": {"kind": "timm", "description": "ImageNet-21k (augreg_in21k)"}}) \
        == "ImageNet-21k (augreg_in21k)"
    assert source_name({"init": "r/model.safetensors", "pretrain_source": {"kind": "multi", "images_seen": 2048}}) \
        == "multi (2.05k img)"


@pytest.mark.parametrize("fold", [None, 3])
def test_stl10_folds_average_in_one_column(tmp_path, fold):
    runs = [fabricate(tmp_path, f"f{k}", 0.5 + 0.01 * k, dataset="stl10", data__fold=fold if fold is None else k)
            for k in range(2)]
    report_main([*runs, "--out", str(tmp_path / "r")])
    text = (tmp_path / "r" / "report.md").read_text()
    column = "stl10 (1k-image folds): acc" if fold is not None else "stl10: acc"
    assert column in text and "50.5 ± 0.5 (n=2)" in text


def test_mode_is_named_whenever_it_differs(tmp_path):
    runs = [fabricate(tmp_path, "scratch", 0.4), fabricate(tmp_path, "probe", 0.5, source="multi", mode="linear_probe")]
    report_main([*runs, "--out", str(tmp_path / "r")])
    rows = table_rows((tmp_path / "r" / "report.md").read_text())
    assert set(rows) == {("vit_tiny_patch16_224", "scratch", "fine-tune"),
                         ("vit_tiny_patch16_224", "multi", "linear probe")}


def test_sources_pretrained_several_times_are_compared_with_an_interval_and_an_equivalence_test(tmp_path):
    """The gap between two sources' gains, with the pretraining as the unit: Welch's interval and p,
    and the two one-sided tests of --margin, checked against scipy's own t-tests."""
    from scipy import stats

    runs = [fabricate(tmp_path, f"scratch-s{f}", 0.30, f) for f in range(2)]
    pretrainings = {"single": (0.35, 0.36, 0.37), "rcdb": (0.34, 0.345, 0.355)}  # mean of 2 fine-tunes each
    for source, accs in pretrainings.items():
        for p, acc in enumerate(accs):
            runs += [fabricate(tmp_path, f"{source}-p{p}-s{f}", acc + (0.01 if f else -0.01), f, source=source,
                               weights=f"{source}-p{p}") for f in range(2)]
    runs += [fabricate(tmp_path, "ofdb-s0", 0.40, source="ofdb")]  # one pretraining: in no comparison
    report_main([*runs, "--out", str(tmp_path / "report"), "--margin", "1"])
    text = (tmp_path / "report" / "report.md").read_text()
    section = text.split("## Between sources pretrained several times\n\n")[1].split("\n\n")[0].splitlines()
    assert len(section) == 3 and "ofdb" not in text.split("## Between")[1].split("## Parameters")[0]
    x, y = (100 * np.array(pretrainings[s]) for s in ("rcdb", "single"))  # rows sort by name: rcdb first
    welch = stats.ttest_ind(x, y, equal_var=False)
    low, high = welch.confidence_interval(0.95)
    tost = max(stats.ttest_ind(x + 1, y, equal_var=False, alternative="greater").pvalue,
               stats.ttest_ind(x - 1, y, equal_var=False, alternative="less").pvalue)
    assert section[2] == (f"| vit_tiny_patch16_224 | rcdb | single | cifar10 | 3 / 3 | {x.mean() - y.mean():+.1f} | "
                          f"{low:+.1f} to {high:+.1f} | {welch.pvalue:.2f} | {tost:.2f} (not shown) |")
    assert f"{low:+.1f} to {high:+.1f}" == "-3.4 to +0.7"  # the hand computation: t(0.975, df 3.7) x se 0.73

    # without a margin no equivalence column; a margin that is not positive is one line
    report_main([*runs, "--out", str(tmp_path / "r2")])
    assert "two one-sided" not in (tmp_path / "r2" / "report.md").read_text()
    with pytest.raises(UserError, match="--margin 0: give a positive, finite number"):
        report_main([*runs, "--out", str(tmp_path / "r3"), "--margin", "0"])
    assert not (tmp_path / "r3").exists()
