"""A real device's own data, named by its node config (never by the server's scenario).

``flower-supernode --node-config 'device-id=3 data-path="/data/local.npz" cache-dir="/var/cache/fedadmp"'``:

- ``data-path``: an npz file with ``x`` (N, *sample shape), the unlabeled samples the device trains
  on, raw as recorded (uint8 is scaled to [0, 1]), and optionally labels for evaluation only:
  ``x_test``/``y_test`` (a labeled test split) or ``y`` (labels of ``x``, then the device is
  evaluated on ``x``, as source-free adaptation is); or an image folder (every image below it,
  resized to the model's input, unlabeled);
- ``test-path`` (optional): an npz with ``x``/``y`` (or ``x_test``/``y_test``) for evaluation;
- ``cache-dir``: where the device keeps the teacher (``clients.device.teacher_store``).

Samples must have the model's shape (the scenario's ``input_shape``); anything else is a
``DataError`` naming the file. A simulated device (no ``data-path``) builds its partition from the
scenario as before.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from admp_data.sources import DataError, Split, check_labels, check_samples, read_npz
from admp_data.tasks import Device
from admp_device.infer import InputError, read_images


def _npz_split(path: Path, shape: tuple[int, ...], num_classes: int, test: bool) -> tuple[Split, Split | None]:
    """(samples, labeled test split or None) of a device's npz file."""
    arrays = read_npz(path)
    key = "x" if "x" in arrays else "x_test" if test and "x_test" in arrays else ""
    if not key:
        raise DataError(f"{path}: no array 'x' (arrays: {', '.join(sorted(arrays))})")
    x = check_samples(path, key, arrays[key])
    if tuple(x.shape[1:]) != shape:
        raise DataError(f"{path}: {key} has samples of shape {tuple(x.shape[1:])}, the model takes {shape}")
    labeled: Split | None = None
    if "x_test" in arrays and "y_test" in arrays and key != "x_test":
        xt = check_samples(path, "x_test", arrays["x_test"])
        if tuple(xt.shape[1:]) != shape:
            raise DataError(f"{path}: x_test has samples of shape {tuple(xt.shape[1:])}, the model takes {shape}")
        labeled = Split(xt, check_labels(path, "y_test", arrays["y_test"], len(xt), num_classes))
    elif (label := "y" if key == "x" else "y_test") in arrays:
        labeled = Split(x, check_labels(path, label, arrays[label], len(x), num_classes))
    return Split(x, torch.full((len(x),), -1, dtype=torch.long)), labeled


@lru_cache(maxsize=4)
def read_local_device(data_path: str, test_path: str, shape: tuple[int, ...], num_classes: int, device: int) -> Device:
    """The device's own data as a ``Device``: unlabeled training samples (labels -1: never read) and a
    labeled test split (empty when the device has no labels)."""
    path = Path(data_path)
    if path.is_dir():
        try:
            x, _ = read_images(path, shape, [])
        except InputError as exc:
            raise DataError(str(exc)) from exc
        train, labeled = Split(torch.from_numpy(x), torch.full((len(x),), -1, dtype=torch.long)), None
    else:
        train, labeled = _npz_split(path, shape, num_classes, test=False)
    if test_path:
        _, labeled = _npz_split(Path(test_path), shape, num_classes, test=True)
    empty = Split(torch.zeros((0, *shape)), torch.zeros(0, dtype=torch.long))
    return Device(device, [], train, labeled if labeled is not None else empty)


def local_device(node_config: dict[str, object], scenario: dict[str, object], device: int) -> Device | None:
    """The node's own data when its config names ``data-path``; None for a simulated device."""
    if not str(node_config.get("data-path", "")):
        return None
    shape = tuple(int(v) for v in np.asarray(scenario["input_shape"]).tolist())
    return read_local_device(
        str(node_config["data-path"]),
        str(node_config.get("test-path", "")),
        shape,
        int(str(scenario["num_classes"])),
        device,
    )
