"""Device-side inference with an exported FedADMP model: numpy and ONNX Runtime only (Pillow for images).

A device needs this one file, its model (``pruned_model.onnx``, or the ``fedadmp adapt-bn`` output)
and the contract written next to it (``pruned_model.json``: input and output names, shapes, dtype,
value range, the normalisation the model applies itself, class names)::

    python onnx_infer.py pruned_model.onnx --data local.npz            # array x (labels y optional)
    python onnx_infer.py pruned_model.onnx --data photos/              # image folder (class folders = labels)
    python onnx_infer.py pruned_model.onnx --data windows.csv --label-column 0

Inputs are raw values as the device records them (images in [0, 1] after /255, sensor windows as
measured): the source normalisation is inside the model. Prints predictions and, where labels
exist, accuracy; and latency (median of batch-1 runs, and throughput at the chosen batch size).
``fedadmp infer`` runs the same code.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

Labels = np.ndarray | None

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
        return contract
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable contract ({exc})") from exc


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
    if not np.isfinite(x).all():
        raise InputError(f"{path}: inputs hold NaN or infinite values")
    prep = contract.get("preprocessing")
    if raw and prep and prep.get("kind") == "standardise":  # per channel, (N, C, ...) samples
        shape = (1, -1) + (1,) * (x.ndim - 2)
        x = (x - np.asarray(prep["mean"]).reshape(shape)) / np.asarray(prep["std"]).reshape(shape)
    return x.astype(np.float32), y


def _npz(path: Path, key: str) -> tuple[np.ndarray, Labels]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if key not in data.files:
                raise InputError(f"{path}: no array {key!r} (arrays: {', '.join(data.files)})")
            x = np.asarray(data[key])
            y = np.asarray(data["y"]).astype(np.int64) if "y" in data.files else None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable npz file ({type(exc).__name__}: {exc})") from exc
    return (x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)), y


def _csv(path: Path, shape: tuple[int, ...], label_column: int | None) -> tuple[np.ndarray, Labels]:
    """One sample per row, its values flattened in the model's (C, T) / (D,) order."""
    rows, labels = [], []
    with path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if not row:
                continue
            try:
                values = [float(v) for v in row]
            except ValueError:
                if number == 1:
                    continue  # a header
                raise InputError(f"{path}: row {number} holds a value that is not a number") from None
            if label_column is not None:
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
        with Image.open(file) as img:
            pixels = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(pixels, dtype=np.float32) / 255.0
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        parent = file.parent.name
        labels.append(classes.index(parent) if parent in classes else -1)
    y = np.asarray(labels)
    return np.stack(images), (y if (y >= 0).all() and file.parent != folder else None)


def run(model: Path, x: np.ndarray, batch: int = 64, threads: int = 1) -> tuple[np.ndarray, float, float]:
    """(logits (N, K), median ms of one sample alone, samples per second at ``batch``) with ONNX Runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
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
    """Command line: predictions, accuracy where labels exist, latency; exit 2 on bad input."""
    parser = argparse.ArgumentParser(prog="onnx_infer", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="pruned_model.onnx, or a device's adapted model")
    parser.add_argument("--data", type=Path, required=True, help="npz (array x, labels y), image folder or CSV")
    parser.add_argument("--key", default="x", help="the npz array of the inputs (default x)")
    parser.add_argument("--label-column", type=int, default=None, help="CSV: the column holding labels")
    parser.add_argument("--raw", action="store_true", help="apply the contract's preprocessing (HAPT) first")
    parser.add_argument("--batch", type=int, default=64, help="batch size for throughput (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="write one predicted class per line here")
    args = parser.parse_args(argv)
    try:
        if not args.model.is_file():
            raise InputError(f"{args.model}: model not found")
        contract = read_contract(args.model)
        x, y = read_inputs(args.data, contract, args.key, args.label_column, args.raw)
    except InputError as exc:
        print(f"onnx_infer: error: {exc}", file=sys.stderr)
        return 2
    logits, single_ms, rate = run(args.model, x, args.batch, args.threads)
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
