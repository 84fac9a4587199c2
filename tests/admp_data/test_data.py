import numpy as np
import pytest
import torch

from admp_config.choices import IMAGE_SHIFTS, SENSOR_SHIFTS
from admp_config.sections import DataSpec
from admp_data import partition as part
from admp_data.images import load_image_folder
from admp_data.shifts import ShiftSpec, apply_shift_mix
from admp_data.sources import DataError, load_embedded_digits, load_hapt, load_mnist, load_usps
from admp_data.tasks import build_task


def test_iid_partition_covers_disjointly():
    parts = part.iid_partition(103, 10, np.random.default_rng(0))
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(103))
    assert {len(p) for p in parts} == {10, 11}


def test_dirichlet_partition_covers_and_skews():
    labels = np.repeat(np.arange(10), 100)
    parts = part.dirichlet_partition(labels, 20, 0.1, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    classes_per_device = [len(np.unique(labels[p])) for p in parts]
    assert np.mean(classes_per_device) < 6  # alpha = 0.1: strong label skew
    iid_like = part.dirichlet_partition(labels, 5, 1000.0, np.random.default_rng(0))
    assert min(len(np.unique(labels[p])) for p in iid_like) == 10


def test_group_partition_one_device_per_group():
    groups = np.array([3, 1, 3, 2, 1])
    parts = part.group_partition(groups)
    assert list(parts) == [1, 2, 3]
    assert parts[3].tolist() == [0, 2]


def test_shift_spec_validates():
    with pytest.raises(ValueError, match="severity"):
        ShiftSpec("noise", 7)
    with pytest.raises(ValueError, match="unknown shift"):
        ShiftSpec("fog", 2)


@pytest.mark.parametrize("name", IMAGE_SHIFTS)
def test_image_shifts_keep_shape_range_and_are_seeded(name):
    x = load_embedded_digits().x[:8]
    a = apply_shift_mix(x, [ShiftSpec(name, 3)], torch.Generator().manual_seed(1))
    b = apply_shift_mix(x, [ShiftSpec(name, 3)], torch.Generator().manual_seed(1))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, x)
    mild = apply_shift_mix(x, [ShiftSpec(name, 1)], torch.Generator().manual_seed(1))
    assert (mild - x).abs().mean() < (a - x).abs().mean()  # severity means more shift


@pytest.mark.parametrize("name", SENSOR_SHIFTS)
def test_sensor_shifts(name):
    x = torch.randn(4, 6, 128)
    y = apply_shift_mix(x, [ShiftSpec(name, 2)], torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(x, y)


def test_embedded_digits_layout():
    d = load_embedded_digits()
    assert d.x.shape == (1797, 1, 28, 28) and d.y.max() == 9
    assert float(d.x[:, :, :4].abs().max()) == 0.0  # MNIST-like empty margin


def test_embedded_task_devices_are_deterministic_and_disjoint_by_default():
    spec = DataSpec(num_devices=5)
    task = build_task(spec, seed=3)
    again = build_task(spec, seed=3)
    assert task.num_devices == 5 and task.input_shape == (1, 28, 28)
    d0, d0b = task.device(0), again.device(0)
    assert torch.equal(d0.train.x, d0b.train.x) and d0.mix == d0b.mix and d0.mix
    all_train = np.concatenate(task.train_parts + task.test_parts)
    assert len(np.unique(all_train)) == len(all_train)  # no sample in two places
    other = build_task(spec, seed=4)
    assert [other.mix(i) for i in range(5)] != [task.mix(i) for i in range(5)]


def test_drawn_devices_scale_without_materialising_the_fleet():
    task = build_task(DataSpec(num_devices=10_000, samples_per_device=50), seed=0)
    assert task.train_parts is None and task.num_devices == 10_000
    last = task.device(9_999)
    assert len(last.train) + len(last.test) == 50 and last.mix
    assert torch.equal(
        last.train.x, build_task(DataSpec(num_devices=10_000, samples_per_device=50), 0).device(9_999).train.x
    )


def test_npz_loaders_on_shared_data(shared_data):
    mnist = load_mnist(shared_data / "mnist" / "mnist.npz", "test")
    assert mnist.x.shape == (10000, 1, 28, 28) and mnist.x.dtype == torch.float32
    assert float(mnist.x.max()) <= 1.0 and mnist.y[:5].tolist() == [7, 2, 1, 0, 4]
    usps = load_usps(shared_data / "usps" / "usps.npz", "test")
    assert usps.x.shape == (2007, 1, 28, 28) and len(usps.y) == 2007
    boxed = load_usps(shared_data / "usps" / "usps.npz", "test", layout="box")
    assert float(boxed.x[:, :, :4].abs().max()) == 0.0 and float(boxed.x[:, :, 4:24].max()) > 0.5
    hapt = load_hapt(shared_data / "hapt" / "hapt.npz")
    assert hapt.x.shape == (10017, 6, 128) and set(np.unique(hapt.subject)) == set(range(1, 31))


def test_hapt_task_by_subject(shared_data):
    task = build_task(DataSpec(dataset="hapt", data_dir=str(shared_data), partition="subject"), seed=0)
    assert task.num_devices == 10 and task.num_classes == 6 and task.input_shape == (6, 128)
    assert abs(float(task.source_train.x.mean())) < 0.05  # standardised with source statistics
    assert all(task.mix(i) == [] for i in range(10))  # no synthetic shift on real data by default


def test_mnist_usps_task_dirichlet(shared_data):
    spec = DataSpec(
        dataset="mnist_usps",
        data_dir=str(shared_data),
        num_devices=20,
        partition="dirichlet",
        dirichlet_alpha=0.5,
        max_source=2000,
    )
    task = build_task(spec, seed=0)
    assert len(task.source_train) + len(task.source_val) == 2000
    assert sum(len(p) for p in task.train_parts) == 7291 and sum(len(p) for p in task.test_parts) == 2007


def test_bad_npz_names_the_file(tmp_path):
    bad = tmp_path / "mnist.npz"
    np.savez(bad, x_train=np.zeros((3, 5, 5), np.uint8), y_train=np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"mnist.npz: x_train has shape \(3, 5, 5\)"):
        load_mnist(bad)
    with pytest.raises(DataError, match="missing arrays"):
        load_mnist(bad, "test")
    with pytest.raises(DataError, match="file not found"):
        load_mnist(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable npz"):
        load_usps(tmp_path / "junk.npz")


def test_image_folder_loader(tmp_path):
    from PIL import Image

    for domain, colours in (("amazon", ("red", "blue")), ("webcam", ("red", "blue"))):
        for cls, colour in zip(("bike", "cup"), colours, strict=True):
            (tmp_path / domain / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 30), colour).save(tmp_path / domain / cls / f"{i}.png")
    split, classes, mode = load_image_folder(tmp_path, "amazon", size=16)
    assert mode == "rgb"
    assert classes == ["bike", "cup"] and split.x.shape == (4, 3, 16, 16)
    assert split.y.tolist() == [0, 0, 1, 1]
    assert float(split.x[0, 0].mean()) == pytest.approx(1.0) and float(split.x[2, 2].mean()) == pytest.approx(1.0)
    (tmp_path / "webcam" / "cup" / "broken.jpg").write_text("nope")
    with pytest.raises(DataError, match=r"broken\.jpg: not a readable image"):
        load_image_folder(tmp_path, "webcam", classes=classes)
    with pytest.raises(DataError, match="domain folder not found"):
        load_image_folder(tmp_path, "dslr")


def _digits_file(tmp_path, **arrays):
    x = np.zeros((4, 28, 28), np.uint8)
    y = np.array([0, 1, 2, 3])
    base = {"x_train": x, "y_train": y, "x_test": x, "y_test": y} | arrays
    path = tmp_path / "mnist.npz"
    np.savez(path, **base)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.zeros((0, 28, 28), np.uint8), "y_train": np.zeros(0, np.int64)}, "x_train is empty"),
        ({"y_train": np.array([0, -1, 2, 3])}, "y_train has negative labels"),
        ({"y_train": np.array([0, 1, 2, 10])}, r"y_train has label 10, but the source has 10 classes \(0..9\)"),
        ({"y_train": np.array([0, 1, 2, 255])}, "y_train has label 255"),
        ({"y_train": np.array([0.0, 1.0, 2.0, 3.5])}, "expected 4 integer labels"),
        ({"y_train": np.array([0, 1, 2])}, r"x_train has shape \(4, 28, 28\), expected \(N, 28, 28\) with N = .* = 3"),
        ({"x_train": np.full((4, 28, 28), np.nan, np.float32)}, "x_train holds NaN or infinite values"),
    ],
)
def test_bad_dataset_arrays_name_file_array_and_problem(tmp_path, arrays, message):
    path = _digits_file(tmp_path, **arrays)
    with pytest.raises(DataError, match=message):
        load_mnist(path, "train")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file, not an npz archive"),
        (b"label,pixel\n1,0\n", "not a readable npz file"),
        (b"PK\x03\x04truncated", "not a readable npz file"),
    ],
)
def test_unreadable_dataset_files_are_one_data_error(tmp_path, content, message):
    path = tmp_path / "mnist.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"mnist.npz: {message}"):
        load_mnist(path, "train")


def test_truncated_npz_is_one_data_error(tmp_path):
    path = _digits_file(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"mnist\.npz: not a readable npz file"):
        load_mnist(path, "train")
