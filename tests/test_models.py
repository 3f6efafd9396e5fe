"""common.models: any timm model builds and trains (arguments only where a constructor takes them), the
linear probe's classifier, and published weights by name (`timm:<name>.<tag>`) from a fabricated Hugging
Face cache, offline (nothing is downloaded)."""

import json
import logging
import os

import pytest
import torch
from safetensors.torch import save_file

from common.errors import UserError
from common.models import classifier_modules, classifier_parameters, create_model, published_weights, weights_description
from finetune.main import main
from tests.conftest import write_imagefolder

CFG = "configs/finetune/imagefolder.yaml"
QUICK = ["epochs=1", "batch_size=8", "data.workers=0", "eval_batch=16", "img_size=32"]
# the heavy ones (25M-130M parameters to initialise, or 200 layers) take 14-40 s each on a loaded 2-core CPU
SLOW = {"vgg11", "densenet201", "vit_base_patch16_224", "resnet50"}
MODELS = ["vgg11", "densenet201", "resnet18d", "vit_base_patch16_224", "deit_small_patch16_224",
          "vit_small_patch32_224", "resnet50"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS])
def test_model_builds_and_takes_a_training_step(name, caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="common.models"):
        model = create_model(name, 3, img_size=32, drop_path_rate=0.1)
    takes_drop_path = not name.startswith(("vgg", "densenet"))
    assert any("drop_path=0.1 is not used" in r.message for r in caplog.records) != takes_drop_path
    if name.startswith(("vit", "deit")):  # built for 32 px: 2x2 or 1x1 patches plus the class token
        assert model.patch_embed.img_size == (32, 32)
    # the linear probe trains exactly the classifier, and the classifier reads the few-shot features
    head = classifier_parameters(model)
    assert head and head[0].shape[0] == 3 and all(any(p is q for q in model.parameters()) for p in head)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    model.eval()
    with torch.no_grad():
        features = model.forward_head(model.forward_features(images), pre_logits=True)
    assert features.shape == (2, head[0].shape[1])
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(images)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    optimizer.step()
    assert logits.shape == (2, 3) and torch.isfinite(loss)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2  # the step moved the backbone, not only the head


def test_distilled_deit_has_two_heads_for_the_probe():
    model = create_model("deit_tiny_distilled_patch16_224", 3, img_size=32)
    assert len(classifier_modules(model)) == 2 and len(classifier_parameters(model)) == 4  # weight + bias each


def test_unknown_model_is_one_line_with_suggestions():
    with pytest.raises(UserError, match="unknown model 'vit_bse_patch16_224'; timm has e.g. vit_base_patch16_224"):
        create_model("vit_bse_patch16_224", 3)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["linear_probe", "few_shot"])
def test_cnn_without_img_size_runs_linear_probe_and_few_shot(tmp_path, mode):
    data = write_imagefolder(str(tmp_path / "data"), per_class=4)
    run = tmp_path / "run"
    main(["--config", CFG, "--data", data, "--out", str(run), "model=densenet121", f"mode={mode}", *QUICK,
          "few_shot.shots=[1]", "few_shot.trials=1"])
    final = json.loads((run / "final.json").read_text())
    assert final["model"] == "densenet121" and final["mode"] == mode
    if mode == "linear_probe":  # only the classifier trains: 1024 features x 3 classes + bias
        assert final["trainable_parameters"] == 1024 * 3 + 3 < final["parameters"]
    else:
        assert 0 <= final["few_shot"]["1shot_acc"] <= 1


# --- published weights by name, offline ----------------------------------------------------------

def fake_published(hub: str, weights: str, num_classes: int = 1000) -> dict:
    """Random weights for timm's `weights` (name.tag) laid out as the Hugging Face cache holds a download:
    hub/models--timm--<weights>/refs/main (a commit hash) and snapshots/<hash>/model.safetensors."""
    name = weights.split(".")[0]
    repo = os.path.join(hub, f"models--timm--{weights}")
    commit = "0123456789abcdef0123456789abcdef01234567"
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "snapshots", commit), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    torch.manual_seed(123)
    state = {k: v.contiguous() for k, v in create_model(name, num_classes).state_dict().items()}
    save_file(state, os.path.join(repo, "snapshots", commit, "model.safetensors"))
    return state


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache with downloads off, for this process and its children."""
    import huggingface_hub.constants as hf

    hub = str(tmp_path / "hf" / "hub")
    os.makedirs(hub)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", hub)  # huggingface_hub reads both at import: set the module's too
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    return hub


def test_published_weights_load_offline_from_the_cache(offline_hub):
    saved = fake_published(offline_hub, "test_vit.r160_in1k")
    model = create_model("test_vit", 3, img_size=32, init="timm:test_vit.r160_in1k")
    state = model.state_dict()
    blocks = [k for k in saved if k.startswith("blocks.")]
    assert blocks and all(torch.equal(state[k], saved[k]) for k in blocks)
    assert state["head.weight"].shape == (3, saved["head.weight"].shape[1])  # a new head for 3 classes
    assert state["pos_embed"].shape[1] < saved["pos_embed"].shape[1]  # resampled from 160 px to 32 px


def test_published_weights_not_cached_offline_is_one_clear_line(offline_hub):
    with pytest.raises(UserError) as e:
        create_model("test_resnet", 3, init="timm:test_resnet.r160_in1k")
    text = str(e.value)
    assert "not in the Hugging Face cache" in text and offline_hub in text and "\n" not in text
    assert "timm.create_model('test_resnet.r160_in1k', pretrained=True)" in text  # how to get them
    with pytest.raises(UserError, match="holds a 'test_resnet', but the config asks for 'test_vit'"):
        create_model("test_vit", 3, init="timm:test_resnet.r160_in1k")


def test_published_weights_registry_and_words():
    vit = published_weights("timm:vit_base_patch16_224.augreg_in21k")
    assert vit["model"] == "vit_base_patch16_224" and vit["mean"] == [0.5] * 3 and vit["img_size"] == 224
    assert vit["description"] == "ImageNet-21k (augreg_in21k)"
    resnet = published_weights("timm:resnet50")  # no tag: timm's default weights
    assert resnet["weights"] == "resnet50.a1_in1k" and resnet["description"] == "ImageNet-1k (a1_in1k)"
    assert resnet["mean"] == [0.485, 0.456, 0.406] and resnet["std"] == [0.229, 0.224, 0.225]
    assert published_weights("timm:vgg11.tv_in1k")["interpolation"] == "bilinear"
    assert weights_description("augreg2_in21k_ft_in1k") == "ImageNet-21k then ImageNet-1k (augreg2_in21k_ft_in1k)"
    assert weights_description("dino") == "timm weights (dino)"
    with pytest.raises(UserError, match="no published weights 'vit_base_patch16_224.nope'; published tags: vit_base"):
        published_weights("timm:vit_base_patch16_224.nope")


def test_finetune_from_published_weights_takes_their_settings(tmp_path, offline_hub):
    fake_published(offline_hub, "test_efficientnet.r160_in1k")
    data = write_imagefolder(str(tmp_path / "data"), per_class=4)
    run = tmp_path / "run"
    # model, mean/std and interpolation come from the weights; the size is pinned small for the CPU
    main(["--config", CFG, "--data", data, "--out", str(run), "--init", "timm:test_efficientnet.r160_in1k", *QUICK])
    final = json.loads((run / "final.json").read_text())
    assert final["model"] == "test_efficientnet"
    assert final["pretrain_source"] == {"kind": "timm", "weights": "test_efficientnet.r160_in1k", "tag": "r160_in1k",
                                        "description": "ImageNet-1k (r160_in1k)"}
    sidecar = json.loads((run / "model.json").read_text())
    assert sidecar["mean"] == [0.485, 0.456, 0.406] and sidecar["img_size"] == 32
    from finetune.main import parse_args, resolve

    cfg = resolve(parse_args(["--config", CFG, "--init", "timm:test_resnet.r160_in1k"]))  # nothing pinned
    assert (cfg["img_size"], cfg["aug"]["interpolation"], cfg["mean"]) == (160, "bilinear", [0.5] * 3)
    cfg = resolve(parse_args(["--config", CFG, "model=test_resnet"]))  # scratch: the old defaults
    assert (cfg["img_size"], cfg["aug"]["interpolation"]) == (32, "bicubic")


def test_distilled_deit_linear_probe_with_head_lr_scale(tmp_path):
    """Two heads: the probe trains both, and both get the head lr."""
    data = write_imagefolder(str(tmp_path / "data"), per_class=4)
    run = tmp_path / "run"
    main(["--config", CFG, "--data", data, "--out", str(run), "model=deit_tiny_distilled_patch16_224",
          "mode=linear_probe", "optim.head_lr_scale=10", *QUICK])
    final = json.loads((run / "final.json").read_text())
    assert final["trainable_parameters"] == 2 * (192 * 3 + 3)  # head and head_dist
