"""Shards and the CLI: format, byte-identical reruns, resume after kill -9, parts, bad input."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import webdataset as wds

from fractalgen import DatasetSpec, load_card, render_dataset
from fractalgen.cli import main

FAST = ["--size", "32", "--points", "2000", "--classes", "3", "--no-progress"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "fractalgen", *args], capture_output=True, text=True)


def files(folder):
    """Every file's bytes, the render state included, except temporaries."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_shards_readable_with_webdataset(tmp_path, kind):
    spec = DatasetSpec.create(kind, 10, 3, size=32, points=2000)
    card = render_dataset(spec, str(tmp_path), shard_size=4, workers=1, progress=False)
    assert [s["count"] for s in card["shards"]] == [4, 4, 2]
    assert card["kind"] == kind and card["num_classes"] == 3 and card["multilabel"] == (kind == "multi")
    urls = [str(tmp_path / s["name"]) for s in card["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(10)]
    for s in samples:
        assert s["png"].shape == (32, 32, 3) and s["png"].dtype == np.uint8
        meta = s["json"]
        assert int(s["cls"]) == meta["cls"] and meta["cls"] in meta["classes"]
        assert meta["index"] == int(s["__key__"])
    assert load_card(str(tmp_path)) == card


def test_fractaldb_png_grayscale(tmp_path):
    code = main(["render", "--kind", "fractaldb", "--n", "6", "--out", str(tmp_path), *FAST])
    assert code == 0
    card = load_card(str(tmp_path))
    assert card["image_ext"] == "png" and card["channels"] == 1
    sample = next(iter(wds.WebDataset(str(tmp_path / card["shards"][0]["name"]), shardshuffle=False).decode("l8")))
    assert sample["png"].ndim == 2 and set(np.unique(sample["png"])) <= {0, 127}  # the official gray


def test_byte_identical_across_runs_and_workers(tmp_path):
    args = ["render", "--kind", "multi", "--n", "24", "--shard-size", "5", *FAST]
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "b")]) == 0
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "c")]) == 0
    a, b, c = (files(tmp_path / x) for x in "abc")
    assert a == b == c and len([k for k in a if k.endswith(".tar")]) == 5


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    args = ["render", "--kind", "single", "--n", "300", "--shard-size", "10", "--workers", "1", "--size", "128",
            "--points", "200000", "--classes", "3", "--no-progress"]
    assert cli(*args, "--out", str(tmp_path / "ref")).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "fractalgen", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and any(n.endswith(".tar") for n in os.listdir(out))):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset.json").exists()  # it was killed mid-way
    # also leave a stale temporary and a shard whose receipt never got written
    (out / "single-000009.tar.tmp-99999").write_bytes(b"partial")
    receipts = out / ".fractalgen" / "receipts"
    done = sorted(receipts.iterdir())
    if done:
        done[-1].unlink()
    result = cli(*args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert files(out) == files(tmp_path / "ref")


def test_parts_make_one_dataset(tmp_path):
    args = ["render", "--kind", "single", "--n", "20", "--shard-size", "3", "--workers", "1", *FAST]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    split = tmp_path / "split"
    assert main([*args, "--part", "1/3", "--out", str(split)]) == 0
    assert not (split / "dataset.json").exists()
    assert main([*args, "--part", "0/3", "--out", str(split)]) == 0
    assert main([*args, "--part", "2/3", "--out", str(split)]) == 0
    assert files(split) == files(tmp_path / "whole")
    assert main(["info", str(split), "--verify"]) == 0


def test_other_options_refused_unless_overwrite(tmp_path, capsys):
    base = ["render", "--kind", "single", "--n", "6", "--workers", "1", "--out", str(tmp_path), *FAST]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "seed" in err and "\n" not in err
    assert main([*base, "--seed", "1", "--overwrite"]) == 0
    assert load_card(str(tmp_path))["seed"] == 1


def test_a_folder_started_before_new_options_existed_resumes(tmp_path, capsys):
    """A job.json without an option added since (here the fidelity options) is the same job at that
    option's default: the upgraded renderer finishes the folder instead of refusing it."""
    base = ["render", "--kind", "single", "--n", "6", "--shard-size", "3", "--workers", "1", "--out", str(tmp_path), *FAST]
    assert main(base) == 0
    job_path = tmp_path / ".fractalgen" / "job.json"
    job = json.loads(job_path.read_text())
    for key in ("reference_colour", "reference_background"):
        assert job["options"].pop(key) is False
    job_path.write_text(json.dumps(job))
    last = tmp_path / "single-000001.tar"
    before = last.read_bytes()
    last.unlink()  # the folder is unfinished: one shard left to render
    (tmp_path / "dataset.json").unlink()
    for receipt in (tmp_path / ".fractalgen" / "receipts").glob("single-000001*"):
        receipt.unlink()
    capsys.readouterr()
    assert main(base) == 0, capsys.readouterr().err
    assert last.read_bytes() == before and load_card(str(tmp_path))["n"] == 6


def test_a_folder_started_before_a_default_changed_names_the_option_that_finishes_it(tmp_path, capsys):
    """fractaldb's official_draw went from false to auto (official for gray images): a folder begun
    before is refused with the option that finishes it as begun, and finishes with it byte for byte."""
    base = ["render", "--kind", "fractaldb", "--n", "6", "--shard-size", "3", "--workers", "1", "--out", str(tmp_path),
            *FAST]
    assert main([*base, "--option", "official_draw=false"]) == 0
    job_path = tmp_path / ".fractalgen" / "job.json"
    job = json.loads(job_path.read_text())
    assert job["options"].pop("official_draw") is False  # as an older fractalgen wrote it
    job_path.write_text(json.dumps(job))
    last = tmp_path / "fractaldb-000001.tar"
    before = last.read_bytes()
    last.unlink()
    (tmp_path / "dataset.json").unlink()
    for receipt in (tmp_path / ".fractalgen" / "receipts").glob("fractaldb-000001*"):
        receipt.unlink()
    capsys.readouterr()
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the class search's progress bar
    assert err.startswith("error:") and "differs in: official_draw" in err
    assert "--option official_draw=false finishes it" in err
    assert main([*base, "--option", "official_draw=false"]) == 0, capsys.readouterr().err
    assert last.read_bytes() == before


def test_verify_names_first_bad_shard(tmp_path, capsys):
    assert main(["render", "--kind", "single", "--n", "9", "--shard-size", "3", "--workers", "1",
                 "--out", str(tmp_path), *FAST]) == 0
    assert main(["info", str(tmp_path), "--verify"]) == 0
    path = tmp_path / "single-000001.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["info", str(tmp_path), "--verify"]) == 1
    assert "single-000001.tar" in capsys.readouterr().err
    (tmp_path / "single-000002.tar").unlink()
    assert main(["info", str(tmp_path), "--verify"]) == 1


@pytest.mark.parametrize("args, words", [
    (["render", "--kind", "single", "--n", "0"], "positive"),
    (["render", "--kind", "bogus", "--n", "5"], "invalid choice"),
    (["render", "--kind", "single", "--n", "5", "--classes", "9"], "larger than --n"),
    (["render", "--kind", "single", "--n", "5", "--size", "4"], "too small"),
    (["render", "--kind", "single", "--n", "5", "--part", "3/2"], "--part"),
    (["info", "/nonexistent/dir"], "not a folder"),
])
def test_bad_input_one_line_exit_2(tmp_path, args, words):
    result = cli(*args, *([] if args[0] == "info" else ["--out", str(tmp_path / "o")]))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.stderr
    assert not (tmp_path / "o" / "dataset.json").exists()


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("render", "--kind", "single", "--n", "4", "--out", str(blocker / "sub"), *FAST)
    assert result.returncode == 2 and "writable" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_malformed_systems_file(tmp_path):
    bad = tmp_path / "systems.json"
    bad.write_text(json.dumps({"format": "fractalgen-systems/1", "systems": [[[1, 2]]]}))
    result = cli("render", "--kind", "fractaldb", "--n", "4", "--systems", str(bad), "--out", str(tmp_path / "o"), *FAST)
    assert result.returncode == 2 and "system 0" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_single_and_multi_draw_their_classes_from_a_systems_file(tmp_path, kind):
    # seed 7's classes given as a file to a seed-7 render: every sample is seed 7's own, byte for byte
    from fractalgen.kinds import render_sample
    from fractalgen.systems import load_systems, save_systems, sigma_class_system

    theirs = [sigma_class_system(7, c) for c in range(4)]
    path = str(tmp_path / "systems.json")
    save_systems(path, theirs, {"source": "seed 7"})
    given = DatasetSpec.create(kind, 6, 3, systems=load_systems(path)[0], size=32, points=2000, seed=7)
    seven = DatasetSpec.create(kind, 6, 3, size=32, points=2000, seed=7)
    zero = DatasetSpec.create(kind, 6, 3, size=32, points=2000, seed=0)
    assert len(given.systems) == 3 and all(np.array_equal(a, b) for a, b in zip(given.systems, theirs))
    for i in range(6):
        a, b = render_sample(given, i), render_sample(seven, i)
        assert np.array_equal(a.image, b.image) and a.classes == b.classes
    assert not all(np.array_equal(a, b) for a, b in zip(given.systems, zero.systems))
    out = tmp_path / "o"
    assert main(["render", "--kind", kind, "--n", "6", "--systems", path, "--out", str(out), "--workers", "1", *FAST]) == 0
    written, _ = load_systems(str(out / "systems.json"))
    assert all(np.array_equal(a, b) for a, b in zip(written, theirs[:3])) and len(written) == 3


def test_full_disk_leaves_no_final_shard(tmp_path, monkeypatch, capsys):
    import fractalgen.writer as writer

    calls = {"n": 0}
    real = writer.encode

    def failing(image, fmt):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(image, fmt)

    monkeypatch.setattr(writer, "encode", failing)
    code = main(["render", "--kind", "single", "--n", "12", "--shard-size", "4", "--workers", "1",
                 "--out", str(tmp_path), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: disk full")
    names = os.listdir(tmp_path)
    assert "single-000000.tar" in names and "single-000001.tar" not in names
    assert not any(".tmp-" in n for n in names) and "dataset.json" not in names
    monkeypatch.setattr(writer, "encode", real)
    assert main(["render", "--kind", "single", "--n", "12", "--shard-size", "4", "--workers", "1",
                 "--out", str(tmp_path), *FAST]) == 0
