"""One root seed derives every other: partitions, shifts, init, sampling."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(root: int, *keys: object) -> int:
    """A 63-bit seed that is a pure function of the root seed and a path of keys.

    ``derive_seed(7, "device", 3)`` is stable across runs, platforms and Python hash seeds.
    """
    text = "/".join([str(int(root))] + [str(k) for k in keys])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def torch_generator(root: int, *keys: object) -> torch.Generator:
    """A CPU torch.Generator seeded from ``derive_seed(root, *keys)``."""
    return torch.Generator().manual_seed(derive_seed(root, *keys))


def numpy_rng(root: int, *keys: object) -> np.random.Generator:
    """A numpy Generator seeded from ``derive_seed(root, *keys)``."""
    return np.random.default_rng(derive_seed(root, *keys))


def seed_everything(root: int) -> None:
    """Seed the global RNGs (Python, numpy, torch) for code paths without an explicit generator."""
    seed = derive_seed(root, "global")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
