"""The server's phases end to end through an in-process Grid (real ClientApp, no Ray): every strategy,
resume, per-client duals, the fleet-BN teacher, discovery failures and a device that errs."""

import json
import math
from pathlib import Path

import pytest
import torch
from flwr.app import Error, Message
from rich.console import Console

from admp.importance import measured_fisher, pooled_fisher, stepped_keep
from admp.metrics import accuracy
from admp.models import example_input
from admp.teacher import initial_model, state_hash
from admp.trainer import per_device_bn_accuracy
from admp.warmstart import cloud_keep
from admp_config.schema import config_from_overrides, to_yaml
from admp_config.seeding import torch_generator
from admp_data.tasks import build_task
from admp_export.bundle import load_bundle
from server.app import run_federated
from server.fleet import discover_devices
from strategies import protocol as P
from tests.conftest import set_flower_task
from tests.inprocess_grid import CACHE, NODE_BASE, InProcessGrid

pytestmark = pytest.mark.usefixtures("flower_task")

TINY = [
    "admp.keep_init=none",  # the mask phase from ones (warm-up, Z-steps, merge repair); the default: own test
    "data.num_devices=4",
    "data.samples_per_device=40",
    "teacher.epochs=3",
    "data.max_source=300",  # the teacher learns on a third of the digits' half: its training was a quarter of a run
    "model.width=0.5",
    "federation.clients_per_round=3",
    "federation.mask_rounds=3",
    "federation.warmup_rounds=1",
    "federation.finetune_rounds=1",
    "federation.min_local_steps=2",  # 28 samples per device, 1 step per epoch: 2 local epochs
    "federation.teacher_rounds=0",  # the teacher's self-training has its own test
    "federation.weak_teacher_rounds=0",  # so has the weak-teacher rule (a 3-epoch teacher may count as weak)
    "federation.teacher_max_rounds=0",  # and the extension of the teacher's rounds
    "federation.teacher_fallback=false",  # 3 tiny rounds leave a student the fallback would replace (own test)
    "run.threads=2",
]


@pytest.fixture(autouse=True)
def quiet_console(monkeypatch):
    monkeypatch.setattr("server.setup.Console", lambda: Console(quiet=True))


def _run(out: Path, *extra: str, grid: InProcessGrid | None = None, resume: Path | None = None) -> Path:
    cfg = config_from_overrides([*TINY, f"run.out_dir={out}", *extra])
    run_federated(grid or InProcessGrid(4), cfg, str(resume) if resume else None)
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def _rows(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def fedadmp_run(tmp_path_factory) -> Path:
    set_flower_task()
    return _run(tmp_path_factory.mktemp("fedadmp"))


def test_fedadmp_phases_rounds_and_pruning(fedadmp_run):
    rows = _rows(fedadmp_run)
    assert [r["phase"] for r in rows] == ["mask"] * 3 + ["merge", "start", "finetune", "final"]
    assert [r["round"] for r in rows] == [1, 2, 3, 3, 3, 4, 5]  # "start": the merged student, scored
    mask = rows[:3]
    assert [r["rho"] for r in mask] == pytest.approx([0.0, 1.0, 1.2])  # warm-up, rho0, rho0 * gamma
    # LeNet at width 0.5: groups of 16 and 32 channels; p = 0.6 keeps ceil(6.4) = 7 and ceil(12.8) = 13
    assert mask[-1]["hard_sparsity"] == pytest.approx(1 - (7 + 13) / 48)
    summary = _summary(fedadmp_run)
    assert summary["student"]["channels"] == {"conv1": 7, "conv2": 13}
    assert summary["teacher_sends"] == {"0": 1, "1": 1, "2": 1, "3": 1}  # each device got it once
    assert sum(r.get("teacher_sends", 0) for r in rows) == 4 and not summary["rejections"]


def test_reported_accuracies_are_the_shipped_bundles(fedadmp_run):
    """``target_acc``: the shipped bundle after each device's BN step (``local``); ``target_acc_as_exported``:
    the same bundle as written. Both recomputed here from pruned_model.pt and the devices' data."""
    summary = _summary(fedadmp_run)["student"]
    cfg = config_from_overrides([*TINY])
    task = build_task(cfg.data, cfg.run.seed)
    model = load_bundle(fedadmp_run / "pruned_model.pt")
    final = torch.load(fedadmp_run / "checkpoint.pt", weights_only=True)
    assert final["phase"] == "done" and all(torch.equal(v, final["student"][k]) for k, v in model.state_dict().items())
    devices = [task.device(i) for i in range(4)]
    expected = per_device_bn_accuracy(model, [(d.train.x, d.test.x, d.test.y) for d in devices])
    assert summary["target_acc"] == pytest.approx(expected, abs=1e-6) and "adapt-bn" in summary["inference"]
    correct = sum(accuracy(model, d.test.x, d.test.y) * len(d.test) for d in devices)
    assert summary["target_acc_as_exported"] == pytest.approx(correct / sum(len(d.test) for d in devices), abs=1e-6)


def test_resume_reaches_the_same_model(fedadmp_run, tmp_path):
    paused = _run(tmp_path, "federation.stop_after_round=2")
    assert _rows(paused)[-1]["round"] == 2 and not (paused / "summary.json").exists()
    cfg_overrides = [*TINY, f"run.out_dir={tmp_path}"]
    run_federated(InProcessGrid(4), config_from_overrides(cfg_overrides), str(paused))
    a = torch.load(fedadmp_run / "checkpoint.pt", weights_only=True)
    b = torch.load(paused / "checkpoint.pt", weights_only=True)
    assert a["phase"] == b["phase"] == "done"
    for key, value in a["student"].items():
        assert torch.allclose(value.float(), b["student"][key].float(), atol=1e-6), key
    assert [r.get("target_acc") for r in _rows(fedadmp_run)] == [r.get("target_acc") for r in _rows(paused)]


def test_resume_in_the_kd_phase_and_of_a_baseline(fedadmp_run, tmp_path):
    """Pause after round 4 (the first KD round after 3 mask rounds), resume: same model, same rows."""
    paused = _run(tmp_path / "a", "federation.stop_after_round=4")
    assert torch.load(paused / "checkpoint.pt", weights_only=True)["phase"] == "kd"
    run_federated(InProcessGrid(4), config_from_overrides([*TINY, f"run.out_dir={tmp_path / 'a'}"]), str(paused))
    final = torch.load(paused / "checkpoint.pt", weights_only=True)
    reference = torch.load(fedadmp_run / "checkpoint.pt", weights_only=True)
    assert all(
        torch.allclose(v.float(), final["student"][k].float(), atol=1e-6) for k, v in reference["student"].items()
    )
    assert [r["phase"] for r in _rows(paused)] == [r["phase"] for r in _rows(fedadmp_run)]
    naive = _run(tmp_path / "b", "federation.strategy=naive", "federation.stop_after_round=2")
    run_federated(
        InProcessGrid(4),
        config_from_overrides([*TINY, f"run.out_dir={tmp_path / 'b'}", "federation.strategy=naive"]),
        str(naive),
    )
    assert [r["round"] for r in _rows(naive)] == [0, 1, 2, 3, 4, 5]  # the scored start (0), no round lost or repeated


def test_cli_resume_reloads_the_run_config_without_the_pause(tmp_path, monkeypatch):
    from simulations import cli, federated

    calls = []
    monkeypatch.setattr(federated, "run_federated_simulation", lambda cfg, resume, verbose: calls.append((cfg, resume)))
    cfg = config_from_overrides([*TINY, "federation.stop_after_round=2", "admp.prune_ratio=0.5"])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    assert cli.main(["simulate", "--resume", str(tmp_path)]) == 0
    ((resumed, where),) = calls
    assert where == str(tmp_path) and resumed.federation.stop_after_round == 0 and resumed.admp.prune_ratio == 0.5


def test_fleet_aggregates_are_logged_checkpointed_and_resumed(tmp_path):
    """With IM and centroid pseudo labels on, every training round logs the fleet marginal's entropy
    and how many classes have a centroid, the checkpoint holds the marginal and the feature sums
    (LeNet's 128 hidden units + 1), and a run paused after round 2 resumes to the same model."""
    full = _run(tmp_path / "a", "admp.lambda_im=1", "admp.centroids=fleet")
    rows = [r for r in _rows(full) if r["phase"] in ("mask", "finetune")]
    assert all(0 < r["marginal_entropy"] <= math.log(10) + 1e-6 for r in rows)
    assert all(1 <= r["centroid_classes"] <= 10 for r in rows)
    paused = _run(tmp_path / "b", "admp.lambda_im=1", "admp.centroids=fleet", "federation.stop_after_round=2")
    shared = torch.load(paused / "checkpoint.pt", weights_only=True)["fleet_stats"]
    assert shared["marginal"].shape == (10,) and shared["examples"] > 0
    assert shared["feature-sums"].shape == (10, 129) and float(shared["feature-mass"].sum()) == pytest.approx(
        shared["examples"], rel=1e-4
    )
    run_federated(InProcessGrid(4), config_from_overrides([*TINY, f"run.out_dir={tmp_path / 'b'}", "admp.lambda_im=1",
                                                          "admp.centroids=fleet"]), str(paused))  # fmt: skip
    a = torch.load(full / "checkpoint.pt", weights_only=True)["student"]
    b = torch.load(paused / "checkpoint.pt", weights_only=True)["student"]
    assert all(torch.allclose(v.float(), b[k].float(), atol=1e-6) for k, v in a.items())


def test_fedkd_baseline_trains_the_dense_student_for_the_whole_budget(tmp_path):
    run = _run(tmp_path, "federation.strategy=fedkd")
    rows = _rows(run)
    assert [r["phase"] for r in rows] == ["start"] + ["finetune"] * 4 + ["final"]  # 3 mask + 1 fine-tune rounds
    summary = _summary(run)
    assert summary["prune_ratio"] == 0.0 and summary["student"]["params"] == summary["teacher"]["params"]


def test_naive_baseline_prunes_on_the_cloud_by_l1_norm(tmp_path):
    run = _run(tmp_path, "federation.strategy=naive")
    summary = _summary(run)
    assert summary["student"]["channels"] == {"conv1": 7, "conv2": 13}
    assert [r["phase"] for r in _rows(run)] == ["start"] + ["finetune"] * 4 + ["final"]
    assert summary["student"]["params"] < summary["teacher"]["params"] / 2


def test_per_client_duals_and_the_fleet_bn_teacher(tmp_path):
    run = _run(tmp_path, "federation.dual=per_client", "data.shifts=never")  # one domain: fleet BN
    summary = _summary(run)
    assert "teacher_bn: fleet" in (run / "config.yaml").read_text() and not summary["rejections"]
    source = torch.load(run / "teacher.pt", weights_only=True)
    adapted = torch.load(run / "checkpoint.pt", weights_only=True)["teacher"]  # the teacher the run delivered
    delivered = torch.load(CACHE / f"teacher-{state_hash(adapted)}.pt", weights_only=True)  # as a device keeps it
    bn_means = [k for k in source if k.endswith("running_mean")]
    assert all(torch.equal(delivered[k], source[k]) for k in source if "running" not in k and "num_batches" not in k)
    assert not any(torch.equal(delivered[k], source[k]) for k in bn_means)  # BN statistics re-estimated
    cfg = config_from_overrides([*TINY, "data.shifts=never"])
    task = build_task(cfg.data, cfg.run.seed)
    teacher = initial_model(cfg, task.num_classes, task.input_shape)
    teacher.load_state_dict(delivered)
    _, test = task.pooled()
    assert summary["teacher"]["target_acc_target_bn"] == pytest.approx(
        accuracy(teacher.eval(), test.x, test.y), abs=1e-6
    )
    assert summary["student"]["channels"] == {"conv1": 7, "conv2": 13}


def test_a_failing_device_is_rejected_and_the_rounds_go_on(tmp_path):
    def fail_device_2(msg: Message, reply: Message) -> Message:
        if msg.metadata.dst_node_id == NODE_BASE + 2 and msg.metadata.message_type.startswith("train"):
            return Message(Error(code=P.CLIENT_ERROR, reason="RuntimeError: sensor offline"), reply_to=msg)
        return reply

    run = _run(tmp_path, grid=InProcessGrid(4, replies=fail_device_2))
    rejections = _summary(run)["rejections"]
    assert rejections and {r["device"] for r in rejections} == {2}
    assert all("sensor offline" in r["reason"] for r in rejections)
    assert _summary(run)["student"]["channels"] == {"conv1": 7, "conv2": 13}


def test_discovery_failures_name_the_problem():
    with pytest.raises(RuntimeError, match="claim device id 1"):
        discover_devices(InProcessGrid(3, claims={2: 1}), 3, timeout=1)
    silent = InProcessGrid(2, replies=lambda msg, _: Message(Error(code=P.CLIENT_ERROR, reason="x"), reply_to=msg))
    with pytest.raises(RuntimeError, match="no device answered"):
        discover_devices(silent, 2, timeout=1)
    with pytest.raises(TimeoutError, match="only 2 of 3 devices connected"):
        discover_devices(InProcessGrid(2), 3, timeout=0.2)
    assert discover_devices(InProcessGrid(3, claims={0: 7}), 3, timeout=1) == {
        7: NODE_BASE,
        1: NODE_BASE + 1,
        2: NODE_BASE + 2,
    }


def test_the_teacher_self_trains_first_and_every_later_round_follows_it(fedadmp_run, tmp_path):
    """Two rounds of the teacher's self-training come first (rounds 1-2), the mask phase follows as
    rounds 3-5 with its warm-up counted from there (rho 0, then rho0, rho0 * gamma), the adapted
    teacher goes out again under its new hash, and a run paused inside the teacher phase resumes to
    the same model as one that was not."""
    full = _run(tmp_path / "a", "federation.teacher_rounds=2")
    rows = _rows(full)
    assert [r["phase"] for r in rows] == ["teacher"] * 2 + ["mask"] * 3 + ["merge", "start", "finetune", "final"]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 5, 5, 6, 7]
    assert [r["rho"] for r in rows[2:5]] == pytest.approx([0.0, 1.0, 1.2])
    summary = _summary(full)
    assert 0 <= summary["teacher"]["target_acc_self_trained"] <= 100 and summary["teacher"]["self_training"] == "kept"
    adapted, source = (torch.load(full / f, weights_only=True) for f in ("teacher_self_trained.pt", "teacher.pt"))
    assert adapted.keys() == source.keys() and any(not torch.equal(adapted[k], source[k]) for k in source)
    sends = summary["teacher_sends"]
    assert max(sends.values()) == 2 and sum(sends.values()) > len(sends)  # the source teacher, then the adapted one
    fresh = torch.load(full / "checkpoint.pt", weights_only=True)["student"]
    reference = torch.load(fedadmp_run / "checkpoint.pt", weights_only=True)["student"]  # no self-training
    assert any(not torch.allclose(v.float(), reference[k].float()) for k, v in fresh.items())
    paused = _run(tmp_path / "b", "federation.teacher_rounds=2", "federation.stop_after_round=1")
    assert torch.load(paused / "checkpoint.pt", weights_only=True)["phase"] == "teacher"
    overrides = [*TINY, f"run.out_dir={tmp_path / 'b'}", "federation.teacher_rounds=2"]
    run_federated(InProcessGrid(4), config_from_overrides(overrides), str(paused))
    resumed = torch.load(paused / "checkpoint.pt", weights_only=True)["student"]
    assert all(torch.allclose(v.float(), resumed[k].float(), atol=1e-6) for k, v in fresh.items())
    assert [r["round"] for r in _rows(paused)] == [r["round"] for r in rows]


def test_label_free_scores_are_logged_and_the_guards_discard_worse_results(fedadmp_run, tmp_path, monkeypatch):
    """Every evaluated round logs the label-free score; the summary holds the teacher's and the
    student's. With a guard that finds every result worse, the self-trained teacher is discarded
    (the teacher goes out once) and the fine-tune phase ends on its start."""
    rows = [r for r in _rows(fedadmp_run) if r["phase"] in ("mask", "finetune")]
    assert all(-math.log(10) - 1e-6 <= r["label_free_score"] <= math.log(10) for r in rows)
    assert all(0 <= r["class_balance"] <= 1 + 1e-6 for r in rows)
    summary = _summary(fedadmp_run)
    assert summary["label_free"]["teacher_score"] is not None and summary["label_free"]["student_score"] is not None
    assert summary["student"]["candidate"] in ("final", "start", "cloud", "teacher")
    scored = summary["selection"]["candidates"]
    assert set(scored) == {"final", "start", "cloud"} and summary["selection"]["reason"]
    saved = {p.stem: torch.load(p, weights_only=True) for p in (fedadmp_run / "candidates").glob("*.pt")}
    assert set(saved) == set(scored)  # every candidate, as a bundle, for criteria measured afterwards
    shipped = torch.load(fedadmp_run / "pruned_model.pt", weights_only=True)
    chosen = saved[summary["selection"]["chosen"]]
    assert chosen["keep"].keys() == shipped["keep"].keys()
    assert all(torch.equal(chosen["keep"][g], shipped["keep"][g]) for g in shipped["keep"])
    learned = [k for k in shipped["state"] if "running" not in k and "num_batches" not in k]  # BN may be pooled after
    assert learned and all(torch.equal(chosen["state"][k], shipped["state"][k]) for k in learned)

    from server import selection, teacher_phase

    monkeypatch.setattr(teacher_phase, "keeps_result", lambda before, after: False)
    monkeypatch.setattr(selection, "choose_export", lambda pruned, teacher: ("start", "forced by the test"))
    guarded = _summary(_run(tmp_path, "federation.teacher_rounds=1"))
    assert guarded["teacher"]["self_training"] == "discarded" and max(guarded["teacher_sends"].values()) == 1
    assert not (Path(guarded["run_dir"]) / "teacher_self_trained.pt").exists()  # only a kept teacher is saved
    assert guarded["student"]["candidate"] == "start" and guarded["selection"]["reason"] == "forced by the test"


def test_a_weak_teacher_self_trains_and_goes_on_while_it_climbs(tmp_path, monkeypatch):
    """A weak teacher (the rule forced) plays its one planned round, then one more while the rule says
    it climbs (after round 1 only), so the mask phase follows as rounds 3-5; the summary records the
    decision, the planned and played rounds and a score per round; a run paused inside the extension
    resumes to the same rounds and model. A teacher that is not weak plays none."""
    from server import teacher_phase
    from server.phases import source_score

    monkeypatch.setattr(teacher_phase, "weak_teacher", lambda fleet, source: True)
    monkeypatch.setattr(teacher_phase, "still_climbing", lambda scores: len(scores) == 2)
    rule = ("federation.weak_teacher_rounds=1", "federation.teacher_max_rounds=3")
    full = _run(tmp_path / "a", *rule)
    rows = _rows(full)
    assert [r["phase"] for r in rows] == ["teacher"] * 2 + ["mask"] * 3 + ["merge", "start", "finetune", "final"]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 5, 5, 6, 7]
    teacher = _summary(full)["teacher"]
    assert teacher["weak_teacher"] is True and teacher["self_training_planned"] == 1
    assert teacher["self_training_rounds"] == 2 and len(teacher["self_training_scores"]) == 3
    cfg = config_from_overrides([*TINY, f"run.out_dir={tmp_path / 'a'}", *rule])
    task = build_task(cfg.data, cfg.run.seed)
    source = initial_model(cfg, task.num_classes, task.input_shape)
    source.load_state_dict(torch.load(full / "teacher.pt", weights_only=True))  # the teacher as the source left it
    assert teacher["source_label_free_score"] == pytest.approx(source_score(source, task.source_val.x), abs=1e-6)
    paused = _run(tmp_path / "b", *rule, "federation.stop_after_round=2")
    assert torch.load(paused / "checkpoint.pt", weights_only=True)["phase"] == "teacher"
    run_federated(InProcessGrid(4), config_from_overrides([*TINY, f"run.out_dir={tmp_path / 'b'}", *rule]), str(paused))
    assert [r["round"] for r in _rows(paused)] == [r["round"] for r in rows]
    fresh, resumed = (torch.load(r / "checkpoint.pt", weights_only=True)["student"] for r in (full, paused))
    assert all(torch.allclose(v.float(), resumed[k].float(), atol=1e-6) for k, v in fresh.items())
    monkeypatch.setattr(teacher_phase, "weak_teacher", lambda fleet, source: False)
    strong = _run(tmp_path / "c", *rule)
    assert all(r["phase"] != "teacher" for r in _rows(strong)) and _summary(strong)["teacher"]["weak_teacher"] is False


def test_fedtiny_baseline_picks_one_of_its_candidates_by_adaptive_bn(tmp_path):
    """FedTiny's selection: 3 candidates (uniform L1 first), each scored by the devices after their own BN
    re-estimation; the chosen one keeps the uniform total of 7 + 13 = 20 channels and trains for the whole
    budget (3 mask + 1 fine-tune rounds)."""
    run = _run(tmp_path, "federation.strategy=fedtiny", "federation.fedtiny_candidates=3")
    summary = _summary(run)
    chosen = summary["teacher"]["fedtiny_selection"]
    assert len(chosen["scores"]) == 3 and chosen["scores"][chosen["chosen"]] == min(chosen["scores"])
    assert sum(summary["student"]["channels"].values()) == 20
    assert [r["phase"] for r in _rows(run)] == ["start"] + ["finetune"] * 4 + ["final"]


def test_fleet_fisher_keep_set_is_the_pooled_measurement_of_every_device(tmp_path):
    """keep_init fisher, Z frozen: the exported keep set is the one the devices' gate-Fisher sums choose.
    Recomputed here from teacher.pt and each device's own data with its own generator (round 0), pooled
    by example count, in fisher_steps = 2 steps; the run logs the query's 4 devices and skips the merge
    repair (merge_recovery auto from a keep set)."""
    run = _run(tmp_path, "admp.keep_init=fisher", "admp.z_frozen=true", "admp.fisher_steps=2")
    cfg = config_from_overrides([*TINY, "admp.fisher_steps=2"])
    task = build_task(cfg.data, cfg.run.seed)
    teacher = initial_model(cfg, task.num_classes, task.input_shape)
    teacher.load_state_dict(torch.load(run / "teacher.pt", weights_only=True))
    groups = teacher.channel_groups()
    devices = [task.device(i) for i in range(4)]

    def measure(keep):
        sums = [
            (
                measured_fisher(teacher, groups, d.train.x, torch_generator(cfg.run.seed, "gatefisher", i, 0), keep),
                len(d.train),
            )
            for i, d in enumerate(devices)
        ]
        return pooled_fisher(sums)

    expected = stepped_keep(measure, cfg.admp.prune_ratio, 2)
    keep = torch.load(run / "pruned_model.pt", weights_only=True)["keep"]
    assert {g: keep[g].tolist() for g in keep} == {g: expected[g].tolist() for g in expected}
    assert [r["devices"] for r in _rows(run) if r["phase"] == "keep-choice"] == [4]
    assert "merge_recovery: none" in (run / "config.yaml").read_text()


def test_the_default_start_is_the_cloud_l1_keep_set(tmp_path):
    """keep_init l1 (the default): the mask phase starts from the teacher's L1 keep set with the penalty on,
    so after 3 tiny rounds with Z free the exported keep set is still the L1 one (no device evidence moved a
    channel here), and the merge skips the source repair (merge_recovery auto: none)."""
    run = _run(tmp_path, "admp.keep_init=l1")
    cfg = config_from_overrides([*TINY, "admp.keep_init=l1"])
    task = build_task(cfg.data, cfg.run.seed)
    teacher = initial_model(cfg, task.num_classes, task.input_shape)
    teacher.load_state_dict(torch.load(run / "teacher.pt", weights_only=True))
    expected = cloud_keep(teacher, teacher.channel_groups(), cfg.admp.prune_ratio, example_input(teacher))
    keep = torch.load(run / "pruned_model.pt", weights_only=True)["keep"]
    assert {g: keep[g].tolist() for g in keep} == {g: expected[g].tolist() for g in expected}
    assert "merge_recovery: none" in (run / "config.yaml").read_text()
    assert config_from_overrides([]).admp.keep_init == "l1"


def test_the_reference_rule_compares_the_choice_with_the_self_trained_teacher(fedadmp_run, tmp_path, monkeypatch):
    """federation.export_reference: the chosen candidate and the source teacher are each compared with
    the self-trained teacher the devices hold (the source teacher with target BN as the run measures it:
    pooled, or each device's own); where the guard fires, that teacher ships, dense, and the summary says
    why. Without a self-trained teacher the rule does not apply, nor without ``teacher_fallback``."""
    from server import selection

    # the label-free choice is not under test: tiny runs' students would be flagged, and the teacher shipped
    monkeypatch.setattr(selection, "choose_export", lambda pruned, teacher: ("final", "forced by the test"))
    on = ("federation.export_reference=true", "federation.teacher_fallback=true", "federation.teacher_rounds=1")
    check = _summary(_run(tmp_path / "a", *on, "admp.teacher_bn=fleet"))["selection"]["reference"]  # pooled BN
    found = check["disagreement"]
    assert check["applies"] and 0 <= found["candidate"] <= 100 and 0 <= found["source"] <= 100
    assert check["gives_way"] == (found["candidate"] > found["source"] + 1.0)
    monkeypatch.setattr(selection, "reference_guard", lambda candidate, source: True)
    forced = _run(tmp_path / "b", *on)
    summary = _summary(forced)
    chosen = summary["selection"]
    assert chosen["chosen"] == "teacher" and "self-trained teacher is exported" in chosen["reason"]
    shipped = torch.load(forced / "pruned_model.pt", weights_only=True)
    adapted = torch.load(forced / "teacher_self_trained.pt", weights_only=True)
    learned = [k for k in adapted if "running" not in k and "num_batches" not in k]  # BN may be pooled after
    assert not shipped["keep"] and all(torch.equal(shipped["state"][k], adapted[k]) for k in learned)
    off = _summary(_run(tmp_path / "c", *on[:2], "federation.teacher_rounds=0"))["selection"]["reference"]
    assert off == {"applies": False, "reason": "no self-trained teacher to compare with"}
    assert "reference" not in _summary(fedadmp_run)["selection"]  # teacher_fallback false: a pruned model ships
