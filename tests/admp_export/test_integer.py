"""The integer artefact: packing by hand, exact codes for projected weights (BatchNorm folded in),
post-training codes for float ones, what ONNX Runtime runs, and what a model file may ask of it."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from admp.models import build_model, example_input
from admp.quantize import project_weights, quantized_weights
from admp_device.infer import InputError, open_session, session_entries
from admp_export.formats import export_onnx
from admp_export.integer import pack_codes, tensor_bytes, to_integer_onnx


def test_int4_and_int2_packing_by_hand():
    # int4: -1 -> 0xF in the low nibble, 2 -> 0x2 in the high one; int2: 1, -1, 0, -2 -> 01, 11, 00, 10
    assert pack_codes(np.array([-1, 2]), 4) == bytes([0x2F])
    assert pack_codes(np.array([1, -1, 0, -2]), 2) == bytes([0b10_00_11_01])
    assert pack_codes(np.array([3]), 4) == bytes([0x03])  # an odd count is padded with a zero code
    # ONNX's own reader unpacks what pack_codes wrote (odd counts padded)
    codes = np.array([-8, -3, 0, 5, 7, -1, 2], dtype=np.int8)
    int4 = helper.make_tensor("a", TensorProto.INT4, [7], pack_codes(codes, 4), raw=True)
    assert numpy_helper.to_array(int4).tolist() == codes.tolist()
    ternary = np.array([-1, 0, 1, 1, -2], dtype=np.int8)
    int2 = helper.make_tensor("b", TensorProto.INT2, [5], pack_codes(ternary, 2), raw=True)
    assert numpy_helper.to_array(int2).tolist() == ternary.tolist()


def _model_with_bn_statistics() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("lenet", 10, 0.5)
    model.train()
    model(torch.rand(32, *example_input(model).shape[1:]))  # BatchNorm statistics that are not 0 / 1
    return model.eval()


@pytest.mark.parametrize("bits, kind", [(8, TensorProto.INT8), (4, TensorProto.INT4), (2, TensorProto.INT2)])
def test_projected_weights_are_exact_in_onnx_runtime(tmp_path, bits, kind):
    model = _model_with_bn_statistics()
    names = quantized_weights(model)
    model.load_state_dict(project_weights(model.state_dict(), dict.fromkeys(names, bits)))
    float_path = export_onnx(model, example_input(model), tmp_path / "float.onnx")
    stored = to_integer_onnx(float_path, tmp_path / "int.onnx", bits)
    graph = onnx.load(str(tmp_path / "int.onnx"))
    codes = [i for i in graph.graph.initializer if i.name.endswith(f"_int{8 if bits == 8 else bits}")]
    assert len(codes) == len(names) == 4 and all(i.data_type == kind for i in codes)
    x = torch.rand(16, *example_input(model).shape[1:])
    (out,) = open_session(tmp_path / "int.onnx").run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert np.abs(out - model(x).numpy()).max() < 1e-4  # the folded BN is absorbed by the scales
    weights = sum(model.state_dict()[n].numel() for n in names)
    assert sum(v["code_bytes"] for v in stored["layers"].values()) == pytest.approx(
        weights * bits / 8,
        abs=4,  # 8, 4 and 2 bits are stored as such
    )
    assert stored["tensor_bytes"] == tensor_bytes(tmp_path / "int.onnx") < tensor_bytes(float_path)


def test_float_weights_get_post_training_codes_and_an_integer_model_is_refused(tmp_path):
    model = _model_with_bn_statistics()
    float_path = export_onnx(model, example_input(model), tmp_path / "float.onnx")
    to_integer_onnx(float_path, tmp_path / "int8.onnx", 8)
    x = torch.rand(16, *example_input(model).shape[1:])
    (out,) = open_session(tmp_path / "int8.onnx").run(None, {"input": x.numpy()})
    with torch.no_grad():
        reference = model(x).numpy()
    assert 0 < np.abs(out - reference).max() < 0.05 * np.abs(reference).max()  # rounded, close at 8 bits
    with pytest.raises(ValueError, match="no float Conv or Gemm weight"):
        to_integer_onnx(tmp_path / "int8.onnx", tmp_path / "again.onnx", 4)


def test_a_model_file_sets_only_the_allowed_runtime_option(tmp_path):
    assert session_entries("session.disable_quant_qdq=1", tmp_path) == {"session.disable_quant_qdq": "1"}
    assert session_entries("", tmp_path) == {}
    for hostile in ("session.load_model_format=ORT", "session.disable_quant_qdq=0"):
        with pytest.raises(InputError, match="refuses"):
            session_entries(hostile, tmp_path)


def test_mixed_bits_map_onto_the_folded_graph_and_their_bytes_are_the_allocations(tmp_path):
    from admp.precision import code_bytes
    from admp_export.integer import export_integer, onnx_weight_names

    model = _model_with_bn_statistics()
    names = quantized_weights(model)
    bits = dict(zip(names, [8, 2, 4, 8], strict=True))
    model.load_state_dict(project_weights(model.state_dict(), bits))
    stored = export_integer(model, bits, tmp_path / "float.onnx", tmp_path / "mixed.onnx")
    mapping = onnx_weight_names(tmp_path / "float.onnx", model.state_dict(), names)
    assert mapping["fc1.weight"] == "fc1.weight" and len(set(mapping.values())) == 4  # conv weights are renamed
    assert {mapping[n]: b for n, b in bits.items()} == {k: v["bits"] for k, v in stored["layers"].items()}
    state = model.state_dict()
    fixed = tensor_bytes(tmp_path / "float.onnx") - sum(4 * state[n].numel() for n in names)
    planned = fixed + sum(code_bytes(state[n].numel(), state[n].shape[0], b) for n, b in bits.items())
    assert stored["tensor_bytes"] == planned  # what the allocation counts is what the file stores
    x = torch.rand(8, *example_input(model).shape[1:])
    (out,) = open_session(tmp_path / "mixed.onnx").run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert np.abs(out - model(x).numpy()).max() < 1e-4
