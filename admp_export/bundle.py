"""What a device runs: the exported bundle of the pruned model, and the device-side BN step.

A run writes ``pruned_model.pt``: the architecture (family, classes, width), the keep masks that
shape the pruned model, and its weights (input normalisation included), loadable with
``weights_only=True``. A device whose run infers with per-device BatchNorm statistics
(``federation.bn_recalibration: local``) applies ``adapt_bn`` to its own unlabeled data once, then
exports its adapted ONNX model (``fedadmp adapt-bn``); the run's reported accuracy is that
model's. ``pruned_model.onnx`` is the model as exported, before any device step.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from admp.augment import InputNorm
from admp.masks import MaskDict
from admp.models import build_model, example_input, groups_of
from admp.surgery import prune_model
from admp.trainer import recalibrate_bn
from admp_data.sources import DataError
from admp_device.infer import MAX_INPUT

BUNDLE_KEYS = ("arch", "num_classes", "width", "keep", "state")


def save_bundle(
    path: Path,
    arch: str,
    num_classes: int,
    width: float,
    keep: MaskDict | None,
    model: nn.Module,
    weight_bits: dict[str, int] | None = None,
) -> Path:
    """Write the pruned model as a weights-only bundle (see module docstring); ``weight_bits``: the
    integer levels each Conv and Linear weight lies on (none: float32), which the device's BN step keeps."""
    bundle = {
        "weight_bits": dict(weight_bits or {}),
        "arch": arch,
        "num_classes": num_classes,
        "width": width,
        "keep": dict(keep or {}),
        "state": model.state_dict(),
        "input_shape": list(example_input(model).shape[1:]),
    }
    torch.save(bundle, path)
    return path


LAYOUTS = {1: "(D,) feature vector", 2: "(C, T) channels x time steps", 3: "(C, H, W) channels x height x width"}


def model_contract(
    model: nn.Module,
    num_classes: int,
    value_range: tuple[float, float],
    device_step: str,
    onnx_file: str,
    preprocessing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a device must know to run the exported model (``pruned_model.json``, read by
    ``admp_device/infer.py``): input and output names, shapes, dtype, the raw value range the model
    was trained on, the source normalisation the model applies itself, the class names, and the
    device step that inference expects (``adapt-bn`` or none), and any ``preprocessing`` the data
    pipeline applies to raw samples before the model (HAPT's standardisation; None for the rest)."""
    shape = list(example_input(model).shape[1:])
    norms = [m for m in model.modules() if isinstance(m, InputNorm)]
    normalisation: dict[str, Any] = {"applied_inside_model": True}
    if norms:
        normalisation |= {"mean": norms[0].mean.tolist(), "std": norms[0].std.tolist()}
        normalisation |= {"grey": norms[0].grey, "per_image": norms[0].per_image}
    return {
        "format": "fedadmp-model-contract/1",
        "model": onnx_file,
        "input": {
            "name": "input",
            "shape": ["batch", *shape],
            "dtype": "float32",
            "layout": LAYOUTS.get(len(shape), f"{len(shape)}-d samples"),
            "value_range": [round(value_range[0], 6), round(value_range[1], 6)],
            "raw": "feed values as recorded (images: 8-bit pixels / 255), after 'preprocessing' where given; "
            "the model applies the source normalisation itself",
        },
        "preprocessing": preprocessing,
        "normalisation": normalisation,
        "output": {"name": "logits", "shape": ["batch", num_classes], "dtype": "float32", "meaning": "argmax = class"},
        "classes": [str(k) for k in range(num_classes)],
        "device_step": device_step,
    }


def load_bundle(path: str | Path) -> nn.Module:
    """The model of a bundle, in eval mode; a missing or foreign file is a ``DataError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model bundle not found")
    try:
        bundle: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in BUNDLE_KEYS if k not in bundle]
        if missing:
            raise KeyError(f"missing {missing}")
        model = build_model(str(bundle["arch"]), int(bundle["num_classes"]), float(bundle["width"]), _shape(bundle))
        if bundle["keep"]:
            model = prune_model(model, groups_of(model), bundle["keep"], example_input(model))
        model.load_state_dict(bundle["state"])
    except Exception as exc:  # unreadable, truncated or not a bundle
        raise DataError(f"{path}: not a FedADMP model bundle ({type(exc).__name__}: {exc})") from exc
    return model.eval()


def bundle_weight_bits(path: str | Path) -> dict[str, int]:
    """The bits each weight of a bundle is stored with in its integer artefact (empty: float32)."""
    bundle: dict[str, Any] = torch.load(Path(path), map_location="cpu", weights_only=True)
    bits = bundle.get("weight_bits") or {}
    return {str(k): int(v) for k, v in bits.items()} if isinstance(bits, dict) else {}


def _shape(bundle: dict[str, Any]) -> tuple[int, ...] | None:
    """The bundle's sample shape; bundles of earlier versions hold only ``in_channels`` (RGB digits)
    or nothing (the family's own shape)."""
    if "input_shape" in bundle:
        return tuple(int(v) for v in bundle["input_shape"])
    if "in_channels" in bundle:
        default = example_input(build_model(str(bundle["arch"]), int(bundle["num_classes"]))).shape[1:]
        return (int(bundle["in_channels"]), *default[1:])
    return None


def adapt_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on the device's unlabeled ``x``."""
    adapted = copy.deepcopy(model)
    recalibrate_bn(adapted, x)
    return adapted.eval()


def read_local_inputs(path: str | Path, key: str = "x") -> torch.Tensor:
    """A device's unlabeled inputs from an npz file (array ``key``, raw values as the model takes them)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            if key not in data:
                raise DataError(f"{path}: no array {key!r} (arrays: {', '.join(data.files)})")
            raw = np.asarray(data[key])
            if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_):
                raise DataError(f"{path}: {key} holds {raw.dtype} values, not numbers")
            x = torch.as_tensor(raw.astype(np.float32))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable npz file ({type(exc).__name__}: {exc})") from exc
    if x.dim() < 2 or len(x) < 2 or not bool(torch.isfinite(x).all()):
        raise DataError(f"{path}: {key} needs at least 2 finite samples, got shape {tuple(x.shape)}")
    if float(x.abs().max()) > MAX_INPUT:
        raise DataError(f"{path}: {key} reaches {float(x.abs().max()):.3g}; no recorded value is that large")
    return x


def quantize_int8(model: Path, out: Path, calibration: np.ndarray, batch: int = 32) -> Path:
    """An int8 copy of an ONNX model (ONNX Runtime's static quantization: QDQ format, per-channel int8
    weights, int8 activations with ranges calibrated on ``calibration``, raw inputs (N, ...) as the
    model takes them, e.g. the device's own unlabeled data). The model is pre-processed (shape
    inference, graph optimisation) first, as ONNX Runtime recommends."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, name: str) -> None:
            self.items = iter([{name: calibration[i : i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    name = onnx.load(str(model)).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            Batches(name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
    return out
