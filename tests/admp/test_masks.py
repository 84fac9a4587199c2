import torch
from torch import nn

from admp.masks import gated, group_sizes, mask_sparsity, ones_masks
from admp.models import LeNet, ResNetSmall


def test_group_sizes_read_from_batchnorm_widths():
    assert group_sizes(LeNet(), LeNet().channel_groups()) == {"conv1": 32, "conv2": 64}
    sizes = group_sizes(ResNetSmall(), ResNetSmall().channel_groups())
    assert sizes["stream1"] == 16 and sizes["stream3"] == 64 and sizes["stage2.inner"] == 32


def test_gates_scale_bn_outputs():
    model = LeNet().eval()
    x = torch.randn(2, 1, 28, 28)
    seen: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(_module, _inputs, out):
            seen[name] = out.detach().clone()  # returns None: the output is not replaced

        return hook

    model.bn1.register_forward_hook(record("bn1"))  # registered first: sees the raw BN output
    with torch.no_grad():
        model(x)
    raw = seen["bn1"]
    hard = ones_masks({"conv1": 32, "conv2": 64})
    hard["conv1"][:3] = 0.0
    soft = ones_masks({"conv1": 32, "conv2": 64})
    soft["conv1"][5] = 0.5
    with torch.no_grad(), gated(model, model.channel_groups(), hard, soft):
        handle = model.bn1.register_forward_hook(record("gated"))  # runs after the gate
        model(x)
        handle.remove()
    out = seen["gated"]
    assert torch.all(out[:, :3] == 0)
    assert torch.allclose(out[:, 5], raw[:, 5] * 0.5)
    assert torch.allclose(out[:, 6:], raw[:, 6:])


def test_gates_are_removed_after_context():
    model = LeNet().eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        with gated(model, model.channel_groups(), {"conv1": torch.zeros(32), "conv2": torch.zeros(64)}):
            gated_out = model(x)
        after = model(x)
    assert torch.equal(before, after)
    assert not torch.allclose(before, gated_out)


def test_mask_sparsity_counts_below_threshold():
    assert mask_sparsity({"a": torch.tensor([0.1, 0.9]), "b": torch.tensor([0.2, 0.3, 1.0])}) == 3 / 5


def test_gradients_reach_the_masks():
    model = LeNet()
    m = {g: torch.ones(c, requires_grad=True) for g, c in group_sizes(model, model.channel_groups()).items()}
    with gated(model, model.channel_groups(), m):
        nn.functional.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in m.values())
