"""Device profiles and the simulated fleet clock: the maths by hand, and a tiny fleet with a deadline."""

import pytest

from admp_config.base import ConfigError
from admp_config.fleet import DeviceClass, read_classes
from admp_fleet.profiles import DeviceRound, device_class, round_clock, time_to_accuracy
from tests.server.test_server import _rows, _run, _summary

pytestmark = pytest.mark.usefixtures("flower_task")

PHONE = DeviceClass(name="phone", samples_per_s=500, downlink_mbps=20, uplink_mbps=5, joules_per_sample=0.01)


def test_a_device_round_by_hand():
    # compute 1000 / 500 = 2 s; down 2.5e6 B x 8 / 20e6 b/s = 1 s; up 1.25e6 B x 8 / 5e6 b/s = 2 s; 1000 x 0.01 J
    d = DeviceRound(0, PHONE, 1000, 2_500_000, 1_250_000)
    assert d.seconds == pytest.approx(5.0) and d.joules == pytest.approx(10.0)


def test_the_deadline_drops_stragglers_and_bounds_the_round():
    fast, slow = DeviceRound(0, PHONE, 2500, 0, 0), DeviceRound(1, PHONE, 6000, 0, 0)  # 5 s and 12 s
    dropped = round_clock([fast, slow], deadline_s=10.0, late_replies="drop")
    assert dropped.accepted == [fast] and dropped.late == [slow]
    assert dropped.seconds == 10.0 and dropped.joules == pytest.approx(25.0)  # waited to the deadline; 2500 x 0.01 J
    waited = round_clock([fast, slow], deadline_s=10.0, late_replies="accept")
    assert waited.late == [] and waited.seconds == pytest.approx(12.0)
    assert round_clock([fast, slow], deadline_s=0.0, late_replies="drop").seconds == pytest.approx(12.0)  # no deadline


def test_devices_draw_their_class_by_share_from_the_seed():
    classes = [DeviceClass(name="a", share=3.0), DeviceClass(name="b", share=1.0)]
    draws = [device_class(classes, 7, d).name for d in range(4000)]
    assert draws == [device_class(classes, 7, d).name for d in range(4000)]  # seeded
    assert draws.count("a") / 4000 == pytest.approx(0.75, abs=0.03)  # shares 3 : 1
    assert draws != [device_class(classes, 8, d).name for d in range(4000)]


def test_classes_from_a_csv_file(tmp_path):
    good = tmp_path / "classes.csv"
    good.write_text("name,share,samples_per_s,uplink_mbps\nphone,2,400,2\ngateway,1,4000,50\n")
    classes = read_classes(good)
    assert [c.name for c in classes] == ["phone", "gateway"] and classes[1].uplink_mbps == 50.0
    bad = tmp_path / "bad.csv"
    bad.write_text("name,share,samples_per_s\nphone,2,-5\n")
    with pytest.raises(ConfigError, match=r"bad\.csv row 2"):
        read_classes(bad)


def test_time_to_accuracy_adds_up_the_rounds():
    rows = [(4.0, None), (3.0, 80.0), (5.0, 90.0), (2.0, 91.0)]
    assert time_to_accuracy(rows, 90.0) == 12.0  # 4 + 3 + 5
    assert time_to_accuracy(rows, 95.0) is None


def test_a_fleet_with_a_slow_class_and_a_deadline(tmp_path):
    """Two classes, the slow one far past a 1 s deadline: its replies are dropped as stragglers, every
    training round has a fleet time of at least the deadline, and the summary adds it all up."""
    run = _run(
        tmp_path,
        "federation.profiles.classes=[{name: fast, samples_per_s: 100000}, {name: slow, samples_per_s: 1}]",
        "federation.profiles.deadline_s=1",
    )
    rows = [r for r in _rows(run) if r["phase"] in ("mask", "finetune")]
    cut = [r for r in rows if r["stragglers"] > 0]
    assert cut and all(r["fleet_seconds"] >= 1.0 for r in cut)  # a round that dropped someone waited to the deadline
    assert all(r["fleet_seconds"] <= 1.0 for r in rows if r["stragglers"] == 0)  # the fast class: under the deadline
    summary = _summary(run)
    late = [r for r in summary["rejections"] if "missed the deadline" in r["reason"]]
    assert late and all("(slow)" in r["reason"] for r in late)
    clock = summary["fleet_clock"]
    assert clock["stragglers"] == len(late) and clock["fleet_seconds"] == pytest.approx(
        sum(r["fleet_seconds"] for r in rows)
    )
    assert (run / "accuracy_vs_fleet_time.png").is_file()


def test_availability_patterns_are_seeded_and_have_their_rates(tmp_path):
    from admp_config.fleet import ProfileSpec
    from admp_fleet.profiles import is_available, read_trace

    random = ProfileSpec(availability="random", availability_p=0.6)
    draws = [is_available(random, 3, r, d, frozenset()) for r in range(40) for d in range(50)]
    assert sum(draws) / len(draws) == pytest.approx(0.6, abs=0.03)
    assert draws == [is_available(random, 3, r, d, frozenset()) for r in range(40) for d in range(50)]
    # diurnal between 0.2 and 1.0: over whole periods the mean is (0.2 + 1.0) / 2 = 0.6
    diurnal = ProfileSpec(availability="diurnal", availability_p=1.0, diurnal_low=0.2, diurnal_period=8)
    rate = sum(is_available(diurnal, 3, r, d, frozenset()) for r in range(80) for d in range(50)) / 4000
    assert rate == pytest.approx(0.6, abs=0.04)
    trace_file = tmp_path / "trace.csv"
    trace_file.write_text("device,round\n0,1\n2,1\n0,2\n")
    trace = read_trace(trace_file)
    spec = ProfileSpec(availability="trace", availability_csv=str(trace_file))
    assert [d for d in range(3) if is_available(spec, 3, 1, d, trace)] == [0, 2]
    assert [d for d in range(3) if is_available(spec, 3, 2, d, trace)] == [0]


def test_over_selection_asks_more_and_keeps_the_fastest():
    from server.clock import keep_fastest

    rounds = [DeviceRound(i, PHONE, 500 * (i + 1), 0, 0) for i in range(4)]  # 1, 2, 3, 4 s
    kept, spare = keep_fastest(round_clock(rounds, 0.0, "drop"), 2)
    assert [d.device for d in kept.accepted] == [0, 1] and [d.device for d in spare] == [2, 3]
    assert kept.seconds == pytest.approx(2.0)  # the round ends with its 2nd fastest reply
    with pytest.raises(ConfigError, match="over_selection: needs device classes"):
        from admp_config.schema import config_from_overrides

        config_from_overrides(["federation.profiles.over_selection=0.5"])


def test_a_partly_available_over_selected_fleet(tmp_path):
    """60 % availability, 3 of 4 devices wanted, over-selection 0.5 (ceil(3 x 1.5) = 5, at most those
    available): every training round asks only available devices and keeps at most 3 replies."""
    run = _run(
        tmp_path,
        "federation.profiles.classes=[{name: a, samples_per_s: 1000}, {name: b, samples_per_s: 50}]",
        "federation.profiles.availability=random",
        "federation.profiles.availability_p=0.6",
        "federation.profiles.over_selection=0.5",
    )
    rows = [r for r in _rows(run) if r["phase"] in ("mask", "finetune")]
    assert all(r["valid_replies"] <= 3 for r in rows)
    assert _summary(run)["fleet_clock"]["fleet_seconds"] > 0


def test_training_rounds_sample_only_available_devices():
    from tests.strategies.test_hostile import _fedadmp

    strategy = _fedadmp(clients=2)
    strategy.fleet.available = lambda rnd, device: device % 3 == 0  # devices 0, 3, 6, 9 of 10
    strategy.fleet.over_selection = 0.5  # ceil(2 x 1.5) = 3 asked
    for rnd in range(1, 6):
        asked = strategy.sample(rnd, 2)
        assert len(asked) == 3 and all(d % 3 == 0 for d in asked)
    assert len(strategy.sample(1, 0, salt="evaluate")) == 10  # evaluation asks every device, available or not


def test_a_large_fleet_s_availability_is_asked_of_a_few_devices_only():
    from strategies.roster import SlotRoster
    from tests.strategies.test_hostile import _fedadmp

    strategy = _fedadmp(clients=10)
    strategy.fleet.roster = SlotRoster(100_000, list(range(10)))
    asked: list[int] = []

    def half(rnd: int, device: int) -> bool:  # every other device is available
        asked.append(device)
        return device % 2 == 0

    strategy.fleet.available = half
    first = strategy.sample(3, 10)
    assert len(first) == 10 and all(d % 2 == 0 for d in first)
    assert len(asked) < 100  # about 10 / 0.5 draws, not 100,000
    assert strategy.sample(3, 10) == first  # seeded: the same round draws the same devices
