"""Dataset loaders: embedded digits and the MNIST/USPS/HAPT npz files (a user's image folders:
``admp_data.images``; a user's npz file: ``admp_data.npz``).

Every loader returns float32 tensors ready for the models (images (N, C, H, W) in [0, 1], sensor
windows (N, 6, 128)) and int64 labels. A missing or malformed file raises ``DataError`` naming the
file and what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from admp_config.choices import USPS_LAYOUTS

DIGIT_CLASSES = 10  # MNIST and USPS: the digits 0..9
HAPT_CLASSES = 6  # HAPT windows of the 6 basic activities (the shared file's labels 0..5)


class DataError(ValueError):
    """A data file or folder that cannot be used, with the path and the reason."""


@dataclass
class Split:
    """Samples and labels of one split. For target domains the labels are evaluation-only."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> Split:
        """The samples at ``idx``."""
        index = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.x[index], self.y[index])


def _to_digit_frame(images: torch.Tensor, size: int = 28, digit: int | None = None) -> torch.Tensor:
    """(N, H, W) -> (N, 1, size, size): resize the digit to ``digit`` px and centre-pad to size."""
    x = images.unsqueeze(1).float()
    digit = digit or size
    x = F.interpolate(x, size=(digit, digit), mode="bilinear", align_corners=False)
    pad = (size - digit) // 2
    return F.pad(x, (pad, size - digit - pad, pad, size - digit - pad)).clamp(0.0, 1.0)


def load_embedded_digits() -> Split:
    """scikit-learn's bundled 8x8 handwritten digits (1,797), as 20x20 digits in a 28x28 frame.

    The 4-pixel margin matches MNIST's layout; no file or network access is needed.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0  # (1797, 8, 8) in [0,1]
    return Split(_to_digit_frame(images, 28, 20), torch.as_tensor(bunch.target, dtype=torch.long))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz file, without pickles; a missing, empty, truncated or foreign file is
    one DataError naming it (np.load raises EOFError, BadZipFile, OSError or ValueError for those)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file, not an npz archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise DataError(f"{path}: a single .npy array, not an npz archive of named arrays")
            return {k: data[k] for k in data.files}
    except DataError:
        raise
    except Exception as exc:  # EOFError, zipfile.BadZipFile, OSError, ValueError (pickled or text data)
        raise DataError(f"{path}: not a readable npz file without pickles ({type(exc).__name__}: {exc})") from exc


def _open_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    arrays = read_npz(path)
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing arrays {missing} (has {sorted(arrays)})")
    return {k: arrays[k] for k in keys}


# No pixel (even 0..255), sensor reading or feature comes near this; a value beyond it is a unit or file
# error that training would turn into weights of that size (the device tools refuse the same: admp_device.infer).
MAX_VALUE = 1e6


def check_samples(path: Path, name: str, x: np.ndarray) -> torch.Tensor:
    """Samples (N, ...) as float32, uint8 scaled to [0, 1]; 1 to 3 dims per sample, finite, at least one,
    no magnitude above ``MAX_VALUE``."""
    if x.dtype.kind not in "uif" or x.ndim not in (2, 3, 4):
        raise DataError(
            f"{path}: {name} has shape {x.shape} and dtype {x.dtype}; expected numbers of shape (N, D), "
            "(N, C, T) or (N, C, H, W)"
        )
    if not len(x):
        raise DataError(f"{path}: {name} is empty")
    values = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if not np.isfinite(values).all():
        raise DataError(f"{path}: {name} holds NaN or infinite values")
    largest = float(np.abs(values).max())
    if largest > MAX_VALUE:
        raise DataError(f"{path}: {name} reaches {largest:.3g}; no recorded value is that large (limit {MAX_VALUE:g})")
    return torch.from_numpy(np.ascontiguousarray(values))


def check_labels(path: Path, name: str, y: np.ndarray, n: int, num_classes: int | None = None) -> torch.Tensor:
    """Integer labels (n,) in [0, num_classes) (any non-negative integer when num_classes is None)."""
    if y.ndim != 1 or len(y) != n or y.dtype.kind not in "iu":
        raise DataError(f"{path}: {name} has shape {y.shape} and dtype {y.dtype}; expected {n} integer labels")
    if n and int(y.min()) < 0:
        raise DataError(f"{path}: {name} has negative labels")
    if num_classes is not None and n and int(y.max()) >= num_classes:
        raise DataError(
            f"{path}: {name} has label {int(y.max())}, but the source has {num_classes} classes (0..{num_classes - 1})"
        )
    return torch.from_numpy(y.astype(np.int64))


def _image_npz(path: Path, split: str, hw: int, digit: int | None = None) -> Split:
    arrays = _open_npz(path, (f"x_{split}", f"y_{split}"))
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if x.ndim != 3 or x.shape[1:] != (hw, hw) or len(x) != len(y):
        raise DataError(
            f"{path}: x_{split} has shape {x.shape}, expected (N, {hw}, {hw}) with N = len(y_{split}) = {len(y)}"
        )
    images = check_samples(path, f"x_{split}", x.astype(np.float32)) / 255.0  # 8-bit pixels, whatever the dtype
    labels = check_labels(path, f"y_{split}", y, len(x), DIGIT_CLASSES)
    return Split(_to_digit_frame(images, 28, digit), labels)


def load_mnist(path: Path, split: str = "train") -> Split:
    """MNIST from an npz with x_train/y_train/x_test/y_test (uint8 28x28)."""
    return _image_npz(path, split, 28)


def load_usps(path: Path, split: str = "train", layout: str = "resize") -> Split:
    """USPS from an npz with x_train/y_train/x_test/y_test (uint8 16x16) as 28x28 images.

    ``layout="resize"`` stretches the digit over the whole frame; ``"box"`` puts it in a centred
    20x20 box, the layout of MNIST (a much smaller domain gap, see docs/data.md).
    """
    if layout not in USPS_LAYOUTS:
        raise DataError(f"usps layout must be one of {', '.join(USPS_LAYOUTS)}, got {layout!r}")
    return _image_npz(path, split, 16, 20 if layout == "box" else None)


@dataclass
class SensorData:
    """HAPT-style windows: x (N, 6, 128), y (N,), subject (N,) = natural device id."""

    x: torch.Tensor
    y: torch.Tensor
    subject: np.ndarray


def load_hapt(path: Path) -> SensorData:
    """HAPT windows from an npz with X (N,128,6), y (N,), subject (N,); x is made (N, 6, 128)."""
    arrays = _open_npz(path, ("X", "y", "subject"))
    x = arrays["X"]
    if x.ndim != 3 or x.shape[2] != 6 or not len(x) == len(arrays["y"]) == len(arrays["subject"]):
        raise DataError(f"{path}: X has shape {x.shape}, expected (N, T, 6) matching y and subject")
    xt = check_samples(path, "X", np.ascontiguousarray(x.transpose(0, 2, 1)))
    labels = check_labels(path, "y", arrays["y"], len(x), HAPT_CLASSES)
    subject = check_labels(path, "subject", arrays["subject"], len(x)).numpy()
    return SensorData(xt, labels, subject)


def standardise(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-channel standardisation of (N, C, T) with the mean/std of ``reference`` (the source)."""
    mean = reference.mean(dim=(0, 2), keepdim=True)
    std = reference.std(dim=(0, 2), keepdim=True).clamp_min(1e-6)
    return (x - mean) / std
