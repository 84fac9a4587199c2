"""Colour and texture shifts (admp.data.colour), RGB digit tasks and RGB models end to end."""

from __future__ import annotations

import pytest
import torch

from admp.config import DataSpec
from admp.data.colour import channel_swap, colour, colour_shift, invert, texture
from admp.data.tasks import build_task
from admp.deploy import load_bundle, save_bundle
from admp.models import build_model, example_input, groups_of
from admp.surgery import prune_model


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


@pytest.mark.parametrize("name", ["colour", "texture", "invert", "channel_swap"])
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
