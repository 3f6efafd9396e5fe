"""Shared pieces: configs, the weights hand-off, metrics."""

import logging

import numpy as np
import pytest
import timm
import torch

from common import metrics
from common.config import load_config, save_config
from common.errors import UserError
from common.models import create_model, export_model
from common.schema import warmup_problem


def test_config_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("a: 1\nnested: {x: 1, y: [1, 2]}\nname: base\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\nnested: {x: 5}\n")
    cfg = load_config(str(tmp_path / "child.yaml"), ["a=2", "nested.y=[3, 4]", "name=hello"])
    assert cfg == {"a": 2, "nested": {"x": 5, "y": [3, 4]}, "name": "hello"}
    save_config(cfg, str(tmp_path / "run"))
    assert load_config(str(tmp_path / "run" / "config.yaml")) == cfg
    with pytest.raises(UserError, match="no key 'nested.z'.*nested"):
        load_config(str(tmp_path / "child.yaml"), ["nested.z=1"])
    with pytest.raises(UserError, match="key=value"):
        load_config(str(tmp_path / "child.yaml"), ["oops"])
    # a number picks a list entry, at any depth; an entry that is not there is named
    (tmp_path / "jobs.yaml").write_text("jobs: [{name: a, kinds: [x, y]}, {name: b, kinds: [z]}]\n")
    cfg = load_config(str(tmp_path / "jobs.yaml"), ["jobs.0.kinds=[x]", "jobs.1.name=c", "jobs.1.kinds.0=w"])
    assert cfg == {"jobs": [{"name": "a", "kinds": ["x"]}, {"name": "c", "kinds": ["w"]}]}
    for bad in ("jobs.2.name=q", "jobs.x.name=q", "jobs.0.kinds.5=q"):
        with pytest.raises(UserError, match="not an entry of a list of"):
            load_config(str(tmp_path / "jobs.yaml"), [bad])


def test_metrics_against_hand_computed():
    y = np.array([0, 0, 1, 1, 2, 2])
    logits = np.eye(3)[[0, 1, 1, 1, 0, 2]]  # predictions 0 1 1 1 0 2
    r = metrics.single_label(logits, y, 3)
    assert r["acc"] == pytest.approx(4 / 6)
    # F1: class0 tp1 fp1 fn1 -> 0.5; class1 tp2 fp1 fn0 -> 0.8; class2 tp1 fp0 fn1 -> 2/3
    assert r["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert r["confusion"].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # multi-label: label 0 scores rank both positives first (AP 1); label 1 positive ranked 2nd (AP 0.5)
    yt = np.array([[1, 0], [1, 1], [0, 0]])
    scores = np.array([[3.0, 2.0], [2.0, 1.0], [-1.0, -3.0]])
    m = metrics.multi_label(scores, yt)
    assert m["map"] == pytest.approx(0.75)
    # threshold 0.5 on sigmoid = logit > 0: label0 preds 1,1,0 (F1 1); label1 preds 1,1,0 (tp1 fp1 -> 2/3)
    assert m["per_label_f1"] == [1.0, pytest.approx(0.6667, abs=1e-4)]
    assert m["acc"] == pytest.approx(2 / 3)


def test_exported_weights_load_into_a_fresh_timm_model(tmp_path):
    model = create_model("test_vit", 7, img_size=32)
    export_model(model, str(tmp_path), {"model": "test_vit", "num_classes": 7, "img_size": 32,
                                        "mean": [0.5] * 3, "std": [0.5] * 3})
    fresh = timm.create_model("test_vit", num_classes=7, img_size=32,
                              pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "model.safetensors")})
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert k.startswith("head.") or torch.equal(a, b), k  # timm re-initialises a head of another size
    again = create_model("test_vit", 7, img_size=32, init=str(tmp_path / "model.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_pos_embed_resampled_and_head_reinitialised(tmp_path, caplog):
    model = create_model("test_vit", 5)  # 160 px default -> 10x10 grid with patch 16
    export_model(model, str(tmp_path), {"model": "test_vit", "num_classes": 5, "img_size": 160,
                                        "mean": [0.5] * 3, "std": [0.5] * 3})
    with caplog.at_level(logging.INFO):
        small = create_model("test_vit", 3, img_size=64, init=str(tmp_path / "model.safetensors"))
    assert small.pos_embed.shape[1] == small.num_prefix_tokens + 16
    assert any("resampled position embeddings" in r.message for r in caplog.records)
    assert any("re-initialised classifier" in r.message for r in caplog.records)
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    assert torch.equal(small.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)


def test_architecture_mismatch_is_named(tmp_path):
    model = create_model("test_vit", 4, img_size=32)
    export_model(model, str(tmp_path), {"model": "test_vit", "num_classes": 4, "img_size": 32, "mean": [0.5] * 3,
                                        "std": [0.5] * 3})
    with pytest.raises(UserError, match="test_vit.*test_resnet"):
        create_model("test_resnet", 4, init=str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").unlink()  # no sidecar: the tensors themselves disagree
    with pytest.raises(UserError, match="do not (fit|match)"):
        create_model("test_resnet", 4, init=str(tmp_path / "model.safetensors"))


def test_unknown_model():
    with pytest.raises(UserError, match="unknown model"):
        create_model("no_such_model_xyz", 3)


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise UserError(f"img{i}.png: image does not decode; replace it")


def test_user_error_from_a_dataloader_worker_is_one_line(capsys):
    """torch re-raises a worker's error with the worker's traceback as its text: still one line."""
    from common.errors import run_main

    with pytest.raises(SystemExit) as e:
        run_main(lambda: list(torch.utils.data.DataLoader(_Unreadable(), num_workers=1)))
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: img0.png: image does not decode; replace it\n"


def test_warmup_problem_only_when_the_warmup_is_the_whole_run():
    def cfg(epochs, warmup):
        return {"epochs": epochs, "optim": {"warmup_epochs": warmup}}

    assert warmup_problem(cfg(2, 1)) is None and warmup_problem(cfg(1, 0)) is None
    assert warmup_problem(cfg(1, 0.25)) is None
    for epochs, warmup in ((1, 1), (1, 1.5), (5, 5)):
        problem = warmup_problem(cfg(epochs, warmup))
        assert f"optim.warmup_epochs ({warmup:g}) is not less than epochs ({epochs})" in problem
