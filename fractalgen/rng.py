"""Seeding: every random draw is a pure function of (dataset seed, purpose, index).

No global RNG state is used anywhere. Python-side draws use a NumPy Generator built from a
SeedSequence of integers; numba kernels receive a 64-bit seed taken from that Generator and run
their own counter-free xorshift stream (see kernels.py).
"""

import zlib

import numpy as np


def _tag(name: str) -> int:
    # Stable across Python runs (unlike hash()).
    return zlib.crc32(name.encode())


def generator(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A Generator that depends only on (seed, purpose, keys)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), _tag(purpose), *map(int, keys)])))


def kernel_seed(rng: np.random.Generator) -> int:
    """A non-zero 64-bit seed for a numba kernel stream."""
    return int(rng.integers(1, 2**63 - 1))
