"""FractalDB class search (Kataoka et al.): draw random systems, keep those whose render fills at
least `threshold` of the image.

Candidate k is a pure function of (seed, k), and classes are the accepted candidates in order of k,
so the result does not depend on the number of workers.
"""

import multiprocessing as mp
import sys

from tqdm import tqdm

from .errors import UserError
from .systems import fractaldb_candidate, save_systems

SEARCH_DEFAULTS = {"size": 512, "points": 100_000, "threshold": 0.2}
_CHUNK = 64


def _evaluate(args):
    seed, first, size, points, threshold = args
    found = []
    for k in range(first, first + _CHUNK):
        params, rate = fractaldb_candidate(seed, k, size, points)
        if rate >= threshold:
            found.append((k, params, rate))
    return found


def search(classes: int, seed: int = 0, size: int = 512, points: int = 100_000, threshold: float = 0.2,
           workers: int = 1, progress: bool = True) -> tuple[list, dict]:
    """The first `classes` accepted systems and a description of the search (for the systems file)."""
    if classes <= 0:
        raise UserError(f"--classes must be positive, got {classes}")
    if not 0.0 < threshold < 1.0:
        raise UserError(f"--threshold must be in (0, 1), got {threshold}")
    found, tried = [], 0
    chunks = ((seed, first, size, points, threshold) for first in range(0, 1 << 62, _CHUNK))
    bar = tqdm(total=classes, unit="class", desc="search fractaldb", disable=not progress, file=sys.stderr)
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_evaluate, chunks) if pool else map(_evaluate, chunks)
        for chunk in results:  # imap keeps candidate order, so acceptance order is k order
            tried += _CHUNK
            take = chunk[: classes - len(found)]
            found.extend(take)
            bar.update(len(take))
            bar.set_postfix(accept=f"{len(found) / tried:.1%}")
            if len(found) >= classes:
                break
    finally:
        bar.close()
        if pool:
            pool.terminate()
    info = {"kind": "fractaldb", "classes": classes,
            "search": {"seed": seed, "size": size, "points": points, "threshold": threshold,
                       "candidates_tried": tried, "candidate_ids": [k for k, _, _ in found],
                       "filling_rates": [round(r, 5) for _, _, r in found]}}
    return [p for _, p, _ in found], info


def search_to_file(path: str, classes: int, **kw) -> None:
    systems, info = search(classes, **kw)
    save_systems(path, systems, info)
