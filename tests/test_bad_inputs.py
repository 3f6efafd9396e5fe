"""Table-driven bad-input suite: each row is a command a user could type, the exit code it must end
with, and words its one `error:` line must hold. Every row also checks that no traceback was printed
and that nothing was written or changed under the case's folder (no half-written results under a
final name; no earlier run touched).

Rows run in-process (one torch import for the whole table) under an alarm, so a hang fails the row
instead of the suite. Argument strings may name {tmp} (the row's own folder), {out} ({tmp}/out) and
the fabricated inputs {cifar}, {shards}, {folder} (read-only, shared by all rows); a row's `setup(tmp)`
fabricates what it needs in {tmp} before the snapshot is taken.

Add rows to the section of your area (or a new section); keep each row fast (no training to the end).
"""

import hashlib
import os
import signal
import textwrap
from dataclasses import dataclass, field
from typing import Callable

import pytest

from tests.conftest import write_cifar10, write_imagefolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "pretrain", "tiny_cpu.yaml")
CIFAR10 = os.path.join(ROOT, "configs", "finetune", "cifar10.yaml")
FOLDER = os.path.join(ROOT, "configs", "finetune", "imagefolder.yaml")
TIMEOUT_S = 120


@dataclass
class Case:
    name: str
    entry: str                    # pretrain | finetune | fractalgen | report | analyze | experiments | gpu_check
    argv: list
    words: tuple = ()             # each must appear in the error line (case-insensitive)
    code: int = 2
    setup: Callable | None = None  # setup(tmp): fabricate inputs before the snapshot
    marks: list = field(default_factory=list)


def write(path_in_tmp: str, text: str) -> Callable:
    """setup that writes a text file (e.g. a YAML config) into the row's folder."""
    def setup(tmp):
        path = os.path.join(tmp, path_in_tmp)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text).format(root=ROOT, tmp=tmp))
    return setup


def _entry(name: str) -> Callable[[list], int | None]:
    from common.errors import run_main

    if name == "fractalgen":
        from fractalgen.cli import main
        return main
    if name == "gpu_check":  # a script beside the benchmarks, not a module of a package
        import importlib.util

        spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        return lambda argv: run_main(script.main, argv)
    module = {"pretrain": "pretrain.main", "finetune": "finetune.main", "report": "finetune.report",
              "analyze": "finetune.analyze", "experiments": "experiments.__main__"}[name]
    main = __import__(module, fromlist=["main"]).main
    return lambda argv: run_main(main, argv)


# --- the table ---------------------------------------------------------------------------------

CASES = [
    # == config (typed schema, both trainers) ==
    Case("pretrain: batch_size not a number", "pretrain", ["--config", TINY, "--out", "{out}", "batch_size=abc"],
         ("batch_size", "integer")),
    Case("pretrain: zero epochs", "pretrain", ["--config", TINY, "--out", "{out}", "epochs=0"], ("epochs", ">= 1")),
    Case("pretrain: negative lr", "pretrain", ["--config", TINY, "--out", "{out}", "optim.lr=-1"], ("optim.lr", "> 0")),
    Case("pretrain: lr 0 is refused, not replaced by the default", "pretrain",
         ["--config", TINY, "--out", "{out}", "optim.lr=0"], ("optim.lr",)),
    Case("pretrain: batch_size 0", "pretrain", ["--config", TINY, "--out", "{out}", "batch_size=0"], ("batch_size",)),
    Case("pretrain: negative workers", "pretrain", ["--config", TINY, "--out", "{out}", "data.workers=-1"],
         ("data.workers", ">= 0")),
    Case("pretrain: eval_every 0", "pretrain", ["--config", TINY, "--out", "{out}", "eval_every=0"], ("eval_every",)),
    Case("pretrain: unknown precision", "pretrain", ["--config", TINY, "--out", "{out}", "precision=fp32"],
         ("precision", "bf16")),
    Case("pretrain: unknown optimiser", "pretrain", ["--config", TINY, "--out", "{out}", "optim.opt=adamww"],
         ("optim.opt", "adamw")),
    Case("pretrain: unknown source", "pretrain", ["--config", TINY, "--out", "{out}", "data.source=disk"],
         ("data.source", "shards")),
    Case("pretrain: scale of one number", "pretrain", ["--config", TINY, "--out", "{out}", "aug.scale=[0.5]"],
         ("aug.scale", "a list of 2 numbers")),
    Case("pretrain: mean of two channels", "pretrain", ["--config", TINY, "--out", "{out}", "mean=[0.5,0.5]"],
         ("mean",)),
    Case("pretrain: drop_path of 1", "pretrain", ["--config", TINY, "--out", "{out}", "drop_path=1"], ("drop_path",)),
    Case("pretrain: mixup probability above 1", "pretrain", ["--config", TINY, "--out", "{out}", "aug.mixup_prob=2"],
         ("aug.mixup_prob",)),
    Case("pretrain: unknown verify mode", "pretrain", ["--config", TINY, "--out", "{out}", "data.verify=md5"],
         ("data.verify", "sha256")),
    Case("pretrain: negative max_corrupt", "pretrain", ["--config", TINY, "--out", "{out}", "data.max_corrupt=-1"],
         ("data.max_corrupt",)),
    Case("pretrain: EMA decay of 1", "pretrain", ["--config", TINY, "--out", "{out}", "ema.decay=1"], ("ema.decay",)),
    Case("pretrain: head lr scale 0", "pretrain", ["--config", TINY, "--out", "{out}", "optim.head_lr_scale=0"],
         ("optim.head_lr_scale",)),
    Case("pretrain: unknown override key, with a suggestion", "pretrain",
         ["--config", TINY, "--out", "{out}", "optim.lrr=1"], ("optim.lrr", "optim.lr")),
    Case("pretrain: override without a value", "pretrain", ["--config", TINY, "--out", "{out}", "epochs"],
         ("key=value",)),
    Case("pretrain: unknown key inside a YAML file", "pretrain", ["--config", "{tmp}/bad.yaml", "--out", "{out}"],
         ("unknown key", "optim.warmup", "warmup_epochs"),
         setup=write("bad.yaml", "base: {root}/configs/pretrain/tiny_cpu.yaml\noptim: {{warmup: 3}}\n")),
    Case("pretrain: a section that is not a mapping", "pretrain", ["--config", "{tmp}/bad.yaml", "--out", "{out}"],
         ("optim", "mapping"), setup=write("bad.yaml", "base: {root}/configs/pretrain/tiny_cpu.yaml\noptim: 3\n")),
    Case("pretrain: a config without its base", "pretrain", ["--config", "{tmp}/bad.yaml", "--out", "{out}"],
         ("missing", "base"), setup=write("bad.yaml", "epochs: 3\n")),
    Case("pretrain: config that is not YAML", "pretrain", ["--config", "{tmp}/bad.yaml", "--out", "{out}"],
         ("not valid yaml",), setup=write("bad.yaml", "epochs: [3\n")),
    Case("pretrain: config file missing", "pretrain", ["--config", "{tmp}/nope.yaml", "--out", "{out}"],
         ("does not exist",)),
    Case("pretrain: a base that includes itself", "pretrain", ["--config", "{tmp}/loop.yaml", "--out", "{out}"],
         ("inherits from itself",), setup=write("loop.yaml", "base: loop.yaml\n")),
    Case("pretrain: unknown command-line option", "pretrain", ["--config", TINY, "--out", "{out}", "--epochs", "3"],
         ("unrecognized", "--help")),
    Case("finetune: unknown mode", "finetune", ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}",
                                                "model=resnet10t", "mode=probe"], ("mode", "linear_probe")),
    Case("finetune: unknown augmentation preset", "finetune",
         ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}", "model=resnet10t", "augment=strong"],
         ("augment", "augmix")),
    Case("finetune: eval_every not a number", "finetune",
         ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}", "model=resnet10t", "eval_every=abc"],
         ("eval_every",)),
    Case("finetune: holdout of 1.5", "finetune",
         ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}", "model=resnet10t", "data.holdout=1.5"],
         ("data.holdout", "< 1")),
    Case("finetune: unknown dataset format", "finetune",
         ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}", "model=resnet10t", "data.format=mnist"],
         ("data.format", "cifar100")),
    Case("finetune: few-shot with no shots", "finetune",
         ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}", "model=resnet10t", "few_shot.shots=[0]"],
         ("few_shot.shots",)),
    Case("finetune: mean neither auto nor 3 numbers", "finetune",
         ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}", "model=resnet10t", "mean=grey"], ("mean", "auto")),
    Case("finetune: STL-10 fold out of range", "finetune",
         ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}", "model=resnet10t", "data.fold=10"],
         ("data.fold", "<= 9")),
    Case("finetune: unknown key inside a YAML file", "finetune",
         ["--config", "{tmp}/bad.yaml", "--data", "{cifar}", "--out", "{out}", "model=resnet10t"],
         ("unknown key", "data.formt", "data.format"),
         setup=write("bad.yaml", "base: {root}/configs/finetune/base.yaml\ndata: {{formt: cifar10}}\n")),
]


# == data (data safety: pickles, labels, image files, shards) ==


class _Payload:
    """Unpickled by plain pickle, it writes a file into the row's folder (the snapshot sees it)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _cifar_with(change) -> Callable:
    """setup: a CIFAR-10 folder at {tmp}/cifar whose data_batch_1 dict is passed through change(batch, tmp)."""
    def setup(tmp):
        import pickle

        path = os.path.join(write_cifar10(os.path.join(tmp, "cifar")), "cifar-10-batches-py", "data_batch_1")
        with open(path, "rb") as f:
            batch = pickle.load(f)
        change(batch, tmp)
        with open(path, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return setup


def _folder_with(change) -> Callable:
    """setup: an image folder at {tmp}/folder, then change(root)."""
    def setup(tmp):
        change(write_imagefolder(os.path.join(tmp, "folder")))
    return setup


def _truncate_a_jpeg(root):
    from PIL import Image

    path = os.path.join(root, "val", "a", "photo.jpg")
    Image.radial_gradient("L").convert("RGB").save(path, quality=90)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _shards_with(change) -> Callable:
    """setup: a 32-sample fractal shard folder (4 shards) at {tmp}/shards, then change(root)."""
    def setup(tmp):
        from fractalgen import DatasetSpec, render_dataset

        root = os.path.join(tmp, "shards")
        render_dataset(DatasetSpec.create("single", 32, 4, size=32, points=500), root, shard_size=8, workers=1,
                       progress=False)
        change(root)
    return setup


def _empty_tars(root):
    import tarfile

    for name in os.listdir(root):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(root, name), "w"):
                pass


def _flip_a_byte(root):
    path = os.path.join(root, "single-000002.tar")
    with open(path, "r+b") as f:
        f.seek(3000)
        byte = f.read(1)
        f.seek(3000)
        f.write(bytes([byte[0] ^ 0xFF]))


def _shards_cmd(*extra):
    return ["--config", TINY, "--data", "{tmp}/shards", "--out", "{out}", "batch_size=8", "data.workers=0", *extra]


CASES += [
    Case("finetune: a CIFAR batch carrying a payload is refused, never run", "finetune",
         ["--config", CIFAR10, "--data", "{tmp}/cifar", "--out", "{out}", "model=resnet10t"],
         ("data_batch_1", "refused", "posix.system"),
         setup=_cifar_with(lambda b, tmp: b.update(labels=_Payload(os.path.join(tmp, "payload-ran"))))),
    Case("finetune: a CIFAR label outside the 10 classes", "finetune",
         ["--config", CIFAR10, "--data", "{tmp}/cifar", "--out", "{out}", "model=resnet10t"],
         ("data_batch_1", "'labels'[2] is 12", "10 classes"),
         setup=_cifar_with(lambda b, tmp: b["labels"].__setitem__(2, 12))),
    Case("finetune: a CIFAR batch without its data", "finetune",
         ["--config", CIFAR10, "--data", "{tmp}/cifar", "--out", "{out}", "model=resnet10t"],
         ("data_batch_1", "no 'data' entry"), setup=_cifar_with(lambda b, tmp: b.pop("data"))),
    Case("finetune: an image-folder class with no images", "finetune",
         ["--config", FOLDER, "--data", "{tmp}/folder", "--out", "{out}", "model=resnet10t"],
         ("train/empty", "holds no images"),
         setup=_folder_with(lambda root: [os.makedirs(os.path.join(root, s, "empty")) for s in ("train", "val")])),
    Case("finetune: a truncated JPEG in the val split is found at load time", "finetune",
         ["--config", FOLDER, "--data", "{tmp}/folder", "--out", "{out}", "model=resnet10t"],
         ("val/a/photo.jpg", "not a readable image"), setup=_folder_with(_truncate_a_jpeg)),
    Case("finetune: a file that is not an image, named like one", "finetune",
         ["--config", FOLDER, "--data", "{tmp}/folder", "--out", "{out}", "model=resnet10t"],
         ("train/b/notes.png", "not a readable image"),
         setup=_folder_with(lambda root: open(os.path.join(root, "train", "b", "notes.png"), "w").write("hello"))),
    Case("pretrain: a folder of empty tars", "pretrain", _shards_cmd(), ("single-000000.tar", "bytes", "the card says"),
         setup=_shards_with(_empty_tars)),
    Case("pretrain: a shard listed in the card is missing", "pretrain", _shards_cmd(),
         ("single-000003.tar", "missing"),
         setup=_shards_with(lambda root: os.remove(os.path.join(root, "single-000003.tar")))),
    Case("pretrain: a shard changed after rendering (data.verify=sha256)", "pretrain",
         _shards_cmd("data.verify=sha256"), ("single-000002.tar", "sha256 differs"), setup=_shards_with(_flip_a_byte)),
]

# == engine (run folders, resume, checkpoints) ==


def _used_run(files=("config.yaml", "final.json", "metrics.jsonl")) -> Callable:
    """setup: {out} holds (the files of) an earlier run; a refused command must leave them as they are."""
    def setup(tmp):
        os.makedirs(os.path.join(tmp, "out"))
        for name in files:
            with open(os.path.join(tmp, "out", name), "w") as f:
                f.write("seed: 0\n" if name.endswith(".yaml") else '{"step": 1}\n')
    return setup


def _run_with_unreadable_checkpoints(tmp):
    """setup: {out} holds a run of the row's own config whose only checkpoint is damaged."""
    from common.config import save_config
    from pretrain.main import parse_args, resolve

    cfg = resolve(parse_args(["--config", TINY, "--out", os.path.join(tmp, "out")]))
    save_config(cfg, cfg["run_dir"])
    ckpt = os.path.join(tmp, "out", "checkpoints", "step_00000004")
    os.makedirs(ckpt)
    with open(os.path.join(ckpt, "state.json"), "w") as f:
        f.write('{"format": "fractal-pretr')  # cut short


_FT = ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}", "model=resnet10t"]

CASES += [
    Case("finetune: into a finished run's folder (its results stay)", "finetune", _FT,
         ("already holds a run", "--resume"), setup=_used_run()),
    Case("pretrain: into a used run folder", "pretrain", ["--config", TINY, "--out", "{out}"],
         ("already holds a run", "--resume"), setup=_used_run(("config.yaml", "metrics.jsonl"))),
    Case("finetune: --resume with another config", "finetune", [*_FT, "--resume"],
         ("different config", "differs in"), setup=_used_run(("config.yaml", "metrics.jsonl"))),
    Case("finetune: results without a config.yaml", "finetune", _FT, ("no config.yaml",),
         setup=_used_run(("metrics.jsonl", "final.json"))),
    Case("finetune: --out is a file", "finetune", _FT, ("is a file",), setup=write("out", "not a folder")),
    Case("pretrain: --out inside a file", "pretrain", ["--config", TINY, "--out", "{tmp}/afile/run"],
         ("cannot be created",), setup=write("afile", "not a folder")),
    Case("pretrain: --resume-from without a run to continue", "pretrain",
         ["--config", TINY, "--out", "{out}", "--resume-from", "{out}/checkpoints/step_00000001"],
         ("--resume-from", "no run to continue")),
    Case("pretrain: --resume where no checkpoint can be read", "pretrain", ["--config", TINY, "--out", "{out}", "--resume"],
         ("no checkpoint", "can be read"), setup=_run_with_unreadable_checkpoints),
    Case("finetune: fewer images than one batch (no config.yaml left behind)", "finetune",
         ["--config", FOLDER, "--data", "{folder}", "--out", "{out}", "model=test_vit", "batch_size=64",
          "data.workers=0"], ("fewer than one batch",)),
]

# == GPU check (benchmarks/gpu_check.py) ==

CASES += [
    Case("gpu_check: --steps outside 1-5", "gpu_check", ["--cpu-smoke", "--out", "{out}", "--steps", "2,7"],
         ("--steps", "1-5")),
    Case("gpu_check: --steps not numbers", "gpu_check", ["--cpu-smoke", "--out", "{out}", "--steps", "all"],
         ("--steps",)),
    Case("gpu_check: --cifar not in the CIFAR-10 layout", "gpu_check",
         ["--cpu-smoke", "--out", "{out}", "--cifar", "{folder}"], ("--cifar", "cifar-10-batches-py")),
    Case("gpu_check: unknown option", "gpu_check", ["--cpu-smoke", "--out", "{out}", "--gpus", "2"], ("--gpus",)),
]

# == files users hand us (weights sidecars, finished runs) and output folders ==


def _weights_with_sidecar(text: str) -> Callable:
    """setup: {tmp}/w/model.safetensors (a real resnet10t) beside a model.json holding `text`."""
    def setup(tmp):
        from common.models import build
        from safetensors.torch import save_file

        os.makedirs(os.path.join(tmp, "w"))
        save_file(build("resnet10t", 3).state_dict(), os.path.join(tmp, "w", "model.safetensors"))
        with open(os.path.join(tmp, "w", "model.json"), "w") as f:
            f.write(text)
    return setup


CASES += [
    Case("finetune: --init weights whose model.json is not JSON", "finetune",
         ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}", "--init", "{tmp}/w/model.safetensors"],
         ("model.json", "not valid json"), setup=_weights_with_sidecar('{"model": "resnet10t",')),
    Case("finetune: --init weights whose model.json lacks keys", "finetune",
         ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}", "--init", "{tmp}/w/model.safetensors"],
         ("model.json", "lacks num_classes"), setup=_weights_with_sidecar('{"model": "resnet10t"}')),
    Case("finetune: --init file that does not exist", "finetune",
         ["--config", CIFAR10, "--data", "{cifar}", "--out", "{out}", "--init", "{tmp}/nope.safetensors"],
         ("nope.safetensors", "does not exist")),
    Case("analyze: weights whose model.json is not JSON", "analyze",
         ["--weights", "{tmp}/w/model.safetensors", "--out", "{out}"], ("model.json", "not valid json"),
         setup=_weights_with_sidecar("[1, 2")),
    Case("report: a run whose final.json is not JSON", "report", ["{tmp}/runs", "--out", "{out}"],
         ("final.json", "not valid json"), setup=write("runs/r1/final.json", "{{\"mode\": ")),
    Case("report: no finished run under the folders given", "report", ["{tmp}/runs", "--out", "{out}"],
         ("no finished", "final.json"), setup=write("runs/r1/notes.txt", "empty")),
    Case("analyze: --out is a file", "analyze", ["--weights", "{tmp}/w/model.safetensors", "--out", "{tmp}/afile"],
         ("afile", "is a file"), setup=lambda tmp: (_weights_with_sidecar(
             '{"model": "resnet10t", "num_classes": 3, "img_size": 32, "mean": [0.5, 0.5, 0.5], '
             '"std": [0.5, 0.5, 0.5]}')(tmp), write("afile", "x")(tmp))),
    Case("analyze: --out inside a file", "analyze", ["--weights", "{tmp}/w/model.safetensors", "--out", "{tmp}/afile/a"],
         ("cannot be created",), setup=lambda tmp: (_weights_with_sidecar(
             '{"model": "resnet10t", "num_classes": 3, "img_size": 32, "mean": [0.5, 0.5, 0.5], '
             '"std": [0.5, 0.5, 0.5]}')(tmp), write("afile", "x")(tmp))),
    Case("report: --out is a file", "report", ["{tmp}/runs", "--out", "{tmp}/afile"], ("afile",),
         setup=lambda tmp: (write("runs/r1/final.json", "{{}}")(tmp), write("afile", "x")(tmp))),
    *[Case(f"report: equivalence --margin {m}", "report", ["{tmp}/runs", "--out", "{out}", "--margin", m],
           ("--margin", "positive, finite")) for m in ("0", "-1", "nan", "inf")],
    Case("report: equivalence --margin not a number", "report", ["{tmp}/runs", "--out", "{out}", "--margin", "one"],
         ("--margin", "invalid float value")),
]

# == models/report/stl10 (any timm model, published weights by name, STL-10 binary release) ==

STL10 = os.path.join(ROOT, "configs", "finetune", "stl10.yaml")


def _offline_hub(tmp):
    """setup: an empty Hugging Face cache in {tmp}/hub with downloads off. huggingface_hub reads both at
    import, so its module values are set; they stay for the rest of the process (tests never download)."""
    import huggingface_hub.constants as hf

    os.makedirs(os.path.join(tmp, "hub"))
    hf.HF_HUB_CACHE, hf.HF_HUB_OFFLINE = os.path.join(tmp, "hub"), True


def _stl10_without_labels(tmp):
    """setup: {tmp}/stl/stl10_binary/ holding only class_names.txt and train_X.bin."""
    folder = os.path.join(tmp, "stl", "stl10_binary")
    os.makedirs(folder)
    with open(os.path.join(folder, "class_names.txt"), "w") as f:
        f.write("\n".join(f"c{i}" for i in range(10)))
    with open(os.path.join(folder, "train_X.bin"), "wb") as f:
        f.write(bytes(96 * 96 * 3))


CASES += [
    Case("models: unknown timm model", "finetune",
         ["--config", FOLDER, "--data", "{folder}", "--out", "{out}", "model=vit_bse_patch16_224"],
         ("unknown model", "vit_base_patch16_224")),
    Case("models: timm: weights not in the cache while offline", "finetune",
         ["--config", FOLDER, "--data", "{folder}", "--out", "{out}", "--init", "timm:resnet10t.c3_in1k"],
         ("not in the hugging face cache", "/hub (hf_hub_offline is set)", "timm.create_model('resnet10t.c3_in1k', pretrained=True)"),
         setup=_offline_hub),
    Case("models: timm: a tag timm does not publish", "finetune",
         ["--config", FOLDER, "--data", "{folder}", "--out", "{out}", "--init", "timm:resnet50.nope"],
         ("no published weights", "resnet50.a1_in1k")),
    Case("models: timm: weights of another model than the config's", "finetune",
         ["--config", FOLDER, "--data", "{folder}", "--out", "{out}", "--init", "timm:resnet10t.c3_in1k",
          "model=resnet18"], ("resnet10t", "model=resnet10t"), setup=_offline_hub),
    Case("stl10: folder without the label files", "finetune",
         ["--config", STL10, "--data", "{tmp}/stl", "--out", "{out}", "model=resnet10t"],
         ("stl10_binary", "missing", "train_y.bin", "test_x.bin"), setup=_stl10_without_labels),
    Case("stl10: fold out of range", "finetune",
         ["--config", STL10, "--data", "{tmp}/stl", "--out", "{out}", "model=resnet10t", "data.fold=10"],
         ("data.fold", "<= 9")),
    Case("report: a finished run whose final.json lacks its results", "report", ["{tmp}/run", "--out", "{out}"],
         ("final.json", "lacks last_epoch"), setup=write("run/final.json", '{{"mode": "finetune", "model": "m", '
                                                         '"init": "scratch", "dataset": "d"}}')),
    Case("report: a run whose metrics.jsonl is cut short", "report", ["{tmp}/run", "--out", "{out}"],
         ("metrics.jsonl", "line 2"), setup=lambda tmp: (
             write("run/final.json", '{{"mode": "finetune", "model": "m", "init": "scratch", "dataset": "d", '
                                     '"last_epoch": {{}}, "best_epoch": {{}}}}')(tmp),
             write("run/metrics.jsonl", '{{"epoch": 1, "val_acc": 0.5}}\n{{"epoch": 2, "val')(tmp))),
]

# == fractalgen comparison options (benchmarks/fidelity.py) ==

CASES += [
    Case("fractalgen: fractaldb official_draw in colour", "fractalgen",
         ["render", "--kind", "fractaldb", "--n", "4", "--classes", "2", "--option", "official_draw=true",
          "--color", "--out", "{out}"], ("official_draw", "--color")),
    Case("fractalgen: fractaldb official_draw not a boolean", "fractalgen",
         ["render", "--kind", "fractaldb", "--n", "4", "--classes", "2", "--option", "official_draw=maybe",
          "--out", "{out}"], ("official_draw", "auto, true or false")),
    Case("fractalgen: single reference_colour not a boolean", "fractalgen",
         ["render", "--kind", "single", "--n", "4", "--option", "reference_colour=2", "--out", "{out}"],
         ("reference_colour", "False")),
    Case("fractalgen: multi reference_resize not a boolean", "fractalgen",
         ["render", "--kind", "multi", "--n", "4", "--option", "reference_resize=yes", "--out", "{out}"],
         ("reference_resize", "False")),
    Case("fractalgen: reference_colour on fractaldb", "fractalgen",
         ["render", "--kind", "fractaldb", "--n", "4", "--classes", "2", "--option", "reference_colour=true",
          "--out", "{out}"], ("reference_colour", "does not apply")),
]

# == fractalgen new kinds (1p-frac, ofdb) ==

CASES += [
    Case("fractalgen: 1p-frac delta below 0", "fractalgen",
         ["render", "--kind", "1p-frac", "--n", "4", "--option", "delta=-0.1", "--out", "{out}"], ("delta", "[0, 1)")),
    Case("fractalgen: 1p-frac delta of 1", "fractalgen",
         ["render", "--kind", "1p-frac", "--n", "4", "--option", "delta=1", "--out", "{out}"], ("delta", "[0, 1)")),
    Case("fractalgen: 1p-frac sigma beyond a 2-map system", "fractalgen",
         ["render", "--kind", "1p-frac", "--n", "4", "--option", "sigma=6.5", "--out", "{out}"], ("sigma",)),
    Case("fractalgen: 1p-frac with a systems file", "fractalgen",
         ["render", "--kind", "1p-frac", "--n", "4", "--systems", "{tmp}/s.json", "--out", "{out}"], ("--systems",)),
    Case("fractalgen: ofdb weight 0 (checked before the class search)", "fractalgen",
         ["render", "--kind", "ofdb", "--n", "4", "--option", "weights=[0,1,1,1,1,1]", "--out", "{out}"], ("weights",)),
    Case("fractalgen: ofdb in colour", "fractalgen",
         ["render", "--kind", "ofdb", "--n", "4", "--color", "--out", "{out}"], ("--color",)),
]

# == fractalgen contour kinds (rcdb, visualatom) and 3D-IFS projections (exfractal) ==

CASES += [
    Case("fractalgen: rcdb contour count range reversed", "fractalgen",
         ["render", "--kind", "rcdb", "--n", "4", "--option", "lines=[5,1]", "--out", "{out}"], ("lines", "lo <= hi")),
    Case("fractalgen: rcdb oval rate below 1", "fractalgen",
         ["render", "--kind", "rcdb", "--n", "4", "--option", "oval_rate=0.5", "--out", "{out}"],
         ("oval_rate", ">= 1")),
    Case("fractalgen: rcdb in colour", "fractalgen",
         ["render", "--kind", "rcdb", "--n", "4", "--color", "--out", "{out}"], ("--color",)),
    Case("fractalgen: rcdb with a systems file", "fractalgen",
         ["render", "--kind", "rcdb", "--n", "4", "--systems", "{tmp}/s.json", "--out", "{out}"], ("--systems",)),
    Case("fractalgen: visualatom gray beyond 255", "fractalgen",
         ["render", "--kind", "visualatom", "--n", "4", "--option", "gray=[0,300]", "--out", "{out}"],
         ("gray", "0..255")),
    Case("fractalgen: visualatom fewer than 3 vertices", "fractalgen",
         ["render", "--kind", "visualatom", "--n", "4", "--option", "vertices=[2,10]", "--out", "{out}"],
         ("vertices", "3..100000")),
    Case("fractalgen: visualatom one nonzero frequency (n2 must differ from n1)", "fractalgen",
         ["render", "--kind", "visualatom", "--n", "4", "--option", "frequencies=[4,4]", "--out", "{out}"],
         ("frequencies", "differ")),
    Case("fractalgen: visualatom option of another kind", "fractalgen",
         ["render", "--kind", "visualatom", "--n", "4", "--option", "window=[1,2]", "--out", "{out}"],
         ("window", "does not apply")),
    Case("fractalgen: exfractal maps from 0", "fractalgen",
         ["render", "--kind", "exfractal", "--n", "4", "--option", "maps=[0,3]", "--out", "{out}"], ("maps", "1 <=")),
    Case("fractalgen: exfractal variance threshold beyond the scaled cloud", "fractalgen",
         ["render", "--kind", "exfractal", "--n", "4", "--option", "min_variance=1.5", "--out", "{out}"],
         ("min_variance", "[0, 1)")),
    Case("fractalgen: exfractal camera inside the cloud", "fractalgen",
         ["render", "--kind", "exfractal", "--n", "4", "--option", "distance=1", "--out", "{out}"], ("distance",)),
]

# == experiments (python -m experiments: the experiment file, its data, its folder) ==
EXP_CPU = os.path.join(ROOT, "configs", "experiments", "cifar10_cpu.yaml")
EXP_FDSL = os.path.join(ROOT, "configs", "experiments", "fdsl_paper.yaml")
_EXP_FILE = """\
    finetune:
      config: {root}/configs/finetune/cifar10.yaml
      regimes: {{low: {{data.train_per_class: 2}}}}
    pretrain: [{{name: r, model: resnet10t}}]
    """

CASES += [
    Case("experiments: no such experiment file", "experiments", ["{tmp}/none.yaml", "--out", "{out}"],
         ("cannot read experiment file",)),
    Case("experiments: file is not YAML", "experiments", ["{tmp}/e.yaml", "--out", "{out}"], ("not valid YAML",),
         setup=write("e.yaml", "finetune: [unclosed\n")),
    Case("experiments: unknown top-level key", "experiments", ["{tmp}/e.yaml", "--out", "{out}"],
         ("pretrian", "did you mean pretrain"), setup=write("e.yaml", _EXP_FILE + "pretrian: []\n")),
    Case("experiments: jobs not a number", "experiments", ["{tmp}/e.yaml", "--out", "{out}"], ("jobs", "integer"),
         setup=write("e.yaml", _EXP_FILE + "jobs: many\n")),
    Case("experiments: a render entry that is not a fractalgen kind", "experiments", ["{tmp}/e.yaml", "--out", "{out}"],
         ("render.kinds.singel", "not a fractalgen kind"), setup=write("e.yaml", _EXP_FILE + "render: {{kinds: {{singel: {{}}}}}}\n")),
    Case("experiments: a render variant naming no fractalgen kind", "experiments", ["{tmp}/e.yaml", "--out", "{out}"],
         ("render.kinds.big-multi", "'mutli' is not a fractalgen kind"),
         setup=write("e.yaml", _EXP_FILE + "render: {{kinds: {{big-multi: {{kind: mutli}}}}}}\n")),
    Case("experiments: a render variant's kind not a string", "experiments", ["{tmp}/e.yaml", "--out", "{out}"],
         ("render.kinds.big-multi.kind",), setup=write("e.yaml", _EXP_FILE + "render: {{kinds: {{big-multi: {{kind: [multi]}}}}}}\n")),
    Case("experiments: render systems on a kind that draws its classes from its seed", "experiments",
         ["{tmp}/e.yaml", "--out", "{out}"], ("render.kinds.rcdb", "systems applies to"),
         setup=write("e.yaml", _EXP_FILE + "render: {{kinds: {{rcdb: {{systems: ref}}}}}}\n")),
    Case("experiments: render systems from a folder without systems.json", "experiments",
         ["{tmp}/e.yaml", "--out", "{out}", "--data", "ref={tmp}", "--dry-run"], ("systems.json does not exist", "--data ref="),
         setup=write("e.yaml", _EXP_FILE + "render: {{kinds: {{single: {{systems: ref}}}}}}\n")),
    Case("experiments: budget with no kinds", "experiments", ["{tmp}/e.yaml", "--out", "{out}"],
         ("budget.kinds is empty",), setup=write("e.yaml", _EXP_FILE + "budget: {{job: r, kinds: [], images: [10]}}\n")),
    Case("experiments: budget with the one-kind key", "experiments", ["{tmp}/e.yaml", "--out", "{out}"],
         ("budget.kind", "did you mean budget.kinds"),
         setup=write("e.yaml", _EXP_FILE + "budget: {{job: r, kind: single, images: [10]}}\n")),
    Case("experiments: budget kinds on a job without a pretrain config", "experiments", ["{tmp}/e.yaml", "--out", "{out}"],
         ("job r pretrains on single", "no config"),
         setup=write("e.yaml", _EXP_FILE + "budget: {{job: r, kinds: [single], images: [10]}}\n")),
    Case("experiments: a regime key the fine-tune stage does not have", "experiments",
         ["{tmp}/e.yaml", "--out", "{out}", "--data", "{cifar}"], ("augmnet", "did you mean augment"),
         setup=write("e.yaml", _EXP_FILE.replace("data.train_per_class: 2", "augmnet: none"))),
    Case("experiments: a regime value out of range", "experiments",
         ["{tmp}/e.yaml", "--out", "{out}", "--data", "{cifar}"], ("epochs", ">= 1"),
         setup=write("e.yaml", _EXP_FILE.replace("data.train_per_class: 2", "epochs: 0"))),
    Case("experiments: a regime whose warm-up is the whole run", "experiments",
         ["{tmp}/e.yaml", "--out", "{out}", "--data", "{cifar}"],
         ("finetune/low/r-scratch-s0", "optim.warmup_epochs (1) is not less than epochs (1)"),
         setup=write("e.yaml", _EXP_FILE.replace("data.train_per_class: 2", "epochs: 1"))),
    Case("experiments: a pretraining seed twice", "experiments",
         [EXP_CPU, "--out", "{out}", "--data", "{cifar}", "pretrain.0.seeds=[1, 1]"],
         ("pretrain job vit: seeds repeat ([1, 1])", "list each seed once")),
    Case("experiments: a fine-tuning seed twice", "experiments",
         [EXP_CPU, "--out", "{out}", "--data", "{cifar}", "finetune.seeds=[0, 2, 0]"],
         ("finetune.seeds repeat ([0, 2, 0])", "list each seed once")),
    Case("experiments: a negative pretraining seed", "experiments",
         [EXP_CPU, "--out", "{out}", "--data", "{cifar}", "pretrain.0.seeds=[-1]"],
         ("pretrain[0].seeds must be a list of integers each >= 0", "got [-1]")),
    Case("experiments: pretraining seeds not a list", "experiments",
         [EXP_CPU, "--out", "{out}", "--data", "{cifar}", "pretrain.0.seeds=two"], ("pretrain[0].seeds", "got 'two'")),
    Case("experiments: unknown override", "experiments", [EXP_CPU, "--out", "{out}", "--data", "{cifar}", "jbos=2"],
         ("jbos", "did you mean")),
    Case("experiments: an override of a list entry that does not exist", "experiments",
         [EXP_CPU, "--out", "{out}", "--data", "{cifar}", "pretrain.7.kinds=[single]"], ("pretrain.7", "list of")),
    Case("experiments: --data names no dataset of the file", "experiments",
         [EXP_FDSL, "--out", "{out}", "--data", "{cifar}"], ("NAME=PATH", "cifar10, cifar100, imagenet")),
    Case("experiments: --data path missing", "experiments",
         [EXP_CPU, "--out", "{out}", "--data", "{tmp}/nothing"], ("does not exist",)),
    Case("experiments: a dataset not given", "experiments", [EXP_CPU, "--out", "{out}"], ("--data data=PATH",)),
    Case("experiments: --jobs 0", "experiments", [EXP_CPU, "--out", "{out}", "--data", "{cifar}", "--jobs", "0"],
         ("--jobs",)),
    Case("experiments: --emit other than slurm", "experiments",
         [EXP_CPU, "--out", "{out}", "--data", "{cifar}", "--emit", "pbs", "{tmp}/s"], ("--emit", "slurm")),
    Case("experiments: --quick without a quick block", "experiments",
         [EXP_FDSL, "--out", "{out}", "--quick", "--dry-run"], ("quick",)),
    Case("experiments: --holdout out of range", "experiments",
         [EXP_CPU, "--out", "{out}", "--data", "{cifar}", "--holdout", "1.5"], ("--holdout 1.5",)),
    Case("experiments: a folder of another config", "experiments",
         [EXP_CPU, "--out", "{out}", "--data", "{cifar}"], ("another config",),
         setup=write("out/experiment.yaml", "jobs: 7\n")),
    Case("experiments: --out is a file", "experiments", [EXP_CPU, "--out", "{tmp}/f", "--data", "{cifar}"],
         ("is a file",), setup=write("f", "x\n")),
]

# --- the runner --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, fractal_shards):
    root = tmp_path_factory.mktemp("bad-input-fixtures")
    return {"cifar": write_cifar10(str(root / "cifar")), "folder": write_imagefolder(str(root / "folder")),
            "shards": fractal_shards}


def _snapshot(folder: str) -> dict:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"no answer within {TIMEOUT_S} s")


def _reset_accelerate():
    """Rows run in one process; Accelerate keeps its device state in a singleton."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_bad_input(case, tmp_path, inputs, capsys):
    tmp = str(tmp_path)
    if case.setup:
        case.setup(tmp)
    values = {"tmp": tmp, "out": os.path.join(tmp, "out"), **inputs}
    argv = [a.format(**values) for a in case.argv]
    before = _snapshot(tmp)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT_S)
    try:
        code = _entry(case.entry)(argv)
    except SystemExit as e:
        code = e.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        _reset_accelerate()
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == case.code, f"exit {code}, expected {case.code}; stderr:\n{err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith("error:"), f"last line is not one error line:\n{err[-2000:]}"
    for word in case.words:
        assert word.lower() in lines[-1].lower(), f"{word!r} not in: {lines[-1]}"
    after = _snapshot(tmp)
    assert after == before, f"files written or changed: {sorted(set(after.items()) ^ set(before.items()))[:5]}"
