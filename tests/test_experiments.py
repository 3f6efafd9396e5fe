"""The experiment runner: the matrix each shipped file expands to, --dry-run, --emit slurm, refusal of
another config's folder, resume, and --smoke of every shipped experiment on fabricated data in the
real formats (CIFAR pickles, Plant Pathology csv + JPEGs, STL-10 binaries, an ImageNet folder)."""

import contextlib
import glob
import io
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from experiments.plan import Plan
from experiments.runner import needed_data
from experiments.schema import check_experiment, load_experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "configs", "experiments", "*.yaml")))


def experiment(name: str, **kw) -> dict:
    return load_experiment(os.path.join(ROOT, "configs", "experiments", name + ".yaml"), **kw)


def runner(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def run_here(*args):
    """The runner's main in this process (torch and timm are imported once for all the tests), with
    what `python -m experiments` would exit with and print."""
    from common.errors import UserError
    from experiments.runner import main

    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            main(list(args))
        return subprocess.CompletedProcess(args, 0, out.getvalue(), "")
    except UserError as e:
        return subprocess.CompletedProcess(args, 2, out.getvalue(), f"error: {e}\n")
    finally:
        os.chdir(cwd)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_every_issue_experiment_is_shipped():
    assert set(SHIPPED) == {"cifar10_cpu", "fdsl_paper", "plant_pathology_thesis", "stl10_transfer", "vit_analysis",
                            "kinds_vit_32px", "kinds_vit_64px", "kinds_resnet_32px", "kinds_resnet_64px",
                            "parity_single_vit", "parity_resnet"}


# --- the CPU study: moved as is -------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["quick=False,holdout=None", "quick=False,holdout=0.1", "quick=True,holdout=None",
                                     "quick=True,holdout=0.1"])
def test_cifar10_cpu_makes_exactly_the_commands_finetune_study_made(variant):
    """tests/data/cifar10_cpu_study_commands.json: finetune.study's steps for this config, captured
    before the move (command, done marker, the weights a fine-tune waits for)."""
    with open(os.path.join(ROOT, "tests", "data", "cifar10_cpu_study_commands.json")) as f:
        want = json.load(f)[variant]
    exp = experiment("cifar10_cpu", quick="quick=True" in variant, holdout=None if "None" in variant else 0.1)
    plan = Plan(exp, {"data": "/DATA"}, "/OUT")

    def norm(cmd):  # the runner adds --resume to training steps, so an interrupted step continues
        cmd = [c.replace(sys.executable, "PYTHON") for c in cmd if c != "--resume"]
        return ["fractalgen", *cmd[1:]] if cmd[0].endswith("fractalgen") else cmd

    assert all("--resume" in s.args for s in plan.steps if s.stage in ("pretrain", "finetune"))
    got = [[norm(s.command()), s.marker, s.needs[0] if s.stage == "finetune" and s.needs else None]
           for s in plan.steps if s.stage != "report"]
    assert got == want["steps"]
    assert norm(plan.steps[-1].command()) == want["report"]


# --- the matrix -----------------------------------------------------------------------------------

def test_fdsl_paper_matrix():
    exp = experiment("fdsl_paper")
    plan = Plan(exp, {"imagenet": "/in1k", "cifar10": "/c10", "cifar100": "/c100"}, "/X")
    stages = [s.stage for s in plan.steps]
    assert stages == ["render"] * 3 + ["pretrain"] * 12 + ["finetune"] * 30 + ["report"]  # runner order
    by_name = {s.name: s for s in plan.steps}
    imagenet = by_name["pretrain/deit_s32-imagenet"]
    assert imagenet.needs == [] and "/in1k" in imagenet.args
    assert imagenet.args[1] == "configs/pretrain/deit_s32_imagenet.yaml"  # {kind} in the config path
    assert by_name["pretrain/resnet50-multi"].needs == ["/X/data/multi/dataset.json"]
    assert "epochs=90" in imagenet.args and "batch_size=64" in imagenet.args and "optim.opt=momentum" in imagenet.args
    ft = by_name["finetune/cifar100/finetune/resnet50-single-s0"]
    assert ft.needs == ["/X/pretrain/resnet50-single/model.safetensors"]
    assert ft.args[:6] == ["--config", "configs/finetune/cifar100.yaml", "--data", "/c100", "--init", ft.needs[0]]
    for override in ("img_size=224", "epochs=150", "batch_size=64", "optim.lr=0.01", "optim.weight_decay=5.0e-05",
                     "optim.head_lr_scale=10.0"):
        assert override in ft.args
    scratch = by_name["finetune/cifar10/finetune/deit_s32-scratch-s0"]
    assert scratch.needs == [] and "--init" in scratch.args and "model=vit_small_patch32_224" in scratch.args
    sources = {s.name.split("/")[-1].rsplit("-s", 1)[0] for s in plan.steps if s.stage == "finetune"}
    assert sources == {f"{m}-{src}" for m in ("deit_s16", "deit_s32", "resnet50")
                       for src in ("scratch", "fractaldb", "single", "multi", "imagenet")}
    assert plan.steps[-1].needs == [os.path.join(r, "final.json") for r in plan.runs] and len(plan.runs) == 30
    assert imagenet.images == 90 * 1_281_167 and by_name["render/single"].images == 1_000_000
    assert ft.images == 150 * 50_000


def test_a_render_variant_renders_its_kind_into_its_own_folder_and_pretrains_as_its_own_source():
    exp = check_experiment({
        "render": {"common": {"n": 100}, "kinds": {"single": {}, "single-ref": {
            "kind": "single", "options": {"reference_colour": True}}}},
        "pretrain": [{"name": "vit", "config": "configs/pretrain/deit_s16_{kind}.yaml", "kinds": ["single", "single-ref"]}],
        "finetune": {"config": "configs/finetune/cifar10.yaml", "regimes": {"low": {}}}}, "x.yaml")
    by_name = {s.name: s for s in Plan(exp, {"data": "/c10"}, "/X").steps}
    render = by_name["render/single-ref"].args
    assert render[:4] == ["render", "--kind", "single", "--out"] and render[4] == "/X/data/single-ref"
    assert "reference_colour=true" in render and "reference_colour=true" not in by_name["render/single"].args
    pretrain = by_name["pretrain/vit-single-ref"]
    assert pretrain.args[:4] == ["--config", "configs/pretrain/deit_s16_single.yaml", "--data", "/X/data/single-ref"]
    assert pretrain.needs == ["/X/data/single-ref/dataset.json"]
    assert by_name["finetune/low/vit-single-ref-s0"].needs == ["/X/pretrain/vit-single-ref/model.safetensors"]


def test_a_budget_pretrains_every_kind_at_every_count_and_fine_tunes_them_in_its_regimes():
    from common.errors import UserError

    exp = check_experiment({
        "render": {"common": {"n": 100}, "kinds": {"single": {}, "rcdb": {}}},
        "pretrain": [{"name": "vit", "config": "configs/pretrain/deit_s16_single.yaml", "kinds": []}],
        "budget": {"job": "vit", "kinds": ["rcdb", "single"], "images": [300, 1000], "regimes": ["low"]},
        "finetune": {"config": "configs/finetune/cifar10.yaml", "regimes": {"low": {}, "full": {}}}}, "x.yaml")
    steps = Plan(exp, {"data": "/c10"}, "/X").steps
    pretrain = {s.name: s for s in steps if s.stage == "pretrain"}
    assert list(pretrain) == ["pretrain/vit-rcdb-1k", "pretrain/vit-single-1k",  # the most images first
                              "pretrain/vit-rcdb-300", "pretrain/vit-single-300"]
    assert "data.train_samples=300" in pretrain["pretrain/vit-rcdb-300"].args
    assert pretrain["pretrain/vit-rcdb-300"].args[3] == "/X/data/rcdb"
    finetunes = {s.name for s in steps if s.stage == "finetune"}
    assert {n.rsplit("-s", 1)[0] for n in finetunes} == {
        "finetune/low/vit-scratch", "finetune/full/vit-scratch", "finetune/low/vit-rcdb-300", "finetune/low/vit-rcdb-1k",
        "finetune/low/vit-single-300", "finetune/low/vit-single-1k"}
    with pytest.raises(UserError, match="budget.kinds is empty"):
        check_experiment({**exp, "budget": {"job": "vit", "images": [10]}}, "x.yaml")
    with pytest.raises(UserError, match=r"unknown key 'budget.kind'; did you mean budget.kinds"):
        check_experiment({**exp, "budget": {"job": "vit", "kind": "single", "images": [10]}}, "x.yaml")


def test_pretraining_seeds_pretrain_every_source_once_per_seed_and_fine_tune_each():
    from common.errors import UserError

    raw = {
        "render": {"common": {"n": 100}, "kinds": {"single": {}, "rcdb": {}}},
        "pretrain": [{"name": "vit", "config": "configs/pretrain/deit_s16_single.yaml", "kinds": ["single", "rcdb"],
                      "seeds": [3, 5], "overrides": {"seed": 0}}],
        "budget": {"job": "vit", "kinds": ["single"], "images": [300], "regimes": ["low"]},
        "finetune": {"config": "configs/finetune/cifar10.yaml", "seeds": [0, 1], "regimes": {"low": {}, "full": {}}}}
    steps = Plan(check_experiment(raw, "x.yaml"), {"data": "/c10"}, "/X").steps
    pretrain = {s.name: s for s in steps if s.stage == "pretrain"}
    assert list(pretrain) == ["pretrain/vit-single-300-p3", "pretrain/vit-single-300-p5",  # the most images first,
                              "pretrain/vit-single-p3", "pretrain/vit-rcdb-p3",  # then seed by seed
                              "pretrain/vit-single-p5", "pretrain/vit-rcdb-p5"]
    for name, seed in (("vit-single-p3", 3), ("vit-single-300-p5", 5)):  # the seed beats the job's override
        args = pretrain[f"pretrain/{name}"].args
        assert f"seed={seed}" in args and "seed=0" not in args and args[args.index("--out") + 1] == f"/X/pretrain/{name}"
    finetunes = {s.name: s for s in steps if s.stage == "finetune"}
    assert sorted(finetunes) == sorted(
        [f"finetune/{r}/vit-{src}-s{f}" for r in ("low", "full")
         for src in ("scratch", "single-p3", "single-p5", "rcdb-p3", "rcdb-p5")
         for f in (0, 1)] + [f"finetune/low/vit-single-300-p{p}-s{f}" for p in (3, 5) for f in (0, 1)])
    assert finetunes["finetune/full/vit-single-p5-s1"].needs == ["/X/pretrain/vit-single-p5/model.safetensors"]
    assert "seed=1" in finetunes["finetune/full/vit-single-p5-s1"].args  # the fine-tuning seed stays its own
    raw["pretrain"][0]["seeds"] = [1, 1]
    with pytest.raises(UserError, match=r"pretrain job vit: seeds repeat \(\[1, 1\]\)"):
        check_experiment(raw, "x.yaml")
    raw["pretrain"][0]["seeds"] = [-1]
    with pytest.raises(UserError, match="seeds"):
        check_experiment(raw, "x.yaml")


def test_a_render_entry_draws_its_classes_from_a_datasets_systems_file(tmp_path):
    from common.errors import UserError
    from experiments.fabricate import systems

    raw = {"render": {"common": {"n": 100}, "kinds": {"single-theirs": {"kind": "single", "systems": "ref"}}},
           "pretrain": [{"name": "vit", "config": "configs/pretrain/deit_s16_{kind}.yaml", "kinds": ["single-theirs"]}],
           "finetune": {"config": "configs/finetune/cifar10.yaml", "regimes": {"low": {}}}}
    exp = check_experiment(raw, "x.yaml")
    assert needed_data(exp)["ref"] == "systems"
    ref = systems(str(tmp_path / "ref"))
    render = Plan(exp, {"data": "/c10", "ref": ref}, "/X").steps[0].args
    assert render[render.index("--systems") + 1] == os.path.join(ref, "systems.json")
    file = os.path.join(ref, "systems.json")  # the dataset may be the file itself
    assert Plan(exp, {"data": "/c10", "ref": file}, "/X").steps[0].args[-1] == file
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="systems.json does not exist"):
        Plan(exp, {"data": "/c10", "ref": str(tmp_path / "empty")}, "/X")
    with pytest.raises(UserError, match="needs the ref dataset"):
        Plan(exp, {"data": "/c10"}, "/X")
    raw["render"]["kinds"]["single-theirs"]["kind"] = "rcdb"
    with pytest.raises(UserError, match="systems applies to fractaldb / single / multi / ofdb only"):
        check_experiment(raw, "x.yaml")


def test_stl10_regimes_pick_sources_by_pattern_and_published_weights_by_tag():
    plan = Plan(experiment("stl10_transfer"), {"data": "/stl"}, "/X")
    runs = {s.name: s for s in plan.steps if s.stage == "finetune"}
    assert len(runs) == 12 * 3  # 12 regime x augmentation cells, 3 models each
    assert {n for n in runs if "/scratch_" in n} == {f"finetune/scratch_{a}/{m}-scratch-s0" for a in
                                                      ("none", "augmix", "mixcut", "seg")
                                                      for m in ("resnet50", "densenet201", "vit_b16")}
    probe = runs["finetune/probe_mixcut/densenet201-in1k-s0"]
    assert probe.args[probe.args.index("--init") + 1] == "timm:densenet201.tv_in1k" and probe.needs == []
    assert "mode=linear_probe" in probe.args and "augment=mixup_cutmix" in probe.args
    assert "mode=finetune" in runs["finetune/finetune_seg/vit_b16-in1k-s0"].args
    assert [s.stage for s in plan.steps].count("pretrain") == 0


def test_plant_pathology_conditions():
    plan = Plan(experiment("plant_pathology_thesis"), {"data": "/pp"}, "/X")
    runs = sorted(s.name for s in plan.steps if s.stage == "finetune")
    assert [r for r in runs if "/no_aug/" in r] == sorted(f"finetune/no_aug/{m}-scratch-s0"
                                                          for m in ("vit_b16", "resnet18d", "vgg11"))
    assert sorted(r for r in runs if r.startswith("finetune/thesis_aug/vit_b16")) == sorted(
        f"finetune/thesis_aug/vit_b16-{c}-s0" for c in ("scratch", "multi", "in1k", "in21k"))
    vit21k = next(s for s in plan.steps if s.name == "finetune/thesis_aug/vit_b16-in21k-s0")
    assert "timm:vit_base_patch16_224.augreg_in21k" in vit21k.args and "optim.opt=adam" in vit21k.args


def test_vit_analysis_compares_every_source_in_one_step():
    plan = Plan(experiment("vit_analysis"), {"cifar10": "/c10", "cifar100": "/c100"}, "/X")
    (analysis,) = [s for s in plan.steps if s.stage == "analysis"]
    sources = [analysis.args[i + 1] for i, a in enumerate(analysis.args) if a == "--source"]
    assert sources == ["scratch=scratch", "fractaldb=/X/pretrain/deit_s16-fractaldb/model.safetensors",
                       "single=/X/pretrain/deit_s16-single/model.safetensors",
                       "multi=/X/pretrain/deit_s16-multi/model.safetensors",
                       "in1k=timm:deit_small_patch16_224.fb_in1k"]
    assert sorted(analysis.needs) == sorted(f"/X/pretrain/deit_s16-{k}/model.safetensors"
                                            for k in ("fractaldb", "single", "multi"))
    few = [s for s in plan.steps if s.stage == "finetune"]
    assert len(few) == 2 * 5 and all("mode=few_shot" in s.args for s in few)


def test_unknown_and_wrong_keys_are_named():
    from common.errors import UserError

    base = {"finetune": {"config": "c.yaml", "regimes": {"r": {}}}}
    with pytest.raises(UserError, match=r"unknown key 'pretrian'.*did you mean pretrain"):
        check_experiment({**base, "pretrian": []}, "x.yaml")
    with pytest.raises(UserError, match=r"pretrain\[0\]\.kinds must be a list"):
        check_experiment({**base, "pretrain": [{"name": "a", "config": "c", "kinds": "single"}]}, "x.yaml")
    with pytest.raises(UserError, match=r"unknown key 'render.kinds.single.sise'.*size"):
        check_experiment({**base, "render": {"kinds": {"single": {"sise": 3}}}}, "x.yaml")
    with pytest.raises(UserError, match=r"render.kinds.singel: 'singel' is not a fractalgen kind"):
        check_experiment({**base, "render": {"kinds": {"singel": {}}}}, "x.yaml")
    with pytest.raises(UserError, match=r"render.common.kind: the kind belongs to each entry"):
        check_experiment({**base, "render": {"common": {"kind": "single"}, "kinds": {}}}, "x.yaml")
    with pytest.raises(UserError, match="resources.gpu is not a stage"):
        check_experiment({**base, "resources": {"gpu": {}}}, "x.yaml")
    with pytest.raises(UserError, match="budget.job 'vit' is not a pretrain job"):
        check_experiment({**base, "budget": {"job": "vit", "kinds": ["single"], "images": [10]}}, "x.yaml")
    # a stage key is checked against the stage's schema when the plan is made, before anything runs
    exp = check_experiment({"pretrain": [{"name": "r", "model": "resnet18"}], "finetune": {
        "config": "configs/finetune/cifar10.yaml", "regimes": {"low": {"augmnet": "none"}}}}, "x.yaml")
    with pytest.raises(UserError, match=r"step finetune/low/r-scratch-s0: config has no key 'augmnet'; did you mean augment"):
        Plan(exp, {"data": "d"}, "/X")
    exp["finetune"]["regimes"]["low"] = {"epochs": 0}
    with pytest.raises(UserError, match=r"step finetune/low/r-scratch-s0: .*epochs must be an integer >= 1"):
        Plan(exp, {"data": "d"}, "/X")


# --- the command line -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHIPPED)
def test_dry_run_prints_every_command(name, tmp_path):
    out = tmp_path / "out"
    result = run_here(f"configs/experiments/{name}.yaml", "--out", str(out), "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    headers = [line for line in lines if re.match(r"# \S+ \((render|pretrain|finetune|analysis|report); ", line)]
    commands = [line for line in lines if not line.startswith("#")]
    assert len(headers) == len(commands) and len(commands) >= 2
    assert lines[-1].startswith(f"# {len(commands)} steps; ~") and "images processed" in lines[-1]
    assert commands[-1].split()[2] == "finetune.report"
    assert not out.exists()  # nothing written
    if name == "fdsl_paper":
        pretrain = [c for c in commands if "pretrain.main" in c]
        assert len(pretrain) == 12 and all(" launch --multi_gpu --num_processes 2 -m pretrain.main " in c
                                           for c in pretrain)
        assert "# pretrain/resnet50-imagenet (pretrain; ~115,305,030 images)" in lines


def test_emit_slurm_writes_chained_scripts(tmp_path):
    folder = tmp_path / "slurm"
    data = [f"--data={n}={tmp_path}" for n in ("imagenet", "cifar10", "cifar100")]
    result = run_here("configs/experiments/fdsl_paper.yaml", "--out", str(tmp_path / "run"), *data,
                    "--emit", "slurm", str(folder))
    assert result.returncode == 0, result.stderr
    scripts = sorted(p.name for p in folder.glob("*.sbatch"))
    assert len(scripts) == 46 and scripts[0] == "000-render-fractaldb.sbatch" and scripts[-1] == "045-report.sbatch"
    render = (folder / "000-render-fractaldb.sbatch").read_text()
    assert "--gres" not in render and "#SBATCH --cpus-per-task=32" in render and "fractalgen render" in render
    pre = (folder / "003-pretrain-deit_s16-fractaldb.sbatch").read_text()
    assert "#SBATCH --gres=gpu:2" in pre and "#SBATCH --nodes=1" in pre and "#SBATCH --time=72:00:00" in pre
    assert re.search(r"accelerate launch --multi_gpu --num_processes 2 -m pretrain\.main --config "
                     r"configs/pretrain/deit_s16_fractaldb\.yaml", pre)
    ft = (folder / "016-finetune-cifar10-finetune-deit_s16-fractaldb-s0.sbatch").read_text()
    assert "#SBATCH --gres=gpu:1" in ft and "accelerate" not in ft and "-m finetune.main" in ft
    submit = (folder / "submit.sh").read_text().splitlines()
    jobs = [line for line in submit if "sbatch --parsable" in line]
    assert len(jobs) == 46  # in the runner's order, each script once
    assert [re.search(r"(\d{3}-[^/]*)\.sbatch", line).group(1) + ".sbatch" for line in jobs] == scripts
    dep = {re.match(r"JOB(\d+)=", line).group(1): re.findall(r"\$JOB(\d+)", line) for line in jobs}
    assert dep["000"] == [] and dep["003"] == ["000"]            # a pretraining waits for its render
    assert dep["006"] == []                                       # ImageNet: nothing to wait for
    assert dep["016"] == ["003"] and dep["015"] == []            # the fine-tune waits for its weights; scratch not
    assert dep["045"] == [f"{i:03d}" for i in range(15, 45)]      # the report waits for every fine-tune
    # several nodes: one launcher per node through srun, all processes counted
    two = run_here("configs/experiments/fdsl_paper.yaml", "--out", str(tmp_path / "run2"), *data, "--emit", "slurm",
                 str(tmp_path / "slurm2"), "resources.pretrain.nodes=2")
    assert two.returncode == 0, two.stderr
    pre = (tmp_path / "slurm2" / "003-pretrain-deit_s16-fractaldb.sbatch").read_text()
    assert "#SBATCH --nodes=2" in pre and "srun " in pre and "--num_processes 4 --num_machines 2" in pre
    assert '--machine_rank "$SLURM_NODEID"' in pre


def test_bad_command_lines_end_in_one_line(tmp_path):
    exp = "configs/experiments/fdsl_paper.yaml"
    assert "NAME=PATH" in one_error_line(runner(exp, "--out", str(tmp_path / "a"), "--data", str(tmp_path)))
    assert "does not exist" in one_error_line(run_here(exp, "--out", str(tmp_path / "a"), "--data",
                                                     f"cifar10={tmp_path}/nothing"))
    assert "pass --data imagenet=PATH" in one_error_line(run_here(exp, "--out", str(tmp_path / "a"),
                                                                "--data", f"cifar10={tmp_path}"))
    assert "did you mean" in one_error_line(run_here(exp, "--out", str(tmp_path / "a"), "--dry-run", "jbos=2"))
    assert "--emit knows only slurm" in one_error_line(run_here(exp, "--out", str(tmp_path / "a"), "--emit", "pbs", "x"))
    assert "no quick: variant" in one_error_line(run_here(exp, "--out", str(tmp_path / "a"), "--quick", "--dry-run"))
    assert not (tmp_path / "a").exists()


def test_refuses_a_folder_of_another_config(tmp_path):
    out = tmp_path / "run"
    data = [f"--data={n}={tmp_path}" for n in ("imagenet", "cifar10", "cifar100")]
    first = run_here("configs/experiments/fdsl_paper.yaml", "--out", str(out), *data, "--emit", "slurm",
                   str(tmp_path / "s1"))
    assert first.returncode == 0 and yaml.safe_load((out / "experiment.yaml").read_text())["jobs"] == 1
    again = run_here("configs/experiments/fdsl_paper.yaml", "--out", str(out), *data, "--emit", "slurm",
                   str(tmp_path / "s2"))
    assert again.returncode == 0  # the same config: a resume
    # a folder begun before the schema grew a key (written without it) is the same experiment while it is unset
    claim = yaml.safe_load((out / "experiment.yaml").read_text())
    for entry in claim["render"]["kinds"].values():
        del entry["kind"]
    for job in claim["pretrain"]:  # a list key, unset: empty
        del job["seeds"]
    (out / "experiment.yaml").write_text(yaml.safe_dump(claim))
    assert run_here("configs/experiments/fdsl_paper.yaml", "--out", str(out), *data, "--emit", "slurm",
                    str(tmp_path / "s4")).returncode == 0
    line = one_error_line(run_here("configs/experiments/fdsl_paper.yaml", "--out", str(out), *data, "--emit", "slurm",
                                 str(tmp_path / "s3"), "finetune.seeds=[0, 1]"))
    assert "another config" in line and not (tmp_path / "s3").exists()
    line = one_error_line(run_here("configs/experiments/vit_analysis.yaml", "--out", str(out), "--smoke"))
    assert "another config" in line and not (out / "smoke-data").exists()


def test_resume_runs_only_what_is_missing(tmp_path):
    """Steps whose marker exists are skipped; the rest run in order once their needs exist."""
    from experiments.study import Study

    def step(name, needs=()):
        marker = tmp_path / name / "done"
        code = f"import os; os.makedirs({str(marker.parent)!r}, exist_ok=True); open({str(marker)!r}, 'w').close()"
        return [sys.executable, "-c", code], str(marker), [str(tmp_path / n / "done") for n in needs]

    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "done").write_text("")  # finished before the interruption
    Study(str(tmp_path), jobs=1).run_all([step("pretrain"), step("finetune", ["pretrain"])])
    log = (tmp_path / "commands.sh").read_text().splitlines()
    assert len(log) == 1 and "finetune" in log[0] and (tmp_path / "finetune" / "done").exists()


# --- --smoke: every shipped experiment, every cell, on fabricated data ---------------------------

def finetune_steps(name: str, out: str) -> list:
    exp = experiment(name)
    names = {n: os.path.join(out, "smoke-data", n) for n in needed_data(exp)}  # as the runner fabricated them
    return [s for s in Plan(exp, names, out, smoke=True).steps if s.stage == "finetune"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_smoke(name, tmp_path):
    out = tmp_path / "run"
    result = runner(f"configs/experiments/{name}.yaml", "--out", str(out), "--smoke", timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = finetune_steps(name, str(out))
    finals = [json.loads(open(os.path.join(s.args[s.args.index("--out") + 1], "final.json")).read()) for s in steps]
    assert len(finals) == len(steps) >= 2
    report = (out / "report" / "report.md").read_text()
    assert "Runs: " + str(len(steps)) in report
    commands = (out / "commands.sh").read_text()
    assert commands.count("finetune.main") == len(steps)
    if name == "vit_analysis":
        for picture in ("attention_distance", "pos_embed_similarity", "patch_embed_pcs", "attention_rollout"):
            assert (out / "analysis" / "deit_s16" / f"{picture}.png").exists()
        assert all(f["mode"] == "few_shot" for f in finals)
    if name in ("stl10_transfer", "plant_pathology_thesis", "vit_analysis"):  # timm: sources, from a fabricated cache
        assert "published weights fabricated" in result.stdout
        assert any((f["pretrain_source"] or {}).get("kind") == "timm" for f in finals)
    again = runner(f"configs/experiments/{name}.yaml", "--out", str(out), "--smoke", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("done already") == len([s for s in Plan(
        {**experiment(name)}, {n: "x" for n in needed_data(experiment(name))}, str(out),
        smoke=True).steps if s.stage != "report"])


def test_prepare_digits_writes_a_stratified_seeded_imagefolder(tmp_path):
    from PIL import Image

    from experiments.prepare_digits import write_digits

    counts = write_digits(str(tmp_path / "digits"), size=16, seed=0)
    assert counts == {"train": 1258, "val": 539} and not (tmp_path / "digits.tmp").exists()
    for split, per_class in (("train", (120, 130)), ("val", (50, 56))):
        classes = sorted(os.listdir(tmp_path / "digits" / split))
        assert classes == [str(c) for c in range(10)]
        sizes = [len(os.listdir(tmp_path / "digits" / split / c)) for c in classes]
        assert all(per_class[0] <= n <= per_class[1] for n in sizes), sizes  # 30 % of every class
    image = Image.open(next((tmp_path / "digits" / "val" / "3").iterdir()))
    assert image.size == (16, 16) and image.mode == "RGB"
    again = write_digits(str(tmp_path / "again"), size=16, seed=0)
    assert again == counts and sorted(os.listdir(tmp_path / "again" / "val" / "3")) == sorted(
        os.listdir(tmp_path / "digits" / "val" / "3"))  # the split is a function of the seed
