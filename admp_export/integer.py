"""The integer artefact: an ONNX model whose Conv and Gemm weights are stored as int8 or int4 codes.

Weight-only QDQ: each weight initializer becomes integer codes and per-output-channel float scales,
read by a ``DequantizeLinear`` node (opset 21, which runs int4 in ONNX Runtime); activations stay
float32. The codes come from ``admp.quantize.channel_codes``: for weights a run already projected onto
b-bit levels (BatchNorm folded in multiplies each channel by one factor, which the recovered scale
absorbs) they are exact, so the artefact computes what the run evaluated; for float weights it is
post-training quantization with the clipping scale of least squared error.

Bits 5-8 are stored as int8, 3-4 as int4 (two codes per byte), 2 as int2 (four per byte, opset 25).
The model carries the metadata ``fedadmp.weights`` (what it stores) and ``fedadmp.session_config``
(ONNX Runtime options the device runtime applies: ``session.disable_quant_qdq=1`` folds each weight's
dequantization into a float32 initializer once at load, so inference runs the float kernels and is not
slower than the float model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from admp.quantize import channel_codes, stored_bits
from admp_device.infer import ALLOWED_SESSION_CONFIG, SESSION_CONFIG_KEY

WEIGHT_OPS = ("Conv", "Gemm")
SESSION_CONFIG = ";".join(f"{k}={v}" for k, v in ALLOWED_SESSION_CONFIG.items())
OPSETS = {8: 21, 4: 21, 2: 25}  # the first opset whose DequantizeLinear takes that integer type


def pack_codes(codes: np.ndarray, width: int) -> bytes:
    """Two's-complement codes of ``width`` (2 or 4) bits, 8 / width per byte, the first in the lowest
    bits (ONNX's INT4 / INT2 layout)."""
    per_byte = 8 // width
    flat = codes.astype(np.int8).reshape(-1)
    flat = np.concatenate([flat, np.zeros(-flat.size % per_byte, dtype=np.int8)])
    fields = (flat & ((1 << width) - 1)).astype(np.uint8).reshape(-1, per_byte)
    packed = np.zeros(len(fields), dtype=np.uint8)
    for i in range(per_byte):
        packed |= (fields[:, i] << (i * width)).astype(np.uint8)
    return packed.tobytes()


def weight_initializers(model: Any) -> list[str]:
    """Names of the initializers that are the weight (input 1) of a Conv or Gemm node, graph order."""
    inits = {i.name for i in model.graph.initializer}
    names = [n.input[1] for n in model.graph.node if n.op_type in WEIGHT_OPS and n.input[1] in inits]
    return list(dict.fromkeys(names))


def gemm_is_transposed(model: Any, name: str) -> bool:
    """Whether every Gemm reading ``name`` uses transB=1 (the weight is (out, in): channels on axis 0)."""
    for node in model.graph.node:
        if node.op_type == "Gemm" and node.input[1] == name:
            attrs = {a.name: a.i for a in node.attribute}
            if attrs.get("transB", 0) != 1:
                return False
    return True


def integer_tensors(name: str, weight: np.ndarray, bits: int) -> tuple[Any, Any, int]:
    """The codes initializer (int8, or packed int4 / int2), the scales initializer, and the codes' bytes."""
    from onnx import TensorProto, helper, numpy_helper

    codes, scales = channel_codes(torch.from_numpy(weight.astype(np.float32)), bits)
    codes_np = codes.numpy().astype(np.int8)
    width = stored_bits(bits)
    if width < 8:
        raw = pack_codes(codes_np, width)
        kind = TensorProto.INT4 if width == 4 else TensorProto.INT2
        tensor = helper.make_tensor(f"{name}_int{width}", kind, list(weight.shape), raw, raw=True)
    else:
        raw = codes_np.tobytes()
        tensor = numpy_helper.from_array(codes_np, f"{name}_int8")
    return tensor, numpy_helper.from_array(scales.numpy().astype(np.float32), f"{name}_scale"), len(raw)


def to_integer_onnx(float_model: Path, out: Path, bits: int | dict[str, int]) -> dict[str, object]:
    """Write the integer artefact of ``float_model`` to ``out``; ``bits`` is one width for every weight or
    one per initializer name (``weight_initializers``). Returns what it stored: per weight its bits and
    code bytes, and the model's tensor bytes (codes, scales and the float tensors left)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(float_model))
    names = weight_initializers(model)
    if not names:
        raise ValueError("no float Conv or Gemm weight to quantize (an integer model already?)")
    chosen = {n: bits if isinstance(bits, int) else bits[n] for n in names}
    inits = {i.name: i for i in model.graph.initializer}
    kept = [i for i in model.graph.initializer if i.name not in chosen]
    dequant, layers = [], {}
    for name in names:
        weight = numpy_helper.to_array(inits[name])
        if weight.ndim == 2 and not gemm_is_transposed(model, name):
            raise ValueError(f"{float_model}: Gemm weight {name} is not (out, in); per-channel scales need transB=1")
        codes, scales, size = integer_tensors(name, weight, chosen[name])
        kept += [codes, scales]
        dequant.append(helper.make_node("DequantizeLinear", [codes.name, scales.name], [name], axis=0))
        layers[name] = {"bits": chosen[name], "stored_bits": stored_bits(chosen[name]), "code_bytes": size}
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(dequant + nodes)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, *(OPSETS[stored_bits(b)] for b in chosen.values()))
    widths = sorted({v["bits"] for v in layers.values()})
    description = f"weight-only QDQ, per-channel symmetric codes of {'/'.join(map(str, widths))} bits"
    helper.set_model_props(model, {"fedadmp.weights": description, SESSION_CONFIG_KEY: SESSION_CONFIG})
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return {"weights": description, "layers": layers, "tensor_bytes": initializer_bytes(model)}


def tensor_bytes(path: Path) -> int:
    """Bytes of every initializer of an ONNX model file as stored (int4 / int2 packed): the model's
    storage without the graph's description."""
    import onnx

    return initializer_bytes(onnx.load(str(path)))


def initializer_bytes(model: Any) -> int:
    """``tensor_bytes`` of a loaded model."""
    from onnx import numpy_helper

    return sum(len(i.raw_data) if i.raw_data else numpy_helper.to_array(i).nbytes for i in model.graph.initializer)


def model_tensor_bytes(model: torch.nn.Module) -> int:
    """``tensor_bytes`` of a PyTorch model's ONNX export (BatchNorm folded), e.g. the dense float32
    model a compressed one is measured against."""
    import tempfile

    from admp.models import example_input
    from admp_export.formats import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        return tensor_bytes(export_onnx(model.eval(), example_input(model), Path(tmp) / "model.onnx"))


def onnx_weight_names(float_model: Path, state: dict[str, torch.Tensor], names: list[str]) -> dict[str, str]:
    """Each torch weight's initializer in the exported graph: the one of the same shape whose output
    channels point the same way (|cosine| per channel; folding BatchNorm in scales each channel, so the
    exporter's renamed, folded weights are found by direction). ValueError when two share one."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(float_model))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    arrays = {n: inits[n] for n in weight_initializers(model)}
    mapping = {}
    for name in names:
        w = state[name].detach().reshape(state[name].shape[0], -1).double()
        best, score = "", -1.0
        for onnx_name, array in arrays.items():
            if tuple(array.shape) != tuple(state[name].shape):
                continue
            v = torch.from_numpy(array.astype(np.float64)).reshape(w.shape)
            cos = (w * v).sum(1).abs() / (w.norm(dim=1) * v.norm(dim=1)).clamp_min(1e-12)
            if float(cos.mean()) > score:
                best, score = onnx_name, float(cos.mean())
        mapping[name] = best
    if len(set(mapping.values())) != len(names) or "" in mapping.values():
        raise ValueError(f"{float_model}: the weights {names} do not map one to one onto the graph's")
    return mapping


def export_integer(model: torch.nn.Module, bits: dict[str, int], float_path: Path, out: Path) -> dict[str, object]:
    """Export ``model`` (weights named in ``bits`` already on their levels) to ``float_path``, then its
    integer artefact with each layer's own bits to ``out`` (``to_integer_onnx``)."""
    from admp.models import example_input
    from admp_export.formats import export_onnx

    export_onnx(model, example_input(model), float_path)
    mapping = onnx_weight_names(float_path, model.state_dict(), list(bits))
    return to_integer_onnx(float_path, out, {mapping[n]: b for n, b in bits.items()})
