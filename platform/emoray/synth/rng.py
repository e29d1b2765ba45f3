"""Independent, reproducible random streams of the synthetic corpus: one per
``(seed, *keys)``, so adding trials or subjects never reshuffles the others."""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, *keys: int | str) -> np.random.Generator:
    """An independent random generator for ``(seed, *keys)``.

    Parameters
    ----------
    seed : int
        The corpus seed.
    *keys : int or str
        What the stream is for, e.g. ``("parallel", 3, 12, "eeg")``; strings are hashed
        with CRC-32 so the stream does not depend on Python's hash seed.

    Returns
    -------
    numpy.random.Generator
    """
    entropy = [int(seed)]
    for key in keys:
        entropy.append(zlib.crc32(key.encode()) if isinstance(key, str) else int(key))
    return np.random.default_rng(np.random.SeedSequence(entropy))
