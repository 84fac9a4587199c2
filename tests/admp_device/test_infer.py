"""Device-side inference (``fedadmp infer`` / ``admp_device/infer.py``) on the exported ONNX model and its
contract: npz, CSV and image-folder inputs, labels, and inputs that do not fit."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from admp.augment import set_input_normalisation
from admp.models import build_model, example_input
from admp_device import infer
from admp_export.bundle import model_contract
from admp_export.formats import export_onnx
from simulations.cli import main as fedadmp


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A LeNet on 1x28x28 with source normalisation (mean 0.25, std 0.5 by construction), its ONNX
    file and contract, and 12 inputs with the labels the PyTorch model predicts for them."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = build_model("lenet", 10, 0.5).eval()
    source = torch.tensor([-0.25, 0.75]).repeat(50).view(100, 1, 1, 1).expand(100, 1, 28, 28)  # mean .25, std ~.5
    set_input_normalisation(model, source)
    onnx = export_onnx(model, example_input(model), folder / "pruned_model.onnx")
    contract = model_contract(model, 10, (0.0, 1.0), "none", onnx.name)
    (folder / "pruned_model.json").write_text(json.dumps(contract))
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(dim=1).numpy()
    return onnx, contract, x.numpy(), y


def test_the_contract_names_what_a_device_feeds_and_gets(exported):
    _, contract, _, _ = exported
    assert contract["input"] | {"layout": None, "raw": None} == {
        "name": "input",
        "shape": ["batch", 1, 28, 28],
        "dtype": "float32",
        "layout": None,
        "value_range": [0.0, 1.0],
        "raw": None,
    }
    assert contract["output"]["shape"] == ["batch", 10] and contract["classes"] == [str(k) for k in range(10)]
    # set_input_normalisation over 100 x 784 values, -0.25 and 0.75 in equal parts: mean 0.25, std 0.5
    assert contract["normalisation"]["mean"] == pytest.approx([0.25])
    assert contract["normalisation"]["std"] == pytest.approx([0.5], abs=1e-4)


def test_infer_on_npz_reports_the_predictions_and_accuracy(exported, tmp_path, capsys):
    onnx, _, x, y = exported
    np.savez(tmp_path / "local.npz", x=x, y=y)
    out = tmp_path / "pred.txt"
    assert fedadmp(["infer", str(onnx), "--data", str(tmp_path / "local.npz"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "12 samples" in printed and "accuracy: 100.00 % (12/12)" in printed and "ms per sample" in printed
    assert out.read_text().split() == [str(int(v)) for v in y]


def test_infer_on_csv_windows_and_an_image_folder(exported, tmp_path, capsys):
    onnx, _, x, y = exported
    rows = np.concatenate([y[:, None].astype(np.float32), x.reshape(12, -1)], axis=1)
    np.savetxt(tmp_path / "w.csv", rows, delimiter=",", header="label," + ",".join(f"p{i}" for i in range(784)))
    assert infer.main([str(onnx), "--data", str(tmp_path / "w.csv"), "--label-column", "0"]) == 0
    assert "accuracy: 100.00 % (12/12)" in capsys.readouterr().out
    # 8-bit images in class folders: the labels are the folder names, pixels / 255 as the loader reads them
    pixels = (x[:, 0] * 255).round().astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, y, strict=True)):
        (tmp_path / "img" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(tmp_path / "img" / str(label) / f"{i}.png")
    assert infer.main([str(onnx), "--data", str(tmp_path / "img")]) == 0
    read, labels = infer.read_inputs(tmp_path / "img", exported[1])
    assert read.shape == (12, 1, 28, 28)  # files in path order: each read image is one of the written ones
    assert all(np.abs(pixels / 255.0 - image[0]).max(axis=(1, 2)).min() < 1e-6 for image in read)
    assert labels is not None and sorted(labels.tolist()) == sorted(y.tolist())


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 1, 16, 16), np.float32)}, "samples of shape (1, 16, 16); the model takes (1, 28, 28)"),
        ({"x": np.full((3, 1, 28, 28), np.nan, np.float32)}, "inputs hold NaN or infinite values"),
        ({"pixels": np.zeros((3, 1, 28, 28), np.float32)}, "no array 'x' (arrays: pixels)"),
    ],
)
def test_inputs_that_do_not_fit_are_one_error(exported, tmp_path, capsys, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    assert infer.main([str(exported[0]), "--data", str(tmp_path / "bad.npz")]) == 2
    assert message in capsys.readouterr().err


def test_an_int8_copy_is_smaller_and_agrees_with_the_float_model(exported, tmp_path, capsys):
    onnx, _, x, y = exported
    np.savez(tmp_path / "calib.npz", x=x)
    out = tmp_path / "model_int8.onnx"
    assert fedadmp(["quantize", str(onnx), "--data", str(tmp_path / "calib.npz"), "--out", str(out)]) == 0
    assert out.stat().st_size < 0.5 * onnx.stat().st_size  # int8 weights: about a quarter of float32
    assert json.loads(out.with_suffix(".json").read_text())["model"] == "model_int8.onnx"
    logits, _, _ = infer.run(infer.open_session(out), x)
    assert (logits.argmax(axis=1) == y).mean() >= 0.75  # 12 samples: at most 3 flipped by rounding


def test_raw_sensor_windows_get_the_contract_s_standardisation(tmp_path):
    """--raw: (x - mean_c) / std_c per channel, as the data pipeline did to the training windows."""
    contract = {
        "input": {"shape": ["batch", 2, 3]},
        "preprocessing": {"kind": "standardise", "mean": [1.0, -2.0], "std": [2.0, 0.5]},
    }
    x = np.array([[[1.0, 3.0, 5.0], [-2.0, -1.5, -3.0]]], np.float32)  # (1, 2, 3)
    np.savez(tmp_path / "w.npz", x=x)
    out, _ = infer.read_inputs(tmp_path / "w.npz", contract, raw=True)
    # channel 0: (1, 3, 5) - 1 = (0, 2, 4), / 2 = (0, 1, 2); channel 1: (0, 0.5, -1) / 0.5 = (0, 1, -2)
    assert out.tolist() == [[[0.0, 1.0, 2.0], [0.0, 1.0, -2.0]]]
    same, _ = infer.read_inputs(tmp_path / "w.npz", contract)  # already preprocessed: as given
    assert np.array_equal(same, x)


def test_hapt_contract_records_its_standardisation(shared_data):
    from admp_config.sections import DataSpec
    from admp_data.tasks import input_preprocessing

    prep = input_preprocessing(DataSpec(dataset="hapt", data_dir=str(shared_data), partition="subject"))
    assert prep is not None and prep["kind"] == "standardise" and len(prep["mean"]) == len(prep["std"]) == 6
    assert all(s > 0 for s in prep["std"]) and input_preprocessing(DataSpec()) is None
