"""A user's own data in one npz file (``data.dataset: npz``, ``data.path: FILE.npz``).

Arrays (samples first; a sample may be an image (C, H, W), a window (C, T) or a feature vector (D,)):

- ``x_source`` (N_s, ...), ``y_source`` (N_s,): the labeled cloud data (labels 0..K-1);
- ``x_target`` (N_t, ...): the devices' unlabeled data;
- ``y_target`` (N_t,), optional: its labels, for evaluation only (each device's held-out share);
- ``group_target`` (N_t,), optional: natural devices (a subject, a site), for ``partition: subject``;
- ``x_target_test`` (M, ...), ``y_target_test`` (M,), optional: a labeled target test set, spread
  over the devices (then ``y_target`` may be left out);
- ``class_names`` (K,), optional: strings.

uint8 samples are scaled to [0, 1]; any other numeric type is cast to float32. Every check runs when
the file is read, before any training, and names the array and what is wrong (``DataError``).
``write_npz`` writes the format (``fedadmp export-npz`` turns any built-in dataset into it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from admp_data.sources import DataError, Split, check_labels, check_samples, read_npz

REQUIRED = ("x_source", "y_source", "x_target")
OPTIONAL = ("y_target", "group_target", "x_target_test", "y_target_test", "class_names")
UNLABELED = -1  # the label of a target sample without one (never read: target labels only evaluate)


@dataclass
class NpzData:
    """The arrays of a user's file, checked: source, target pool, optional test set, groups, class names."""

    source: Split
    target: Split  # y = UNLABELED where the file has no y_target
    target_test: Split | None
    groups: np.ndarray | None
    class_names: list[str] | None
    target_labeled: bool  # whether the file has y_target


def _read(path: Path) -> dict[str, np.ndarray]:
    """Every array of the file (no pickles); unknown arrays are an error, so that a typo is not ignored."""
    arrays = read_npz(path)
    missing = [k for k in REQUIRED if k not in arrays]
    unknown = sorted(set(arrays) - set(REQUIRED) - set(OPTIONAL))
    if missing or unknown:
        raise DataError(
            f"{path}: missing arrays {missing}, unknown arrays {unknown}; the format has "
            f"{', '.join(REQUIRED)} and optionally {', '.join(OPTIONAL)}"
        )
    return arrays


def _warn_image_range(path: Path, name: str, x: torch.Tensor) -> None:
    """A warning for images (N, C, H, W) outside [0, 1] by more than its width: the model normalises its
    inputs itself, but the simulated shifts (brightness, contrast, noise) and the devices' contract
    assume pixels / 255. Windows and feature vectors take any scale."""
    if x.dim() != 4:
        return
    low, high = float(x.min()), float(x.max())
    if low < -1.0 or high > 2.0:
        warnings.warn(
            f"{path}: {name} spans [{low:.4g}, {high:.4g}]; images are expected as pixels / 255 in [0, 1]",
            stacklevel=3,
        )


def load_npz(path: str | Path) -> NpzData:
    """Read and check a user's npz file (see the module docstring)."""
    path = Path(path)
    arrays = _read(path)
    x_source = check_samples(path, "x_source", arrays["x_source"])
    y_source = check_labels(path, "y_source", arrays["y_source"], len(x_source))
    if len(x_source) == 0:
        raise DataError(f"{path}: x_source is empty")
    num_classes = int(y_source.max()) + 1
    names = _class_names(path, arrays, num_classes)
    x_target = check_samples(path, "x_target", arrays["x_target"])
    _same_shape(path, "x_target", x_target, x_source)
    for name, x in (("x_source", x_source), ("x_target", x_target)):
        _warn_image_range(path, name, x)
    labeled = "y_target" in arrays
    y_target = (
        check_labels(path, "y_target", arrays["y_target"], len(x_target), num_classes)
        if labeled
        else torch.full((len(x_target),), UNLABELED, dtype=torch.long)
    )
    test = _test_split(path, arrays, x_source, num_classes)
    if not labeled and test is None:
        raise DataError(f"{path}: no target labels to evaluate with: give y_target or x_target_test and y_target_test")
    groups = None
    if "group_target" in arrays:
        g = arrays["group_target"]
        if g.ndim != 1 or len(g) != len(x_target) or g.dtype.kind not in "iu":
            raise DataError(f"{path}: group_target has shape {g.shape}; expected {len(x_target)} integer group ids")
        groups = g.astype(np.int64)
    return NpzData(Split(x_source, y_source), Split(x_target, y_target), test, groups, names, labeled)


def _same_shape(path: Path, name: str, x: torch.Tensor, source: torch.Tensor) -> None:
    if tuple(x.shape[1:]) != tuple(source.shape[1:]):
        raise DataError(
            f"{path}: {name} samples have shape {tuple(x.shape[1:])}, x_source's {tuple(source.shape[1:])}: "
            "every domain must share one sample shape"
        )


def _test_split(path: Path, arrays: dict[str, np.ndarray], x_source: torch.Tensor, num_classes: int) -> Split | None:
    """The optional labeled target test set: both arrays or neither."""
    has = [k for k in ("x_target_test", "y_target_test") if k in arrays]
    if not has:
        return None
    if len(has) == 1:
        raise DataError(f"{path}: {has[0]} without its pair: give both x_target_test and y_target_test")
    x = check_samples(path, "x_target_test", arrays["x_target_test"])
    _same_shape(path, "x_target_test", x, x_source)
    return Split(x, check_labels(path, "y_target_test", arrays["y_target_test"], len(x), num_classes))


def _class_names(path: Path, arrays: dict[str, np.ndarray], num_classes: int) -> list[str] | None:
    if "class_names" not in arrays:
        return None
    names = arrays["class_names"]
    if names.ndim != 1 or names.dtype.kind not in "UO" or len(names) < num_classes:
        raise DataError(
            f"{path}: class_names has shape {names.shape} and dtype {names.dtype}; expected at least "
            f"{num_classes} strings (one per source class)"
        )
    return [str(v) for v in names]


def write_npz(
    path: str | Path,
    source: Split,
    target: Split,
    target_test: Split | None = None,
    groups: np.ndarray | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """Write the format: labeled source, the target pool with its evaluation labels, and the optional parts."""
    arrays: dict[str, np.ndarray] = {
        "x_source": source.x.numpy(),
        "y_source": source.y.numpy(),
        "x_target": target.x.numpy(),
        "y_target": target.y.numpy(),
    }
    if target_test is not None:
        arrays |= {"x_target_test": target_test.x.numpy(), "y_target_test": target_test.y.numpy()}
    if groups is not None:
        arrays["group_target"] = np.asarray(groups, dtype=np.int64)
    if class_names is not None:
        arrays["class_names"] = np.asarray(class_names, dtype=str)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return path
