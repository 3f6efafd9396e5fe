"""Expand an experiment into its steps: ordinary `fractalgen` / `pretrain.main` / `finetune.main` /
`finetune.report` commands, each with the file that marks it complete and the files it waits for.
Every training step's config (file + overrides) is checked against its stage's schema here, before
anything runs.

The order is the order the runner starts them in (and the order of --emit slurm's submit.sh):
renders, pretrainings (the most images first), fine-tunings (regimes in file order, so a stopped
experiment already holds complete tables for the first regimes), analyses, the report.
"""

import fnmatch
import os
import sys
from dataclasses import dataclass, field

import yaml

from common.config import load_config
from common.errors import UserError
from common.schema import warmup_problem
from experiments import smoke as smoke_scale

# training images per epoch of each downstream format, for the --dry-run estimate
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 5_000, "plant_pathology": 18_632}
IMAGENET_TRAIN_IMAGES = 1_281_167


@dataclass
class Step:
    name: str                 # unique, readable: pretrain/vit-single, finetune/low/vit-single-s0
    stage: str                # render | pretrain | finetune | analysis | report
    module: str | None        # python -m <module> (None: the fractalgen console script)
    args: list[str]           # the module's (or fractalgen's) arguments
    marker: str               # exists once the step's output is complete
    needs: list[str] = field(default_factory=list)  # markers of the steps it waits for
    images: int | None = None  # estimated images processed (None: unknown)

    def command(self) -> list[str]:
        """The command run on one machine, in one process."""
        if self.module is None:
            return [_bin("fractalgen"), *self.args]
        return [sys.executable, "-m", self.module, *self.args]


def yaml_value(value) -> str:
    """A value in YAML flow style (one line), so lists, numbers and booleans survive the round trip."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def overrides(values: dict) -> list[str]:
    return [f"{k}={yaml_value(v)}" for k, v in (values or {}).items()]


def count(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


class Plan:
    """The steps of one experiment. `data` maps the names of external datasets (downstream datasets,
    pretraining data such as imagenet) to their paths. `smoke` scales every step down (smoke.py)."""

    def __init__(self, exp: dict, data: dict, out: str, smoke: bool = False, check: bool = True):
        self.exp, self.data, self.out, self.smoke, self.check = exp, data, out, smoke, check
        self.steps: list[Step] = []
        self.runs: list[str] = []  # fine-tuning run folders, for the report
        self.weights: dict = {}    # (job, source) -> model.safetensors of a pretraining
        folders = self._render()
        self._pretrain(folders)
        self._finetune()
        self._analysis()
        self._report()

    # --- render ---------------------------------------------------------------------------------
    def _render(self) -> dict:
        render = self.exp["render"] or {"common": {}, "kinds": {}}
        folders = {}
        for name, own in render["kinds"].items():
            opts = {**render["common"], **{k: v for k, v in own.items() if v is not None}}
            if self.smoke:
                opts = smoke_scale.render_options(opts)
            kind = opts.get("kind") or name  # a named variant renders its kind with its own options
            folder = os.path.join(self.out, "data", name)
            args = ["render", "--kind", kind, "--out", folder, "--no-progress"]
            for key in ("n", "classes", "size", "points", "seed", "shard_size", "workers"):
                if opts.get(key) is not None:
                    args += [f"--{key.replace('_', '-')}", str(opts[key])]
            for key, value in (opts.get("options") or {}).items():
                args += ["--option", f"{key}={yaml_value(value)}"]
            if opts.get("systems"):
                args += ["--systems", self._systems_file(opts["systems"], f"render entry {name}")]
            self.steps.append(Step(f"render/{name}", "render", None, args, os.path.join(folder, "dataset.json"),
                                   images=opts.get("n")))
            folders[name] = (folder, opts.get("n"), kind)
        return folders

    # --- pretrain -------------------------------------------------------------------------------
    def _budget_runs(self, job: dict) -> list[tuple[str, str, int]]:
        """(kind, source, images) of the budget runs a job makes: every budget kind at every count."""
        budget = self.exp["budget"] or {}
        if budget.get("job") != job["name"]:
            return []
        return [(kind, f"{kind}-{count(n)}", n) for kind in budget["kinds"] for n in budget["images"]]

    def _pretrainings(self, job: dict, budget: bool = True) -> list[tuple[str, str, dict]]:
        """(kind, source, overrides) of the pretrainings a job makes: one per kind, then the budget runs
        (when `budget`); with pretraining `seeds`, each of them once per seed (sources like single-p1),
        seed by seed, so that a stopped experiment holds every source at its first seeds."""
        runs = [(kind, kind, {}) for kind in job["kinds"]]
        if budget:
            runs += [(kind, source, {"data.train_samples": n}) for kind, source, n in self._budget_runs(job)]
        if not job["seeds"]:
            return runs
        return [(kind, f"{source}-p{seed}", {**extra, "seed": seed}) for seed in job["seeds"]
                for kind, source, extra in runs]

    def _pretrain(self, folders: dict) -> None:
        """One run per (job, kind), plus the budget runs (the same pretraining at other numbers of
        images, sources like `single-300k`), each once per pretraining seed when the job lists seeds.
        The runs with the most images start first (so the longest does not finish alone at the end);
        the rest keep file order."""
        runs = []
        default_n = ((self.exp["render"] or {}).get("common") or {}).get("n") or 0
        for job in self.exp["pretrain"]:
            for kind, source, extra in self._pretrainings(job):
                run_dir = os.path.join(self.out, "pretrain", f"{job['name']}-{source}")
                config = job["config"].replace("{kind}", folders[kind][2] if kind in folders else kind)
                over = {**job["overrides"], **extra}
                if self.smoke:
                    over.update(smoke_scale.pretrain_overrides(config, over, external=kind not in folders))
                if kind in folders:
                    path, needs = folders[kind][0], [os.path.join(folders[kind][0], "dataset.json")]
                else:
                    path, needs = self._external(kind, f"pretraining job {job['name']}"), []
                marker = os.path.join(run_dir, "model.safetensors")
                images = extra.get("data.train_samples", default_n)
                name = f"pretrain/{job['name']}-{source}"
                cfg = self._checked(name, config, over)
                step = Step(name, "pretrain", "pretrain.main",
                            ["--config", config, "--data", path, "--out", run_dir, "--resume", *overrides(over)], marker, needs,
                            images=_pretrain_images(cfg, folders.get(kind, (None, None))[1]))
                runs.append((images, step))
                self.weights[(job["name"], source)] = marker
        runs.sort(key=lambda run: -run[0])  # stable: file order among equals
        self.steps += [step for _, step in runs]

    def _checked(self, name: str, config: str, over: dict) -> dict:
        """The step's stage config, checked against its schema now: a typo in a regime is one line
        before anything runs, not an error hours into the experiment."""
        if self.check:
            from finetune.config import FinetuneConfig
            from pretrain.config import PretrainConfig

            schema = PretrainConfig if name.startswith("pretrain/") else FinetuneConfig
        else:
            schema = None
        try:
            cfg = load_config(config, overrides(over), schema)
        except UserError as e:
            raise UserError(f"step {name}: {e}") from None
        if self.check and (problem := warmup_problem(cfg)):
            raise UserError(f"step {name}: {problem} (in the regime or job that makes this step)")
        return cfg

    def _systems_file(self, name: str, who: str) -> str:
        """The systems file a render draws its classes from: dataset `name` if it is a file, else its
        systems.json (checked now, not when the render starts)."""
        path = self._external(name, who)
        if os.path.isfile(path):
            return path
        file = os.path.join(path, "systems.json")
        if os.path.isdir(path) and not os.path.isfile(file):
            raise UserError(f"{who} draws its classes from {name}, but {file} does not exist; pass "
                            f"--data {name}= a systems file or a folder holding systems.json")
        return file

    def _external(self, name: str, who: str) -> str:
        if name not in self.data:
            raise UserError(f"{who} needs the {name} dataset: pass --data {name}=PATH")
        return self.data[name]

    # --- finetune -------------------------------------------------------------------------------
    def sources(self, job: dict, regime: str | None = None) -> list[tuple[str, str, str | None]]:
        """(source, --init, the weights it waits for) of a job: scratch first, then its kinds, its
        budget runs (in the budget's regimes) and its published tags."""
        out = [("scratch", "scratch", None)] if job["scratch"] else []
        budget = regime is None or regime in (self.exp["budget"] or {}).get("regimes", [])
        for _, source, _ in self._pretrainings(job, budget):
            out.append((source, self.weights[(job["name"], source)], self.weights[(job["name"], source)]))
        for source, tag in job["published"].items():
            out.append((source, f"timm:{job['model']}.{tag}", None))
        return out

    def _finetune(self) -> None:
        """Every regime, dataset, model, source and seed. A regime's `only` list (patterns such as
        vit-scratch or *-in1k) limits it to those job-source pairs. Each step needs the weights it
        starts from."""
        ft = self.exp["finetune"]
        datasets = ft["datasets"] or {"data": ft["config"]}
        for regime, regime_over in ft["regimes"].items():
            if regime_over is None:  # switched off (e.g. by the quick block)
                continue
            regime_over = dict(regime_over)
            only = regime_over.pop("only", None)
            for dataset, config in datasets.items():
                path = self._external(dataset, "fine-tuning")
                where = os.path.join(self.out, "finetune", *([dataset] if ft["datasets"] else []), regime)
                for job in self.exp["pretrain"]:
                    for source, init, needs in self.sources(job, regime):
                        name = f"{job['name']}-{source}"
                        if only is not None and not any(fnmatch.fnmatchcase(name, p) for p in only):
                            continue
                        for seed in ft["seeds"][:1] if self.smoke else ft["seeds"]:  # smoke: every cell, one seed
                            run_dir = os.path.join(where, f"{name}-s{seed}")
                            # the shared recipe, refined per model (e.g. its lr), then per regime
                            over = {**ft["overrides"], **job["finetune_overrides"], **regime_over, "seed": seed}
                            if init == "scratch":
                                over.update({"model": job["model"]} if job["model"] else {})
                                over.update(job["scratch_overrides"])
                            if self.smoke:
                                over.update(smoke_scale.finetune_overrides(over, job, init))
                            step_name = os.path.relpath(run_dir, self.out)
                            cfg = self._checked(step_name, config, over)
                            self.steps.append(Step(
                                step_name, "finetune", "finetune.main",
                                ["--config", config, "--data", path, "--init", init, "--out", run_dir,
                                 "--resume", *overrides(over)],
                                os.path.join(run_dir, "final.json"), [needs] if needs else [],
                                images=_finetune_images(cfg)))
                            self.runs.append(run_dir)

    # --- analysis and report --------------------------------------------------------------------
    def _analysis(self) -> None:
        analysis = self.exp["analysis"]
        if not analysis:
            return
        for name in analysis["jobs"]:
            job = next(j for j in self.exp["pretrain"] if j["name"] == name)
            out = os.path.join(self.out, "analysis", name)
            args, needs = [], []
            for source, init, weights in self.sources(job):
                args += ["--source", f"{source}={init}"]
                needs += [weights] if weights else []
            if job["model"]:
                args += ["--model", job["model"]]
            if self.smoke:
                args += smoke_scale.analysis_args(job)
            if analysis["images"]:
                args += ["--images", self._external(analysis["images"], "the analysis")]
            self.steps.append(Step(f"analysis/{name}", "analysis", "experiments.vit_analysis",
                                   [*args, "--out", out], os.path.join(out, "attention_distance.png"), needs))

    def _report(self) -> None:
        report_dir = os.path.join(self.out, "report")
        self.steps.append(Step("report", "report", "finetune.report", [*self.runs, "--out", report_dir],
                               os.path.join(report_dir, "report.md"),
                               [os.path.join(run, "final.json") for run in self.runs]))


def _pretrain_images(cfg: dict, rendered_n: int | None) -> int | None:
    """epochs x images per epoch (data.train_samples, else the render's n or ImageNet's train set)."""
    per_epoch = cfg["data"]["train_samples"] or rendered_n or (
        IMAGENET_TRAIN_IMAGES if cfg["data"]["source"] == "imagenet" else None)
    return int(cfg["epochs"] * per_epoch) if per_epoch else None


def _finetune_images(cfg: dict) -> int | None:
    """epochs x training images (few-shot: one pass for the features)."""
    data = cfg["data"]
    classes = {"cifar10": 10, "cifar100": 100 if data["labels"] != "coarse" else 20, "stl10": 10,
               "plant_pathology": 12 if data["mode"] == "12class" else 6}.get(data["format"])
    if data["train_per_class"] and classes:
        per_epoch = data["train_per_class"] * classes
    elif data["format"] == "stl10" and data.get("fold") is not None:
        per_epoch = 1_000
    else:
        per_epoch = TRAIN_IMAGES.get(data["format"])
        if per_epoch and data["format"] == "plant_pathology":
            per_epoch = round(per_epoch * (1 - data["val_fraction"]))
    if not per_epoch:
        return None
    return per_epoch if cfg["mode"] == "few_shot" else int(cfg["epochs"] * per_epoch)


def _bin(name: str) -> str:
    """The console script installed beside this interpreter (the project's venv)."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name
