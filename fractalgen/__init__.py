"""fractalgen: formula-driven image datasets (FractalDB, Single- and Multi-Instance fractals).

A library with no knowledge of training: render samples on the fly with `render_sample`, or write
webdataset shards plus a dataset card with `render_dataset` / the `fractalgen` command.
"""

__version__ = "0.1.0"

from .card import load_card  # noqa: E402
from .errors import UserError  # noqa: E402
from .kinds import KINDS, DatasetSpec, Sample, render_sample  # noqa: E402
from .writer import render_dataset  # noqa: E402

__all__ = ["KINDS", "DatasetSpec", "Sample", "UserError", "load_card", "render_dataset", "render_sample", "__version__"]
