"""ADMM weight quantization by hand: the levels, the clipping choice, idempotence, the Z/U/rho steps,
the stages and the penalty."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from admp.quantize import (
    QuantSettings,
    QuantState,
    advance_dual,
    channel_codes,
    level_count,
    project,
    project_weights,
    quantized_weights,
    stage_bits,
    weight_penalty,
)


def test_level_counts_and_their_range():
    assert [level_count(b) for b in (2, 3, 4, 8)] == [1, 3, 7, 127]  # ternary, then 2^(b-1) - 1
    for bad in (1, 9):
        with pytest.raises(ValueError, match="bits must be in"):
            level_count(bad)


def test_max_abs_scale_where_it_has_the_least_error():
    # ternary (q = 1), w = [0.9, -0.3, 0.1, 0]: a = 1 keeps s = 0.9 and codes [1, 0, 0, 0], error 0.09 + 0.01
    # = 0.10; a = 0.95 (s = 0.855) errs 0.102, a = 0.5 (s = 0.45, codes [1, -1, 0, 0]) 0.235: max-abs wins
    codes, scales = channel_codes(torch.tensor([[0.9, -0.3, 0.1, 0.0]]), 2)
    assert codes.tolist() == [[1.0, 0.0, 0.0, 0.0]] and scales.tolist() == pytest.approx([0.9])


def test_clipping_where_it_has_the_least_error():
    # ternary, w = [1, .6, .6, .6]: every code is 1; s = 1 errs 3 * 0.16 = 0.48, s = 0.8 errs 0.16,
    # s = 0.75 0.13, s = 0.7 0.09 + 3 * 0.01 = 0.12 (the least), s = 0.65 0.13: the clip factor 0.7 wins
    w = torch.tensor([[1.0, 0.6, 0.6, 0.6]])
    codes, scales = channel_codes(w, 2)
    assert codes.tolist() == [[1.0, 1.0, 1.0, 1.0]] and scales.tolist() == pytest.approx([0.7])
    assert project(w, 2).flatten().tolist() == pytest.approx([0.7, 0.7, 0.7, 0.7])


def test_channels_have_their_own_scales_and_a_zero_channel_stays_zero():
    w = torch.tensor([[[0.7]], [[-0.35]], [[0.0]]]).expand(3, 2, 1).clone()  # a (3, 2, 1) conv-like weight
    w[0, 1, 0] = 0.1  # 4 bits (q = 7): s = 0.1 makes [0.7, 0.1] exact -> codes [7, 1]
    codes, scales = channel_codes(w, 4)
    assert scales.tolist() == pytest.approx([0.1, 0.05, 1.0])
    assert codes[:, :, 0].tolist() == [[7.0, 1.0], [-7.0, -7.0], [0.0, 0.0]]
    assert torch.equal(project(w, 4)[2], torch.zeros(2, 1))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 8),
    st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=6, max_size=6),
)
def test_projection_is_idempotent_and_reaches_the_top_level(bits, values):
    w = torch.tensor(values).reshape(2, 3)
    once = project(w, bits)
    assert torch.allclose(project(once, bits), once, atol=1e-6)
    codes, _ = channel_codes(w, bits)
    for row, original in zip(codes, w, strict=True):  # every nonzero channel holds a weight at +-q * s
        if float(original.abs().max()) > 0:
            assert float(row.abs().max()) == level_count(bits)


def test_what_is_quantized_and_the_projection_of_a_state():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    names = quantized_weights(model)
    assert names == ["0.weight", "3.weight"]  # biases, BatchNorm stay float
    state = project_weights(model.state_dict(), dict.fromkeys(names, 2))
    for name, value in state.items():
        original = model.state_dict()[name]
        if name in names:
            assert all(len(set(row.abs().flatten().tolist()) - {0.0}) <= 1 for row in value)  # ternary: 0, +-s
        else:
            assert torch.equal(value, original)


def test_admm_steps_by_hand():
    settings_ = QuantSettings(stages=(2,), rounds_per_stage=3, rho0=1.0, rho_gamma=2.0, rho_max=10.0)
    state = QuantState(settings_, {"w": 2})
    state.start_stage({"w": torch.tensor([[1.0, 0.6, 0.6, 0.6]])}, 0)
    assert (
        state.z["w"].flatten().tolist() == pytest.approx([0.7] * 4)
        and state.u["w"].abs().sum() == 0
        and state.rho == 1.0
    )
    assert state.targets()["w"].flatten().tolist() == pytest.approx([0.7] * 4)  # T = Z - U
    w2 = torch.tensor([[0.8, 0.8, 0.0, 0.8]])
    state.step({"w": w2})
    # Z = proj(W + U) = proj([.8, .8, 0, .8]) = max-abs, exact; U = U + W - Z = 0; then rho 1 -> 2
    assert state.z["w"].flatten().tolist() == pytest.approx([0.8, 0.8, 0.0, 0.8]) and state.rho == 2.0
    assert state.u["w"].abs().sum() == pytest.approx(0.0)
    w3 = torch.tensor([[1.0, 0.6, 0.6, 0.6]])
    state.step({"w": w3})
    # Z = proj(w3 + 0) = 0.7 each; U = (w3 - Z) * rho_old / rho_new = [.3, -.1, -.1, -.1] * 2 / 4
    assert state.z["w"].flatten().tolist() == pytest.approx([0.7] * 4)
    assert state.u["w"].flatten().tolist() == pytest.approx([0.15, -0.05, -0.05, -0.05]) and state.rho == 4.0
    assert state.residual({"w": w3}) == pytest.approx(math.sqrt(0.09 + 3 * 0.01) / math.sqrt(1 + 3 * 0.36))
    restored = QuantState(settings_, {"w": 2})
    restored.load_state_dict(state.state_dict())
    assert torch.equal(restored.u["w"], state.u["w"]) and restored.rho == 4.0 and restored.stage == 0
    assert restored.steps == state.steps == 2


def test_consensus_steps_with_the_devices_own_duals_by_hand():
    """Two devices send the same W = [.8, .8, 0, .8] with duals [.1, -.1, 0, 0] and [-.1, .1, 0, 0]: the mean
    of W_k + U_k is W, on the ternary levels (max-abs, exact), so Z = W; the server's U stays zero and its
    targets are Z; rho 1 -> 2. A device then advances its own dual: U_a + W_a - Z = U_a, times 1 / 2."""
    settings_ = QuantSettings(stages=(2,), rounds_per_stage=3, rho0=1.0, rho_gamma=2.0, rho_max=10.0)
    state = QuantState(settings_, {"w": 2})
    state.start_stage({"w": torch.tensor([[1.0, 0.6, 0.6, 0.6]])}, 0)
    w = torch.tensor([[0.8, 0.8, 0.0, 0.8]])
    u_a, u_b = torch.tensor([[0.1, -0.1, 0.0, 0.0]]), torch.tensor([[-0.1, 0.1, 0.0, 0.0]])
    state.step_consensus({"w": ((w + u_a) + (w + u_b)) / 2})
    assert state.z["w"].flatten().tolist() == pytest.approx([0.8, 0.8, 0.0, 0.8]) and state.rho == 2.0
    assert state.steps == 1 and state.u["w"].abs().sum() == 0 and torch.equal(state.targets()["w"], state.z["w"])
    advanced = advance_dual({"w": u_a}, {"w": w}, state.z, 1.0, state.rho)
    assert advanced["w"].flatten().tolist() == pytest.approx([0.05, -0.05, 0.0, 0.0])
    # W_a = [1, .6, .6, .6] against Z = .7 each, U_a = 0, rho 2 -> 4: ([.3, -.1, -.1, -.1]) * 2 / 4
    z = {"w": torch.full((1, 4), 0.7)}
    advanced = advance_dual({"w": torch.zeros(1, 4)}, {"w": torch.tensor([[1.0, 0.6, 0.6, 0.6]])}, z, 2.0, 4.0)
    assert advanced["w"].flatten().tolist() == pytest.approx([0.15, -0.05, -0.05, -0.05])
    state.start_stage({"w": w}, 0)
    assert state.steps == 0 and state.rho == 1.0  # a new stage is a new problem


def test_stages_and_their_bits():
    settings_ = QuantSettings(stages=(8, 4, 2), rounds_per_stage=3, rho0=1.0, rho_gamma=1.2, rho_max=10.0)
    assert [settings_.stage_of(i) for i in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2] and settings_.rounds == 9
    assert stage_bits((8, 4, 2), {"a": 2, "b": 8, "c": 4}, 1) == {"a": 4, "b": 8, "c": 4}  # never below the final


def test_the_penalty_by_hand():
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0]]))
    value = weight_penalty(layer, {"weight": torch.tensor([[0.5, 0.0]])}, rho=2.0)
    assert value.item() == pytest.approx(0.5 * 2.0 * (0.25 + 1.0))  # (rho / 2) * ||W - T||^2
    value.backward()
    assert layer.weight.grad.flatten().tolist() == pytest.approx([1.0, -2.0])  # rho * (W - T)
    assert float(weight_penalty(layer, {"weight": torch.zeros(1, 2)}, rho=0.0)) == 0.0
