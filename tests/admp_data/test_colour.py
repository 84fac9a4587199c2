"""Colour and texture shifts (admp_data.colour), RGB digit tasks and RGB models end to end."""

from __future__ import annotations

import pytest
import torch

from admp.augment import photometric_applies, randomise_appearance
from admp.models import build_model, example_input, groups_of
from admp.surgery import prune_model
from admp_config.sections import DataSpec
from admp_data.colour import blend, channel_swap, colour, colour_shift, invert, texture, value_noise
from admp_data.tasks import build_task, default_shift_kinds
from admp_export.bundle import load_bundle, save_bundle


def _digit(channels: int = 3) -> torch.Tensor:
    """(1, C, 8, 8): a black image with a white 2x4 stroke in the middle."""
    x = torch.zeros(1, channels, 8, 8)
    x[..., 3:5, 2:6] = 1.0
    return x


def test_invert_and_channel_swap_by_hand():
    x = torch.stack([torch.full((2, 2), v) for v in (0.1, 0.5, 0.9)]).unsqueeze(0)  # (1, 3, 2, 2)
    assert torch.allclose(invert(x)[0, :, 0, 0], torch.tensor([0.9, 0.5, 0.1]))
    swapped = channel_swap(x, torch.Generator().manual_seed(0))[0, :, 0, 0].tolist()
    assert sorted(swapped) == pytest.approx([0.1, 0.5, 0.9]) and swapped != pytest.approx([0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="needs 3-channel images"):
        channel_swap(torch.zeros(1, 1, 2, 2), torch.Generator())


def test_colour_paints_background_and_strokes_in_two_device_colours():
    gen = torch.Generator().manual_seed(3)
    out = colour(_digit(), 3, gen)
    bg, fg = out[0, :, 0, 0], out[0, :, 3, 3]
    assert torch.allclose(out[0, :, 7, 7], bg) and torch.allclose(out[0, :, 4, 5], fg)  # two colours only
    assert float((fg - bg).abs().min()) >= 0.6 * (1 - 0.12 * 3) * 0.5 - 1e-6  # contrast kept per channel
    again = colour(_digit(), 3, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)  # the device's colours come from its generator


def test_texture_changes_the_background_not_the_strokes():
    x = _digit()
    out = texture(x, 4, torch.Generator().manual_seed(1))
    assert torch.equal(out[..., 3:5, 2:6], x[..., 3:5, 2:6])  # g = 1 on the stroke
    background = out[0, :, :3, :]
    assert float(background.std()) > 0.01 and float(background.max()) <= 0.15 * 4 + 1e-6  # blend weight 0.6


@pytest.mark.parametrize("name", ["colour", "texture", "blend", "invert", "channel_swap"])
def test_colour_shifts_keep_shape_and_range(name):
    x = torch.rand(5, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    out = colour_shift(x, name, 5, torch.Generator().manual_seed(2))
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)


def test_rgb_digit_task_gives_each_device_its_colours_and_models_take_three_channels(tmp_path):
    spec = DataSpec(dataset="digits", rgb=True, num_devices=3, shifts="always", shift_kinds=["colour"])
    task = build_task(spec, seed=0)
    assert task.source_train.x.shape[1:] == (3, 28, 28)
    assert torch.equal(task.source_train.x[:, 0], task.source_train.x[:, 2])  # the source stays grey
    corners = [task.device(i).train.x[0, :, 0, 0] for i in range(3)]
    assert not torch.allclose(corners[0], corners[1])  # each device has its own background colour
    model = build_model("lenet", 10, 0.25, (3, 28, 28))
    assert example_input(model).shape == (1, 3, 28, 28) and model(task.device(0).train.x[:4]).shape == (4, 10)
    sizes = {g: model.get_submodule(bns[0]).num_features for g, bns in groups_of(model).items()}
    keep = {g: (torch.arange(c) % 2 == 0).float() for g, c in sizes.items()}  # every other channel
    pruned = prune_model(model, groups_of(model), keep, example_input(model)).eval()
    reloaded = load_bundle(save_bundle(tmp_path / "b.pt", "lenet", 10, 0.25, keep, pruned))
    x = torch.rand(2, 3, 28, 28)
    assert torch.allclose(reloaded(x), pruned(x), atol=1e-6)


def test_rgb_is_for_digit_datasets_only():
    with pytest.raises(Exception, match="rgb"):
        DataSpec(dataset="hapt", data_dir="/x", rgb=True)


def test_blend_is_the_absolute_difference_with_a_texture_in_the_device_palette():
    """MNIST-M's |texture - x|: a black image gives the texture itself, a white one its negative, and the
    same device generator state gives the same texture."""
    black, white = torch.zeros(2, 3, 16, 16), torch.ones(2, 3, 16, 16)
    tex = blend(black, 3, torch.Generator().manual_seed(4))
    assert torch.allclose(blend(white, 3, torch.Generator().manual_seed(4)), 1 - tex)
    assert float(tex.std()) > 0.02 and float(tex.min()) >= 0 and float(tex.max()) <= 1
    noise = value_noise((3, 2, 16, 16), 4, torch.Generator().manual_seed(0))
    assert noise.amin(dim=(2, 3)).flatten().tolist() == pytest.approx([0.0] * 6, abs=1e-6)  # each spans [0, 1]
    assert noise.amax(dim=(2, 3)).flatten().tolist() == pytest.approx([1.0] * 6, abs=1e-6)
    assert "blend" not in default_shift_kinds((3, 28, 28)) and "colour" in default_shift_kinds((3, 28, 28))


def test_the_source_recipe_gives_colour_images_random_looks_and_leaves_grey_tasks_alone():
    """teacher.photometric auto: only (N, 3, H, W); each image gets its own look, in [0, 1], seeded."""
    x = _digit().repeat(64, 1, 1, 1)
    out = randomise_appearance(x, torch.Generator().manual_seed(0))
    again = randomise_appearance(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    corners = {tuple(round(v, 3) for v in out[i, :, 0, 0].tolist()) for i in range(64)}
    assert len(corners) > 20  # backgrounds differ from image to image
    kept = [i for i in range(64) if torch.equal(out[i], x[i])]
    assert 4 <= len(kept) <= 30  # a quarter keep their look (1/4 kept, less the inverted and grey ones)
    assert photometric_applies("auto", x) and not photometric_applies("auto", torch.zeros(4, 1, 8, 8))
    assert not photometric_applies("auto", torch.zeros(4, 3, 50)) and not photometric_applies("never", x)
    assert photometric_applies("always", torch.zeros(4, 1, 8, 8)) and not photometric_applies(
        "always", torch.zeros(4, 9)
    )


def test_mnist_mnist_halves_the_official_test_set_and_gives_each_device_its_look(shared_data):
    spec = DataSpec(
        dataset="mnist_mnist", data_dir=str(shared_data), rgb=True, shifts="always", shift_kinds=["blend"],
        num_devices=4, max_source=200,
    )  # fmt: skip
    task = build_task(spec, seed=0)
    pool = sum(len(task.device(i).train) for i in range(4))
    held_out = sum(len(task.device(i).test) for i in range(4))
    assert pool == held_out == 5000 and task.source_train.x.shape[1] == 3
    first = [float(task.device(i).train.x[:, :, 0, 0].mean()) for i in range(4)]
    assert len({round(v, 3) for v in first}) == 4  # every device its own background
