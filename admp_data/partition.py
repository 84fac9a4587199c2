"""Partitioners: split sample indices across devices (IID, Dirichlet label skew, natural group).

All take a ``numpy.random.Generator`` derived from the run seed and return one sorted int64 index
array per device. Label skew uses labels only to *simulate* a fleet's composition; no label ever
enters a device's training step.
"""

from __future__ import annotations

import numpy as np


def iid_partition(num_samples: int, num_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and cut into ``num_parts`` nearly equal parts."""
    if not 1 <= num_parts <= num_samples:
        raise ValueError(f"cannot split {num_samples} samples into {num_parts} parts")
    order = rng.permutation(num_samples)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_parts)]


def sample_device(num_samples: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """One device's own draw of ``count`` distinct pool indices (devices may overlap)."""
    if not 1 <= count <= num_samples:
        raise ValueError(f"cannot draw {count} distinct samples from a pool of {num_samples}")
    return np.sort(rng.choice(num_samples, count, replace=False)).astype(np.int64)


def dirichlet_partition(
    labels: np.ndarray, num_parts: int, alpha: float, rng: np.random.Generator, min_size: int = 2, max_tries: int = 100
) -> list[np.ndarray]:
    """Label skew: each class is spread over devices with proportions ~ Dirichlet(alpha).

    Small alpha gives each device few classes. Redraws (at most ``max_tries``) until every device
    holds at least ``min_size`` samples.
    """
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    labels = np.asarray(labels)
    if num_parts * min_size > len(labels):
        raise ValueError(f"cannot give {num_parts} parts {min_size} samples each from {len(labels)}")
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_parts)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            props = rng.dirichlet(np.full(num_parts, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(
        f"dirichlet(alpha={alpha}) left a device with < {min_size} samples "
        f"after {max_tries} draws; raise alpha or lower the number of devices"
    )


def group_partition(groups: np.ndarray) -> dict[int, np.ndarray]:
    """Natural fleet: one device per distinct group id (e.g. a HAPT subject), sorted by id."""
    groups = np.asarray(groups)
    return {int(g): np.flatnonzero(groups == g).astype(np.int64) for g in np.unique(groups)}


def split_train_test(
    indices: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per-device held-out split: (train indices, test indices), both sorted."""
    order = rng.permutation(indices)
    n_test = round(test_fraction * len(order))
    return np.sort(order[n_test:]), np.sort(order[:n_test])
