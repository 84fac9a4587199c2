"""Device-side inference with an exported FedADMP model: numpy and ONNX Runtime only (Pillow for images).

A device needs this one file, its model (``pruned_model.onnx``, or the ``fedadmp adapt-bn`` output)
and the contract written next to it (``pruned_model.json``: input and output names, shapes, dtype,
value range, the normalisation the model applies itself, class names)::

    python infer.py pruned_model.onnx --data local.npz            # array x (labels y optional)
    python infer.py pruned_model.onnx --data photos/              # image folder (class folders = labels)
    python infer.py pruned_model.onnx --data windows.csv --label-column 0

Inputs are raw values as the device records them (images in [0, 1] after /255, sensor windows as
measured): the source normalisation is inside the model. Prints predictions and, where labels
exist, accuracy; and latency (median of batch-1 runs, and throughput at the chosen batch size).
``fedadmp infer`` runs the same code.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

Labels = np.ndarray | None

MAX_INPUT = 1e6  # larger than any raw pixel (/255) or sensor reading a contract describes
SESSION_CONFIG_KEY = "fedadmp.session_config"  # an integer artefact's runtime options (admp_export.integer)
# weight-only QDQ: fold each weight's dequantization into float32 once at load (float kernels, not slower)
ALLOWED_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class InputError(ValueError):
    """Inputs that do not fit the model's contract, naming the file and the problem."""


def contract_path(model: Path) -> Path:
    """The contract written next to a model: ``pruned_model.onnx`` -> ``pruned_model.json`` (an
    adapted model ``adapted.onnx`` falls back to the ``pruned_model.json`` of its folder)."""
    own = model.with_suffix(".json")
    return own if own.is_file() else model.parent / "pruned_model.json"


def read_contract(model: Path) -> dict[str, Any]:
    """The model's input/output contract (InputError when it is missing or unreadable)."""
    path = contract_path(model)
    if not path.is_file():
        raise InputError(f"{path}: no contract next to the model (written by every FedADMP run)")
    try:
        contract: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable contract ({exc})") from exc
    check_contract(contract, path)
    return contract


def check_contract(contract: Any, path: Path) -> None:
    """InputError unless the contract names an input of shape ["batch", d1, ...] (positive ints), an
    output of shape ["batch", K], and, where given, a value range [low, high] and K class names."""
    if not isinstance(contract, dict):
        raise InputError(f"{path}: the contract is not a JSON object")
    for part in ("input", "output"):
        entry = contract.get(part)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        dims = shape[1:] if isinstance(shape, list) and shape else None
        if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
            raise InputError(f'{path}: contract.{part}.shape must be ["batch", positive sizes...], got {shape!r}')
    value_range = contract["input"].get("value_range")
    if value_range is not None and not (
        isinstance(value_range, list)
        and len(value_range) == 2
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value_range)
        and value_range[0] < value_range[1]
    ):
        raise InputError(f"{path}: contract.input.value_range must be [low, high], got {value_range!r}")
    classes, count = contract.get("classes"), contract["output"]["shape"][1]
    if classes is not None and (not isinstance(classes, list) or len(classes) != count):
        raise InputError(f"{path}: contract.classes must list the model's {count} classes")


def read_inputs(
    path: Path, contract: dict[str, Any], key: str = "x", label_column: int | None = None, raw: bool = False
) -> tuple[np.ndarray, Labels]:
    """(x (N, *sample shape) float32, labels (N,) or None) from an npz, an image folder or a CSV;
    ``raw``: the contract's ``preprocessing`` (HAPT's standardisation) is applied first."""
    shape = tuple(contract["input"]["shape"][1:])  # (C, H, W), (C, T) or (D,)
    if path.is_dir():
        x, y = read_images(path, shape, contract.get("classes") or [])
    elif path.suffix.lower() == ".csv":
        x, y = _csv(path, shape, label_column)
    else:
        x, y = _npz(path, key)
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise InputError(f"{path}: samples of shape {tuple(x.shape[1:])}; the model takes {shape}")
    check_values(x, contract, path)
    if y is not None:
        check_labels(y, len(x), contract["output"]["shape"][1], path)
    prep = contract.get("preprocessing")
    if raw and prep and prep.get("kind") == "standardise":  # per channel, (N, C, ...) samples
        shape = (1, -1) + (1,) * (x.ndim - 2)
        x = (x - np.asarray(prep["mean"]).reshape(shape)) / np.asarray(prep["std"]).reshape(shape)
    return x.astype(np.float32), y


def check_values(x: np.ndarray, contract: dict[str, Any], path: Path) -> None:
    """InputError for no samples, NaN or infinite values, magnitudes no sensor records (above
    ``MAX_INPUT``), or values outside the contract's ``value_range`` by more than its width; a warning
    on stderr for values outside it by less (a device's recording may overshoot a little)."""
    if len(x) == 0:
        raise InputError(f"{path}: no samples")
    if not np.isfinite(x).all():
        raise InputError(f"{path}: inputs hold NaN or infinite values")
    largest = float(np.abs(x).max())
    if largest > MAX_INPUT:
        raise InputError(f"{path}: inputs reach {largest:.3g}; no recorded value is that large (limit {MAX_INPUT:g})")
    value_range = contract["input"].get("value_range")
    if value_range is None:
        return
    low, high = float(value_range[0]), float(value_range[1])
    lowest, highest = float(x.min()), float(x.max())
    if lowest >= low and highest <= high:
        return
    width = high - low
    message = f"{path}: inputs span [{lowest:.4g}, {highest:.4g}]; the contract's value range is [{low:g}, {high:g}]"
    if lowest < low - width or highest > high + width:
        raise InputError(message + " (images: pixels / 255; see the contract's 'raw')")
    print(f"infer: warning: {message}", file=sys.stderr)


def check_labels(y: np.ndarray, samples: int, classes: int, path: Path) -> None:
    """InputError unless there is one integer label per sample, each a class of the model (0..K-1)."""
    if len(y) != samples:
        raise InputError(f"{path}: {len(y)} labels for {samples} samples")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise InputError(f"{path}: labels span {int(y.min())}..{int(y.max())}; the model has classes 0..{classes - 1}")


def _numbers(array: np.ndarray, what: str, path: Path) -> np.ndarray:
    """``array`` as float32, or InputError when it holds no numbers (strings, objects)."""
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise InputError(f"{path}: {what} holds {array.dtype} values, not numbers")
    return array


def _npz(path: Path, key: str) -> tuple[np.ndarray, Labels]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if key not in data.files:
                raise InputError(f"{path}: no array {key!r} (arrays: {', '.join(data.files)})")
            x = _numbers(np.asarray(data[key]), key, path)
            y = _integers(_numbers(np.asarray(data["y"]), "y", path), path) if "y" in data.files else None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable npz file ({type(exc).__name__}: {exc})") from exc
    return (x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)), y


def _integers(labels: np.ndarray, path: Path) -> np.ndarray:
    """Labels as int64, or InputError for fractional ones or a shape other than (N,)."""
    if labels.ndim != 1 or not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
        raise InputError(f"{path}: labels y must be one whole number per sample, got shape {labels.shape}")
    return labels.astype(np.int64)


def _csv(path: Path, shape: tuple[int, ...], label_column: int | None) -> tuple[np.ndarray, Labels]:
    """One sample per row, its values flattened in the model's (C, T) / (D,) order."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable UTF-8 CSV file ({type(exc).__name__})") from None
    rows, labels = [], []
    for number, row in enumerate(lines, 1):
        if not row:
            continue
        try:
            values = [float(v) for v in row]
        except ValueError:
            if number == 1:
                continue  # a header
            raise InputError(f"{path}: row {number} holds a value that is not a number") from None
        if label_column is not None:
            if not -len(values) <= label_column < len(values):
                raise InputError(f"{path}: row {number} has no column {label_column}")
            labels.append(int(values.pop(label_column)))
        rows.append(values)
    size = int(np.prod(shape))
    if not rows or any(len(r) != size for r in rows):
        raise InputError(f"{path}: every row needs {size} values (shape {shape}) besides a label column")
    return np.asarray(rows, np.float32).reshape(-1, *shape), (np.asarray(labels) if labels else None)


def read_images(folder: Path, shape: tuple[int, ...], classes: list[str]) -> tuple[np.ndarray, Labels]:
    """Images of ``folder`` (in class subfolders: labels by the contract's class names; or loose:
    no labels), resized and scaled to [0, 1] as the run's loader did."""
    from PIL import Image

    channels, height, width = shape
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"{folder}: no images")
    images, labels = [], []
    for file in files:
        try:
            with Image.open(file) as img:
                pixels = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
        except (OSError, ValueError) as exc:
            raise InputError(f"{file}: not a readable image ({type(exc).__name__})") from None
        array = np.asarray(pixels, dtype=np.float32) / 255.0
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        parent = file.parent.name
        labels.append(classes.index(parent) if parent in classes else -1)
    y = np.asarray(labels)
    return np.stack(images), (y if (y >= 0).all() and file.parent != folder else None)


def open_session(model: Path, threads: int = 1) -> Any:
    """An ONNX Runtime session of ``model``, or InputError naming the file when it is missing, empty or
    not a model ONNX Runtime can load."""
    import onnxruntime as ort

    if not model.is_file():
        raise InputError(f"{model}: model not found")
    if model.stat().st_size == 0:
        raise InputError(f"{model}: empty file, not an ONNX model")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own errors: invalid protobuf, graph, opset
        raise InputError(f"{model}: not an ONNX model ONNX Runtime can load ({type(exc).__name__})") from None
    entries = session_entries(session.get_modelmeta().custom_metadata_map.get(SESSION_CONFIG_KEY, ""), model)
    if not entries:
        return session
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def session_entries(spec: str, model: Path) -> dict[str, str]:
    """The ONNX Runtime options an integer artefact asks for (``key=value;...`` in its metadata), of
    ``ALLOWED_SESSION_CONFIG`` only: a model file sets nothing else on the device."""
    entries: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        key, _, value = item.partition("=")
        if ALLOWED_SESSION_CONFIG.get(key) != value:
            raise InputError(f"{model}: metadata {SESSION_CONFIG_KEY} asks for {item!r}, which this runtime refuses")
        entries[key] = value
    return entries


def check_output_path(out: Path | None) -> None:
    """InputError unless ``out``'s folder exists and is writable (checked before any work is done)."""
    if out is None:
        return
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{out}: folder {folder} does not exist")
    if out.is_dir() or not os.access(folder, os.W_OK):
        raise InputError(f"{out}: cannot write here")


def check_positive(value: int, option: str) -> None:
    """InputError unless a count option (``--batch``, ``--threads``) is at least 1."""
    if value < 1:
        raise InputError(f"{option} must be at least 1, got {value}")


def run(session: Any, x: np.ndarray, batch: int = 64) -> tuple[np.ndarray, float, float]:
    """(logits (N, K), median ms of one sample alone, samples per second at ``batch``) with ONNX Runtime."""
    name = session.get_inputs()[0].name
    single = []
    for sample in x[: min(len(x), 50)]:
        start = time.perf_counter()
        session.run(None, {name: sample[None]})
        single.append((time.perf_counter() - start) * 1e3)
    start = time.perf_counter()
    logits = np.concatenate([session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])
    rate = len(x) / max(time.perf_counter() - start, 1e-9)
    return logits, float(np.median(single)), rate


def main(argv: list[str] | None = None) -> int:
    """Command line: predictions, accuracy where labels exist, latency (``infer``)."""
    parser = argparse.ArgumentParser(prog="infer", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return infer(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``infer`` (this script's, and ``fedadmp infer``'s)."""
    parser.add_argument("model", type=Path, help="pruned_model.onnx, or a device's adapted model")
    parser.add_argument("--data", type=Path, required=True, help="npz (array x, labels y), image folder or CSV")
    parser.add_argument("--key", default="x", help="the npz array of the inputs (default x)")
    parser.add_argument("--label-column", type=int, default=None, help="CSV: the column holding labels")
    parser.add_argument("--raw", action="store_true", help="apply the contract's preprocessing (HAPT) first")
    parser.add_argument("--batch", type=int, default=64, help="batch size for throughput (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="write one predicted class per line here")


def infer(args: argparse.Namespace) -> int:
    """Predictions, accuracy where labels exist, latency. Every argument, the model, its contract, the
    inputs, the labels and the output folder are checked before inference: a failure is one line on
    stderr and exit 2, with nothing written."""
    try:
        check_positive(args.batch, "--batch")
        check_positive(args.threads, "--threads")
        check_output_path(args.out)
        session = open_session(args.model, args.threads)
        contract = read_contract(args.model)
        if not args.data.exists():
            raise InputError(f"{args.data}: data not found")
        x, y = read_inputs(args.data, contract, args.key, args.label_column, args.raw)
    except InputError as exc:
        print(f"infer: error: {exc}", file=sys.stderr)
        return 2
    logits, single_ms, rate = run(session, x, args.batch)
    pred = logits.argmax(axis=1)
    names = contract.get("classes") or [str(k) for k in range(logits.shape[1])]
    shown = ", ".join(names[int(p)] for p in pred[:20])
    print(f"{len(x)} samples; predictions: {shown}{' ...' if len(x) > 20 else ''}")
    if y is not None:
        print(f"accuracy: {100.0 * float((pred == y).mean()):.2f} % ({int((pred == y).sum())}/{len(y)})")
    print(f"latency: {single_ms:.3f} ms per sample at batch 1; {rate:.0f} samples/s at batch {args.batch}")
    if args.out:
        args.out.write_text("".join(f"{names[int(p)]}\n" for p in pred), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
