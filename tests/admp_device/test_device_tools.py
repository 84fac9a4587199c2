"""Every bad input to a device tool (``infer``, ``adapt-bn``, ``quantize``) is one line naming the problem,
exit 2, no traceback and nothing written: the cases of issue 24, each by hand."""

import importlib.metadata
import json
import shutil

import numpy as np
import pytest
import torch

from admp.augment import set_input_normalisation
from admp.models import build_model, example_input
from admp_export.bundle import model_contract, save_bundle
from admp_export.formats import export_onnx
from simulations.cli import main as fedadmp


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A run-like folder: pruned_model.pt, pruned_model.onnx and its contract (inputs in [0, 1], 10 classes),
    and 6 good samples with labels."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = build_model("lenet", 10, 0.5).eval()
    set_input_normalisation(model, torch.rand(20, 1, 28, 28))
    save_bundle(folder / "pruned_model.pt", "lenet", 10, 0.5, None, model)
    onnx = export_onnx(model, example_input(model), folder / "pruned_model.onnx")
    (folder / "pruned_model.json").write_text(json.dumps(model_contract(model, 10, (0.0, 1.0), "none", onnx.name)))
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)).numpy()
    return folder, x, np.arange(6) % 10


def _error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _infer(folder, data, *extra):
    return fedadmp(["infer", str(folder / "pruned_model.onnx"), "--data", str(data), *extra])


def test_a_model_that_is_not_onnx_or_empty(model_dir, tmp_path, capsys):
    folder, x, _ = model_dir
    np.savez(tmp_path / "d.npz", x=x)
    for name, content in (("empty.onnx", b""), ("junk.onnx", b"not a model at all")):
        (tmp_path / name).write_bytes(content)
        shutil.copy(folder / "pruned_model.json", tmp_path / name.replace(".onnx", ".json"))
        err = _error(capsys, fedadmp(["infer", str(tmp_path / name), "--data", str(tmp_path / "d.npz")]))
        assert ("empty file" if not content else "not an ONNX model") in err
        out = tmp_path / "q.onnx"
        err = _error(
            capsys, fedadmp(["quantize", str(tmp_path / name), "--data", str(tmp_path / "d.npz"), "--out", str(out)])
        )
        assert name in err and not out.exists()


def test_a_contract_without_input_or_with_a_bad_range(model_dir, tmp_path, capsys):
    folder, x, _ = model_dir
    np.savez(tmp_path / "d.npz", x=x)
    shutil.copy(folder / "pruned_model.onnx", tmp_path / "pruned_model.onnx")
    contract = json.loads((folder / "pruned_model.json").read_text())
    broken = [
        ({k: v for k, v in contract.items() if k != "input"}, "contract.input.shape"),
        (contract | {"input": contract["input"] | {"value_range": [1, 0]}}, "contract.input.value_range"),
        (contract | {"classes": ["a", "b"]}, "contract.classes must list the model's 10 classes"),
    ]
    for terms, needle in broken:
        (tmp_path / "pruned_model.json").write_text(json.dumps(terms))
        assert needle in _error(capsys, _infer(tmp_path, tmp_path / "d.npz"))


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"x": "X", "y": np.arange(5)}, "5 labels for 6 samples"),
        ({"x": "X", "y": np.full(6, 99)}, "labels span 99..99; the model has classes 0..9"),
        ({"x": "X", "y": np.full(6, 0.5)}, "one whole number per sample"),
        ({"x": np.zeros((0, 1, 28, 28), np.float32)}, "no samples"),
        ({"x": np.array([["a"] * 784] * 2).reshape(2, 1, 28, 28)}, "not numbers"),
        ({"x": np.full((2, 1, 28, 28), 1e30, np.float32)}, "inputs reach 1e+30"),
        ({"x": np.full((2, 1, 28, 28), 5.0, np.float32)}, "the contract's value range is [0, 1]"),
    ],
)
def test_bad_samples_and_labels(model_dir, tmp_path, capsys, arrays, needle):
    folder, x, _ = model_dir
    arrays = {k: (x if isinstance(v, str) else v) for k, v in arrays.items()}
    np.savez(tmp_path / "d.npz", **arrays)
    assert needle in _error(capsys, _infer(folder, tmp_path / "d.npz"))


def test_a_small_overshoot_of_the_range_is_a_warning(model_dir, tmp_path, capsys):
    folder, x, _ = model_dir
    np.savez(tmp_path / "d.npz", x=np.clip(x, 0, 1) * 1.05)
    assert _infer(folder, tmp_path / "d.npz") == 0
    assert "warning" in capsys.readouterr().err


def test_unreadable_files_and_bad_options(model_dir, tmp_path, capsys):
    folder, x, _ = model_dir
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)) * 4)
    assert "not a readable UTF-8 CSV" in _error(capsys, _infer(folder, tmp_path / "bin.csv"))
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"this is not a png")
    assert "a.png: not a readable image" in _error(capsys, _infer(folder, images))
    np.savez(tmp_path / "d.npz", x=x)
    assert "--batch must be at least 1" in _error(capsys, _infer(folder, tmp_path / "d.npz", "--batch", "0"))
    missing = tmp_path / "nowhere" / "pred.txt"
    assert "does not exist" in _error(capsys, _infer(folder, tmp_path / "d.npz", "--out", str(missing)))
    assert capsys.readouterr().out == ""  # checked before inference: no result printed, nothing written


def test_adapt_bn_and_quantize_check_before_they_write(model_dir, tmp_path, capsys):
    folder, x, _ = model_dir
    np.savez(tmp_path / "huge.npz", x=np.full((4, 1, 28, 28), 1e30, np.float32))
    out = tmp_path / "adapted.onnx"
    err = _error(
        capsys,
        fedadmp(["adapt-bn", str(folder / "pruned_model.pt"), "--data", str(tmp_path / "huge.npz"), "--out", str(out)]),
    )
    assert "no recorded value is that large" in err and not out.exists()
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 1, 16, 16), np.float32))
    q = tmp_path / "q.onnx"
    err = _error(
        capsys,
        fedadmp(
            ["quantize", str(folder / "pruned_model.onnx"), "--data", str(tmp_path / "wrong.npz"), "--out", str(q)]
        ),
    )
    assert "the model takes (1, 28, 28)" in err and not q.exists()
    np.savez(tmp_path / "d.npz", x=x)
    err = _error(
        capsys,
        fedadmp(
            [
                "adapt-bn",
                str(folder / "pruned_model.pt"),
                "--data",
                str(tmp_path / "d.npz"),
                "--out",
                str(tmp_path / "no" / "a.onnx"),
            ]
        ),
    )
    assert "does not exist" in err


def test_the_command_line_shows_every_option_and_its_version(capsys):
    """``fedadmp infer --help`` lists infer's own options (not a pass-through), ``--version`` the package's."""
    with pytest.raises(SystemExit) as done:
        fedadmp(["infer", "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert all(option in shown for option in ("--data", "--key", "--label-column", "--batch", "--threads", "--out"))
    with pytest.raises(SystemExit):
        fedadmp(["--version"])
    assert capsys.readouterr().out.strip() == f"fedadmp {importlib.metadata.version('fedadmp')}"


def test_weight_only_quantize_writes_integer_codes_and_checks_its_arguments(model_dir, tmp_path, capsys):
    folder, x, _ = model_dir
    out = tmp_path / "w4.onnx"
    for bad in ("1", "9"):
        err = _error(
            capsys, fedadmp(["quantize", str(folder / "pruned_model.onnx"), "--weights", bad, "--out", str(out)])
        )
        assert "--weights" in err and not out.exists()
    err = _error(capsys, fedadmp(["quantize", str(folder / "pruned_model.onnx"), "--out", str(out)]))
    assert "--data" in err and not out.exists()  # static int8 needs calibration inputs
    assert fedadmp(["quantize", str(folder / "pruned_model.onnx"), "--weights", "4", "--out", str(out)]) == 0
    assert "4 bits" in json.loads(out.with_suffix(".json").read_text())["weights"]  # the contract travels along
    np.savez(tmp_path / "d.npz", x=x)
    capsys.readouterr()
    assert fedadmp(["infer", str(out), "--data", str(tmp_path / "d.npz")]) == 0  # the device runs it
    again = tmp_path / "again.onnx"
    err = _error(capsys, fedadmp(["quantize", str(out), "--weights", "2", "--out", str(again)]))
    assert "an integer model already" in err and not again.exists()
