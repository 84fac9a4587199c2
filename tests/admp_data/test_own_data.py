"""A user's own data (the generic npz format) and models that follow its sample shape (issue 10)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from admp.masks import group_sizes
from admp.models import build_model, example_input, groups_of
from admp.surgery import prune_model
from admp.teacher import initial_model
from admp_config.base import ConfigError
from admp_config.schema import config_from_overrides
from admp_config.sections import DataSpec
from admp_data.npz import UNLABELED, load_npz
from admp_data.sources import DataError, load_hapt
from admp_data.tasks import arch_for_shape, build_task, load_domains
from admp_export.formats import export_onnx, onnx_max_abs_diff
from server.app import run_federated
from simulations import own_data_examples
from simulations.cli import main
from tests.inprocess_grid import InProcessGrid


def _blobs(n: int, dim: int, classes: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n samples of ``classes`` Gaussian blobs in ``dim`` dims, moved by ``shift`` (a domain shift)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(classes, dim) * 4.0
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.normal(0, 1, (n, dim)) + shift).astype(np.float32), y.astype(np.int64)


def _write(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture
def features_npz(tmp_path) -> Path:
    xs, ys = _blobs(160, 16, 3, 0.0, 0)
    xt, yt = _blobs(120, 16, 3, 0.7, 1)
    return _write(tmp_path / "features.npz", x_source=xs, y_source=ys, x_target=xt, y_target=yt)


def test_a_feature_npz_becomes_a_task_of_feature_vectors_with_an_mlp(features_npz):
    task = build_task(DataSpec(dataset="npz", path=str(features_npz), num_devices=3), seed=0)
    assert task.input_shape == (16,) and task.num_classes == 3 and task.num_devices == 3
    assert task.shift_kinds == ()  # shifts: auto adds no synthetic shift to a user's data
    d = task.device(0)
    assert d.train.x.shape[1:] == (16,) and len(d.test) > 0  # y_target's held-out share evaluates
    assert arch_for_shape(task.input_shape) == "mlp"
    cfg = config_from_overrides(["data.dataset=npz", f"data.path={features_npz}"])
    assert type(initial_model(cfg, task.num_classes, task.input_shape)).__name__ == "FeatureMLP"


def test_an_official_target_test_set_may_stand_in_for_target_labels(tmp_path):
    xs, ys = _blobs(60, 8, 2, 0.0, 0)
    xt, _ = _blobs(40, 8, 2, 0.5, 1)
    xtt, ytt = _blobs(20, 8, 2, 0.5, 2)
    path = _write(tmp_path / "f.npz", x_source=xs, y_source=ys, x_target=xt, x_target_test=xtt, y_target_test=ytt)
    data = load_npz(path)
    assert not data.target_labeled and bool((data.target.y == UNLABELED).all()) and len(data.target_test) == 20
    task = build_task(DataSpec(dataset="npz", path=str(path), num_devices=2), seed=0)
    assert sum(len(task.device(i).test) for i in range(2)) == 20  # the test set spread over the devices


def test_uint8_images_are_scaled_and_groups_make_natural_devices(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 1, 20, 20), dtype=np.uint8)
    y = np.arange(30) % 3
    path = _write(tmp_path / "img.npz", x_source=x, y_source=y, x_target=x, y_target=y, group_target=np.arange(30) % 5)
    data = load_npz(path)
    assert float(data.source.x.max()) <= 1.0 and data.source.x.dtype == torch.float32
    task = build_task(DataSpec(dataset="npz", path=str(path), partition="subject"), seed=0)
    assert task.num_devices == 5 and task.input_shape == (1, 20, 20)


BAD = {
    "missing x_target": ({"x_source": "xs", "y_source": "ys"}, r"missing arrays \['x_target'\]"),
    "typo": ({"x_source": "xs", "y_source": "ys", "x_target": "xt", "y_tgt": "yt"}, r"unknown arrays \['y_tgt'\]"),
    "shapes differ": ({"x_source": "xs", "y_source": "ys", "x_target": "x9", "y_target": "yt"}, r"x_source's \(16,\)"),
    "more classes": (
        {"x_source": "xs", "y_source": "ys", "x_target": "xt", "y_target": "y5"},
        "the source has 3 classes",
    ),
    "half a pair": ({"x_source": "xs", "y_source": "ys", "x_target": "xt", "x_target_test": "xt"}, "without its pair"),
    "no labels": ({"x_source": "xs", "y_source": "ys", "x_target": "xt"}, "no target labels to evaluate with"),
    "nan": ({"x_source": "xnan", "y_source": "ys", "x_target": "xt", "y_target": "yt"}, "NaN or infinite"),
    "1e30": ({"x_source": "xs", "y_source": "ys", "x_target": "xhuge", "y_target": "yt"}, r"x_target reaches 1e\+30"),
    "label count": ({"x_source": "xs", "y_source": "yt", "x_target": "xt", "y_target": "yt"}, "expected 160 integer"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_npz_is_one_clear_error_naming_the_array(tmp_path, case):
    xs, ys = _blobs(160, 16, 3, 0.0, 0)
    xt, yt = _blobs(120, 16, 3, 0.7, 1)
    xnan = xs.copy()
    xnan[3, 2] = np.nan
    xhuge = xt.copy()
    xhuge[7, 1] = 1e30  # a unit or file error: training would scale its weights to it
    pool = {"xs": xs, "ys": ys, "xt": xt, "yt": yt, "x9": xt[:, :9], "y5": np.full(120, 5), "xnan": xnan}
    pool["xhuge"] = xhuge
    arrays, needle = BAD[case]
    path = _write(tmp_path / "bad.npz", **{k: pool[v] for k, v in arrays.items()})
    with pytest.raises(DataError, match=needle):
        load_npz(path)


def test_images_far_outside_pixels_over_255_are_a_warning_not_an_error(tmp_path):
    """Images (N, C, H, W) in [0, 255] as floats: accepted (the model normalises its inputs), with one
    warning naming the array and its span; features of any scale pass silently."""
    rng = np.random.default_rng(0)
    x = (rng.random((30, 1, 8, 8)) * 255).astype(np.float32)
    y = np.arange(30) % 3
    path = _write(tmp_path / "img.npz", x_source=x / 255, y_source=y, x_target=x, y_target=y)
    with pytest.warns(UserWarning, match=r"x_target spans \[0.*, 25\d.*\]; images are expected as pixels / 255"):
        load_npz(path)
    xs, ys = _blobs(60, 8, 2, 0.0, 0)
    features = _write(tmp_path / "f.npz", x_source=xs * 1000, y_source=ys, x_target=xs * 1000, y_target=ys)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_npz(features)


def test_dirichlet_needs_target_labels_and_shifts_must_fit_the_modality(tmp_path, features_npz):
    xs, ys = _blobs(60, 8, 2, 0.0, 0)
    path = _write(tmp_path / "f.npz", x_source=xs, y_source=ys, x_target=xs, x_target_test=xs, y_target_test=ys)
    with pytest.raises(DataError, match="'dirichlet' draws label skew from y_target"):
        build_task(DataSpec(dataset="npz", path=str(path), partition="dirichlet"), seed=0)
    spec = DataSpec(dataset="npz", path=str(features_npz), shifts="always", shift_kinds=["blur"])
    with pytest.raises(DataError, match=r"\['blur'\] do not apply to feature vectors"):
        build_task(spec, seed=0)
    with pytest.raises(ConfigError, match=r"data\.path: required for dataset 'npz'"):
        config_from_overrides(["data.dataset=npz"])


def test_export_npz_writes_a_dataset_that_reads_back_the_same(tmp_path):
    out = tmp_path / "digits.npz"
    assert main(["export-npz", "simulations/scenarios/federated_digits.yaml", "--out", str(out)]) == 0
    spec = config_from_overrides([]).data
    source, target, _, _ = load_domains(spec, seed=0)
    data = load_npz(out)
    assert torch.equal(data.source.x, source.x) and torch.equal(data.target.y, target.y)
    assert data.target_labeled and data.target_test is None


@pytest.mark.parametrize(
    "arch,shape",
    [("lenet", (1, 20, 36)), ("lenet", (3, 28, 28)), ("resnet", (1, 40, 24)), ("cnn1d", (9, 64)), ("mlp", (24,))],
)
def test_every_family_takes_the_datas_shape_and_prunes_and_exports(tmp_path, arch, shape):
    torch.manual_seed(0)
    model = build_model(arch, 5, 0.5, shape).eval()
    assert tuple(example_input(model).shape[1:]) == shape and model(torch.zeros(2, *shape)).shape == (2, 5)
    groups = groups_of(model)
    keep = {g: (torch.arange(n) % 2 == 0).float() for g, n in group_sizes(model, groups).items()}
    pruned = prune_model(model, groups, keep, example_input(model)).eval()
    x = torch.rand(3, *shape)
    assert pruned(x).shape == (3, 5)
    path = export_onnx(pruned, example_input(pruned), tmp_path / f"{arch}.onnx")
    assert onnx_max_abs_diff(path, pruned, x) < 1e-4


@pytest.mark.parametrize(
    "arch,shape,needle",
    [
        ("lenet", (16,), r"lenet takes images \(C, H, W\) of at least 16x16; the data's samples have shape \(16,\)"),
        (
            "lenet",
            (1, 12, 12),
            r"lenet takes images \(C, H, W\) of at least 16x16; the data.s samples have shape \(1, 12, 12\)",
        ),
        ("cnn1d", (1, 28, 28), r"cnn1d takes sensor windows \(C, T\)"),
        ("mlp", (6, 128), r"mlp takes feature vectors \(D,\)"),
    ],
)
def test_a_family_that_cannot_take_the_data_is_refused_before_training(arch, shape, needle):
    with pytest.raises(ValueError, match=needle):
        build_model(arch, 3, 1.0, shape)
    cfg = config_from_overrides([f"model.arch={arch}"])
    with pytest.raises(ConfigError, match="model.arch: " + needle):
        initial_model(cfg, 3, shape)


@pytest.mark.parametrize("kind", ["features", "sensor"])
def test_federated_admp_runs_end_to_end_on_a_users_npz(tmp_path, monkeypatch, flower_task, kind):
    """Feature vectors (16,) with the MLP, sensor windows of 9 channels x 64 steps with the 1-D CNN:
    teacher, mask rounds, merge, fine-tune and the exported ONNX model, through the real ClientApp."""
    monkeypatch.setattr("server.setup.Console", lambda: Console(quiet=True))
    if kind == "features":
        xs, ys = _blobs(160, 16, 3, 0.0, 0)
        xt, yt = _blobs(120, 16, 3, 0.7, 1)
    else:
        rng = np.random.default_rng(0)
        ys, yt = rng.integers(0, 3, 160), rng.integers(0, 3, 120)
        wave = np.sin(np.linspace(0, 6.28, 64))[None, None, :] * np.arange(1, 10)[None, :, None]
        xs = (wave * (ys[:, None, None] + 1) + rng.normal(0, 0.3, (160, 9, 64))).astype(np.float32)
        xt = (wave * (yt[:, None, None] + 1) * 1.2 + rng.normal(0, 0.3, (120, 9, 64))).astype(np.float32)
    path = _write(tmp_path / f"{kind}.npz", x_source=xs, y_source=ys, x_target=xt, y_target=yt)
    data = ["data.dataset=npz", f"data.path={path}", "data.num_devices=3", "teacher.epochs=2", "model.width=0.25"]
    fed = ["federation.clients_per_round=2", "federation.mask_rounds=2", "federation.warmup_rounds=1"]
    fed += ["federation.finetune_rounds=1", "federation.teacher_rounds=0"]
    cfg = config_from_overrides([*data, *fed, "run.threads=2", f"run.out_dir={tmp_path}"])
    run_federated(InProcessGrid(3), cfg, None)
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    expected = {"features": ("mlp", {"fc1", "fc2"}), "sensor": ("cnn1d", {"conv1", "conv2", "conv3"})}[kind]
    assert summary["arch"] == expected[0] and set(summary["student"]["channels"]) == expected[1]
    assert (run / "pruned_model.onnx").is_file() and 0.0 <= summary["student"]["target_acc"] <= 100.0


def _grey_folders(root: Path, n: int = 12) -> Path:
    """Grey images of three shapes: source (dark on light), target and target test (brighter, noisier)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for domain, base, noise in (("studio", 0.2, 0.05), ("field", 0.45, 0.15), ("field_test", 0.45, 0.15)):
        for cls in ("bar", "column", "square"):
            (root / domain / cls).mkdir(parents=True)
            for i in range(n):
                img = np.full((24, 24), 0.9)
                img[{"bar": np.s_[10:14, 2:22], "column": np.s_[2:22, 10:14], "square": np.s_[7:17, 7:17]}[cls]] = base
                img = np.clip(img + rng.normal(0, noise, img.shape), 0, 1)
                Image.fromarray((img * 255).astype(np.uint8), mode="L").save(root / domain / cls / f"{i}.png")
    return root


def test_a_grey_image_folder_stays_grey_and_may_bring_a_labeled_test_folder(tmp_path):
    root = _grey_folders(tmp_path)
    spec = DataSpec(
        dataset="imagefolder", data_dir=str(root), source_domain="studio", target_domain="field",
        target_test_domain="field_test", num_devices=3, image_size=20,
    )  # fmt: skip
    task = build_task(spec, seed=0)
    assert task.input_shape == (1, 20, 20) and task.num_classes == 3
    assert sum(len(task.device(i).test) for i in range(3)) == 36  # the test folder, spread over the devices
    rgb = build_task(spec.model_copy(update={"image_mode": "rgb"}), seed=0)
    assert rgb.input_shape == (3, 20, 20)


@pytest.mark.parametrize(
    "mislay,needle",
    [
        (lambda r: (r / "field" / "stray.png").write_bytes(b""), r"stray\.png: lies directly in the domain folder"),
        (lambda r: (r / "field" / "circle").mkdir(), r"class folders \['circle'\] are not source classes"),
        (lambda r: (r / "field" / "bar" / "notes.txt").write_text("x"), r"notes\.txt: not an image file"),
        (lambda r: (r / "field" / "bar" / "0.png").write_text("x"), r"0\.png: not a readable image"),
    ],
)
def test_mislaid_or_unreadable_files_are_one_clear_error(tmp_path, mislay, needle):
    root = _grey_folders(tmp_path, n=2)
    mislay(root)
    spec = DataSpec(dataset="imagefolder", data_dir=str(root), source_domain="studio", target_domain="field")
    with pytest.raises(DataError, match=needle):
        build_task(spec, seed=0)


def test_federated_admp_runs_end_to_end_on_a_grey_image_folder(tmp_path, monkeypatch, flower_task):
    monkeypatch.setattr("server.setup.Console", lambda: Console(quiet=True))
    root = _grey_folders(tmp_path / "data")
    data = ["data.dataset=imagefolder", f"data.data_dir={root}", "data.source_domain=studio"]
    data += [
        "data.target_domain=field",
        "data.target_test_domain=field_test",
        "data.num_devices=3",
        "data.image_size=20",
    ]
    fed = ["federation.clients_per_round=2", "federation.mask_rounds=2", "federation.warmup_rounds=1"]
    fed += ["federation.finetune_rounds=1", "federation.teacher_rounds=0", "teacher.epochs=2", "model.width=0.25"]
    out = tmp_path / "runs"
    run_federated(InProcessGrid(3), config_from_overrides([*data, *fed, "run.threads=2", f"run.out_dir={out}"]), None)
    (run,) = list(out.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["arch"] == "resnet" and (run / "pruned_model.onnx").is_file()
    import onnxruntime as ort

    session = ort.InferenceSession(str(run / "pruned_model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [1, 20, 20]  # the exported model takes the grey images as given


def test_the_own_data_examples_are_written_in_the_format(tmp_path, shared_data):
    """HAPT as 9 channels x 64 steps: the 6 axes averaged in pairs of steps, then |acc|, |gyro|, |jerk|;
    subjects 21-30 the devices; MNIST -> USPS as 784-d vectors with USPS's official test set."""
    sensor = load_npz(own_data_examples.sensor9(shared_data, tmp_path))
    assert sensor.source.x.shape[1:] == (9, 64) and set(np.unique(sensor.groups)) == set(range(21, 31))
    hapt = load_hapt(shared_data / "hapt" / "hapt.npz")
    first = hapt.x[hapt.subject <= 20][0]  # (6, 128)
    assert torch.allclose(sensor.source.x[0, :6], first.view(6, 64, 2).mean(dim=2), atol=1e-6)
    assert torch.allclose(sensor.source.x[0, 6], first[:3].norm(dim=0).view(64, 2).mean(dim=1), atol=1e-5)
    feats = load_npz(own_data_examples.features(shared_data, tmp_path))
    assert feats.source.x.shape == (10000, 784) and feats.target.x.shape == (7291, 784)
    assert feats.target_test is not None and len(feats.target_test) == 2007


def test_fleet_sizes_the_target_pool_cannot_serve_are_refused_before_training(features_npz, tmp_path):
    with pytest.raises(DataError, match=r"data\.samples_per_device: 300 exceeds the target pool of 120 samples"):
        build_task(DataSpec(dataset="npz", path=str(features_npz), num_devices=3, samples_per_device=300), seed=0)
    xs, ys = _blobs(40, 16, 3, 0.0, 0)
    one = _write(tmp_path / "one.npz", x_source=xs, y_source=ys, x_target=xs[:1], y_target=ys[:1])
    with pytest.raises(
        DataError, match=r"data\.num_devices: 4 devices need at least 4 target samples; the data holds 1$"
    ):
        build_task(DataSpec(dataset="npz", path=str(one), num_devices=4), seed=0)


def test_simulate_without_a_scenario_does_not_carry_the_demo_s_data_settings(features_npz, monkeypatch, capsys):
    """--set data.dataset=npz without a scenario file: the built-in defaults (no samples_per_device of the
    digits demo); without data.dataset: the demo scenario, named."""
    seen = []
    monkeypatch.setattr("simulations.federated.run_federated_simulation", lambda cfg, **_: seen.append(cfg))
    assert main(["simulate", "--set", "data.dataset=npz", "--set", f"data.path={features_npz}"]) == 0
    assert seen[-1].data.samples_per_device == 0 and seen[-1].data.dataset == "npz"
    assert "built-in defaults" in capsys.readouterr().err
    assert main(["simulate", "--set", "federation.mask_rounds=3"]) == 0
    assert seen[-1].data.dataset == "digits" and "federated_digits.yaml" in capsys.readouterr().err
