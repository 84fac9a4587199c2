"""Mixed precision by hand: the bytes of a layer at each width, the greedy allocation under a budget, and
the sensitivity (the KL of one layer's projection)."""

import pytest
import torch
from torch import nn

from admp.precision import allocate, code_bytes, layer_sensitivity, widths_from
from admp.quantize import project


def test_code_bytes_and_the_widths_a_budget_chooses_from():
    assert code_bytes(100, 2, 8) == 100 + 8 and code_bytes(5, 1, 4) == 3 + 4 and code_bytes(5, 1, 2) == 2 + 4
    assert code_bytes(5, 1, 3) == code_bytes(5, 1, 4)  # 3-bit codes are stored as int4
    assert widths_from(2) == [8, 4, 2] and widths_from(4) == [8, 4] and widths_from(6) == [8]


def test_the_greedy_allocation_by_hand():
    # A: 100 weights, 2 channels (108 / 58 / 33 bytes at 8 / 4 / 2 bits); B: 1000, 4 (1016 / 516 / 266); 10 fixed
    sens = {"A": [0.0, 0.5, 5.0], "B": [0.0, 0.1, 2.0]}
    sizes = {"A": (100, 2), "B": (1000, 4)}
    # 1134 > 600: B 8->4 adds 0.1 for 500 bytes (0.0002/byte) before A's 0.5 for 50 (0.01): 634, still over;
    # B 4->2 adds 1.9 for 250 (0.0076) before A 8->4 (0.01): 384 fits
    assert allocate(sens, sizes, [8, 4, 2], budget=600, fixed=10) == {"A": 8, "B": 2}
    assert allocate(sens, sizes, [8, 4, 2], budget=2000, fixed=10) == {"A": 8, "B": 8}  # fits as it is
    assert allocate(sens, sizes, [8, 4, 2], budget=310, fixed=10) == {"A": 2, "B": 2}  # 10 + 33 + 266 = 309
    with pytest.raises(ValueError, match="no bit-widths reach 300 bytes"):
        allocate(sens, sizes, [8, 4, 2], budget=300, fixed=10)


def test_the_sensitivity_is_the_kl_of_one_layers_projection():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(50, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sums = layer_sensitivity(model, x, ["0.weight", "2.weight"], [8, 2])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # left as it was
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
        changed = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        changed.load_state_dict(before | {"2.weight": project(before["2.weight"], 2)})
        q = torch.softmax(changed(x), 1)
    assert float(sums["2.weight"][1]) == pytest.approx(float((p * (p.log() - q.log())).sum()), rel=1e-4)
    for name in ("0.weight", "2.weight"):
        assert 0 <= float(sums[name][0]) < float(sums[name][1])  # 8 bits disturb less than 2
