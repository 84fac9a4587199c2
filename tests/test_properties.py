"""Property-based tests (hypothesis) beside the hand-written cases: reply validation, checkpoint digests,
config parsing, the device tools' readers and the fleet's keep set. Each property says what must hold
for every input the strategy draws, not for the few a person thought of."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from admp.admm import keep_count
from admp.importance import fisher_keep
from admp_config.base import ConfigError
from admp_config.schema import config_from_overrides
from admp_device import infer
from server.resume import state_digest
from strategies.aggregation import MAX_ABS, ReplyError, check_arrays

FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = st.sampled_from([np.float32, np.float64, np.float16])
INTS = st.sampled_from([np.int64, np.int32, np.uint8])
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # float16 of 1e7: inf, on purpose
@FEW
@given(arrays(FLOATS, SHAPES, elements=st.floats(width=16) | st.floats(-1e7, 1e7, width=32)) | arrays(INTS, SHAPES))
def test_check_arrays_accepts_exactly_the_sane_arrays_and_never_crashes(value):
    """A reply array passes iff it is float32 of the declared shape with finite values within MAX_ABS; every
    other case is a ReplyError (nothing else may escape into the server's round)."""
    tensor = torch.from_numpy(np.array(value, copy=True))
    expected = {"w": tuple(value.shape)}
    sane = tensor.dtype == torch.float32 and (
        tensor.numel() == 0 or (bool(torch.isfinite(tensor).all()) and float(tensor.abs().max()) <= MAX_ABS)
    )
    if sane:
        check_arrays({"w": tensor}, expected, "reply")
    else:
        with pytest.raises(ReplyError):
            check_arrays({"w": tensor}, expected, "reply")
    with pytest.raises(ReplyError):  # a key nobody asked for is never taken
        check_arrays({"w": tensor, "extra": tensor}, expected, "reply")


@FEW
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20),
    st.integers(0, 19),
    st.floats(1e-3, 10.0),
)
def test_a_checkpoint_digest_changes_with_any_weight(values, index, delta):
    state = {"phase": "kd", "round": 3, "student": {"w": torch.tensor(values)}}
    before = state_digest(state)
    assert state_digest({"round": 3, "student": {"w": torch.tensor(values)}, "phase": "kd"}) == before  # key order
    changed = torch.tensor(values)
    changed[index % len(values)] += delta
    assert state_digest(state | {"student": {"w": changed}}) != before
    assert state_digest(state | {"round": 4}) != before


KEYS = st.sampled_from(
    [
        "admp.prune_ratio",
        "admp.keep_init",
        "admp.fisher_steps",
        "admp.merge_recovery",
        "federation.mask_rounds",
        "federation.warmup_rounds",
        "federation.strategy",
        "data.num_devices",
        "data.dataset",
        "teacher.epochs",
        "admp.nonexistent",
        "nosection.key",
    ]
)
VALUES = st.one_of(
    st.integers(-5, 50).map(str),
    st.floats(-2, 2).map(str),
    st.sampled_from(["nan", "inf", "-inf"]),
    st.sampled_from(["none", "l1", "fisher", "auto", "fedadmp", "naive", "[1, 2]", "{a: 1}", "", "true", "~"]),
    st.text(max_size=8),
)


@FEW
@given(st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_any_override_is_a_valid_config_or_one_config_error(pairs):
    """Config parsing never raises anything but ConfigError, and what it accepts is fully resolved."""
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = config_from_overrides(overrides)
    except ConfigError:
        return
    assert cfg.admp.merge_recovery != "auto" and cfg.admp.teacher_bn != "auto"
    assert 0 <= cfg.admp.prune_ratio < 1


CONTRACT = {"input": {"shape": ["batch", 3], "value_range": [0.0, 1.0]}, "output": {"shape": ["batch", 4]}}


@FEW
@given(
    arrays(np.float32, st.tuples(st.integers(0, 5), st.just(3)), elements=st.floats(width=32)),
    st.none() | arrays(np.int64, st.integers(0, 6), elements=st.integers(-3, 8)),
)
def test_the_device_readers_checks_pass_only_what_the_model_can_take(x, y):
    path = Path("local.npz")
    try:
        infer.check_values(x, CONTRACT, path)
        if y is not None:
            infer.check_labels(y, len(x), 4, path)
    except infer.InputError:
        return
    assert len(x) > 0 and np.isfinite(x).all() and x.min() >= -1.0 and x.max() <= 2.0  # within the range's slack
    assert y is None or (len(y) == len(x) and (y >= 0).all() and (y < 4).all())


@FEW
@given(
    st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=16),
    st.floats(0.0, 0.95),
    st.data(),
)
def test_the_fleet_keep_set_is_the_top_k_of_the_open_channels(scores, ratio, data):
    c = len(scores)
    k = keep_count(c, ratio)
    open_ = data.draw(st.lists(st.booleans(), min_size=c, max_size=c).filter(lambda m: sum(m) >= k))
    keep = {"g": torch.tensor([1.0 if o else 0.0 for o in open_])}
    ranked = torch.tensor(scores)  # float32, as the pooled Fisher is
    scores = ranked.tolist()
    chosen = fisher_keep({"g": ranked}, keep, ratio)["g"]
    assert int(chosen.sum()) == k and bool((chosen <= keep["g"]).all())  # k channels, all still open
    kept = [s for s, c_, o in zip(scores, chosen.tolist(), open_, strict=True) if c_ == 1]
    dropped = [s for s, c_, o in zip(scores, chosen.tolist(), open_, strict=True) if c_ == 0 and o]
    assert not dropped or min(kept) >= max(dropped)
