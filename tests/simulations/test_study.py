"""Study runner: the plan, skipping finished runs, config errors, and the report (no Ray)."""

import csv
import json

import pytest

from admp_config.base import ConfigError
from simulations import study as study_mod
from simulations import study_report

SCENARIO = "run:\n  name: t\nfederation:\n  mask_rounds: 3\n"


def _study(tmp_path, body: str):
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    path = tmp_path / "study.yaml"
    path.write_text(body)
    return path


def test_plan_covers_the_grid_and_fedkd_once(tmp_path):
    spec, _ = study_mod.load_study(
        _study(
            tmp_path,
            "name: s\nprune_ratios: [0.5, 0.6]\nseeds: [0, 1]\ntasks:\n  - name: a\n    scenario: scenario.yaml\n",
        )
    )
    ids = [r["run_id"] for r in study_mod.plan(spec)]
    assert len(ids) == 2 * (1 + 2 + 2 + 2 + 2)  # per seed: fedkd once, naive/fedtiny/fedadmp/centralized per ratio
    assert "a-fedkd-p0-s1" in ids and "a-fedadmp-p0.6-s0" in ids and len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    "body,needle",
    [
        ("methods: [fedavg]\ntasks:\n  - name: a\n    scenario: scenario.yaml\n", "methods: 'fedavg' is not one of"),
        ("tasks: []\n", "at least one task"),
        ("tasks:\n  - name: a\n    scenario: scenario.yaml\n    overrides: ['admp.tau=-1']\n", "admp.tau"),
        ("seedz: [1]\n", "unknown key 'seedz'"),
    ],
)
def test_bad_study_files_name_the_problem(tmp_path, body, needle):
    with pytest.raises(ConfigError, match=needle):
        study_mod.load_study(_study(tmp_path, body))


def _fake_summary(run_dir, acc):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(
        json.dumps([{"round": 1, "target_acc": acc}, {"round": 2, "target_acc": acc + 1}])
    )
    return {
        "run_dir": str(run_dir),
        "teacher": {"target_acc": 70.0, "params": 100, "macs": 1000, "latency_ms": 1.0},
        "student": {"target_acc": acc, "params": 40, "macs": 300, "latency_ms": 0.5},
        "channels_pruned": 0.6,
    }


def test_interrupted_study_resumes_and_reports(tmp_path, monkeypatch):
    path = _study(
        tmp_path, "name: s\nprune_ratios: [0.6]\nseeds: [0, 1]\ntasks:\n  - name: a\n    scenario: scenario.yaml\n"
    )
    calls = []
    accs = {"fedkd": 90.0, "naive": 80.0, "fedtiny": 81.0, "fedadmp": 88.0, "centralized": 89.0}

    def fake_execute(run, base, runs_dir, teachers, console):
        calls.append(run["run_id"])
        if len(calls) == 3 and not getattr(fake_execute, "crashed", False):
            fake_execute.crashed = True
            raise KeyboardInterrupt  # the study is interrupted mid-way
        summary = _fake_summary(runs_dir / run["run_id"], accs[run["method"]] + run["seed"])
        return {
            **{k: run[k] for k in ("run_id", "method", "prune_ratio", "seed")},
            "task": run["task"].name,
            "teacher_acc": 70.0,
            "student_acc": summary["student"]["target_acc"],
            "params": 40,
            "teacher_params": 100,
            "macs": 300,
            "teacher_macs": 1000,
            "latency_ms": 0.5,
            "teacher_latency_ms": 1.0,
            "channels_pruned": 0.6,
            "wall_seconds": 1.0,
            "run_dir": summary["run_dir"],
        }

    monkeypatch.setattr(study_mod, "_execute", fake_execute)
    with pytest.raises(KeyboardInterrupt):
        study_mod.run_study(path)
    seen = []
    inner = fake_execute
    monkeypatch.setattr(study_mod, "_execute", lambda run, *a: seen.append(dict(a[2])) or inner(run, *a))
    out = study_mod.run_study(path)
    assert seen[0] == {}  # the finished runs' directories hold no teacher.pt: none is reused
    assert calls[2] == calls[3]  # the interrupted run is the first one redone; finished ones are skipped
    assert len(calls) == 11  # 10 runs + the interrupted attempt
    with (out / "runs.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 10
    report = (out / "report.md").read_text()
    assert "| FedADMP (ours) | 88.50 ± 0.71 (n=2)" in report
    # the overview: no teacher + target BN here, no published anchor for task "a"
    assert "| a | 70.00 | — | 90.50 | 80.50 | 81.50 | 88.50 | 89.50 | — | -2.00 | +8.00 | +7.00 | -1.00 | — |" in report
    # by ratio, seeds 0 and 1 (+0, +1): mean ± std; naive - dense 90.50 = -10, lead +8, FedADMP - dense -2
    cells = " | ".join(f"{m:.2f} ± 0.71 (n=2)" for m in (80.5, 81.5, 88.5, 89.5))
    row = f"| 0.6 | {cells} | -10.00 | +8.00 | -2.00 |"
    assert row in report
    assert "FedADMP − federated KD, no pruning: -2.00 points" in report
    assert "FedADMP − naive: L1 prune on cloud + fed. KD: +8.00 points" in report
    assert (out / "a_acc_vs_pruning.png").is_file() and (out / "a_acc_vs_round.png").is_file()


def test_sweep_seeds_and_variants_extend_the_plan(tmp_path):
    body = (
        "name: s\nmethods: [fedkd, naive]\nprune_ratios: [0.3, 0.6]\ntable_ratio: 0.6\nseeds: [0, 1]\n"
        "sweep_seeds: [0]\nvariants:\n  - name: no_adv\n    overrides: ['admp.adversary=false']\n"
        "tasks:\n  - name: a\n    scenario: scenario.yaml\n"
    )
    spec, _ = study_mod.load_study(_study(tmp_path, body))
    runs = study_mod.plan(spec)
    ids = [r["run_id"] for r in runs]
    # seed 0 whole (the table ratio, then naive at 0.3), then seed 1 at the table ratio only
    assert ids == [
        "a-fedkd-p0-s0",
        "a-naive-p0.6-s0",
        "a-no_adv-p0.6-s0",
        "a-naive-p0.3-s0",
        "a-fedkd-p0-s1",
        "a-naive-p0.6-s1",
        "a-no_adv-p0.6-s1",
    ]
    variant = runs[2]
    assert variant["method"] == "fedadmp" and variant["overrides"] == ["admp.adversary=false"]


def test_a_variant_at_its_own_ratio_runs_with_the_other_ratios(tmp_path):
    body = (
        "name: s\nmethods: [naive]\nprune_ratios: [0.6, 0.8]\ntable_ratio: 0.6\nseeds: [0, 1]\n"
        "variants:\n  - name: q2\n    prune_ratio: 0.8\n    overrides: ['quantize.bits=[2]']\n"
        "tasks:\n  - name: a\n    scenario: scenario.yaml\n"
    )
    spec, _ = study_mod.load_study(_study(tmp_path, body))
    runs = study_mod.plan(spec)
    # seed 0: the table ratio, then 0.8 (naive and the variant); seed 1 the same order
    assert [r["run_id"] for r in runs] == [
        "a-naive-p0.6-s0",
        "a-naive-p0.8-s0",
        "a-q2-p0.8-s0",
        "a-naive-p0.6-s1",
        "a-naive-p0.8-s1",
        "a-q2-p0.8-s1",
    ]
    assert runs[2]["prune_ratio"] == 0.8 and runs[2]["method"] == "fedadmp"


def test_a_task_can_set_a_variants_ratio(tmp_path):
    body = (
        "name: s\nmethods: [naive]\nprune_ratios: [0.6]\ntable_ratio: 0.6\nseeds: [0]\n"
        "variants:\n  - name: u\n    prune_ratio: 0.95\n"
        "tasks:\n  - name: a\n    scenario: scenario.yaml\n"
        "  - name: b\n    scenario: scenario.yaml\n    variant_ratios: {u: 0.9}\n"
    )
    spec, _ = study_mod.load_study(_study(tmp_path, body))
    # the table ratio's runs first, then the variant's on each task from the highest ratio down
    assert [r["run_id"] for r in study_mod.plan(spec)] == [
        "a-naive-p0.6-s0",
        "b-naive-p0.6-s0",
        "a-u-p0.95-s0",
        "b-u-p0.9-s0",
    ]
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.variant_ratios: names no variant of this study: \['v'\]"):
        study_mod.load_study(_study(tmp_path, body.replace("{u: 0.9}", "{v: 0.9}")))


def test_sweep_methods_run_the_other_ratios_highest_first(tmp_path):
    body = (
        "name: s\nmethods: [fedkd, naive, fedadmp]\nprune_ratios: [0.6, 0.8, 0.9]\ntable_ratio: 0.6\n"
        "seeds: [0, 1]\nsweep_seeds: [0]\nsweep_methods: [fedadmp]\ntasks:\n  - name: a\n    scenario: scenario.yaml\n"
    )
    spec, _ = study_mod.load_study(_study(tmp_path, body))
    assert [r["run_id"] for r in study_mod.plan(spec)] == [
        "a-fedkd-p0-s0",
        "a-naive-p0.6-s0",
        "a-fedadmp-p0.6-s0",
        "a-fedadmp-p0.9-s0",  # naive is not swept; 0.9 before 0.8
        "a-fedadmp-p0.8-s0",
        "a-fedkd-p0-s1",
        "a-naive-p0.6-s1",
        "a-fedadmp-p0.6-s1",
    ]


@pytest.mark.parametrize(
    "extra,needle",
    [
        ("prune_ratios: [0.5]\ntable_ratio: 0.6\n", "table_ratio: 0.6 is not one of"),
        ("variants:\n  - name: fedkd\n", "must be set, unique and not a method name"),
        ("variants:\n  - name: v\n    method: fedkd\n", "variants\\[0\\].method: 'fedkd'"),
        ("variants:\n  - name: v\n    overrides: ['admp.rho=-1']\n", "admp.rho"),
    ],
)
def test_bad_variants_name_the_problem(tmp_path, extra, needle):
    with pytest.raises(ConfigError, match=needle):
        study_mod.load_study(_study(tmp_path, extra + "tasks:\n  - name: a\n    scenario: scenario.yaml\n"))


def test_final_divergence_is_the_last_logged_one(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps([{"divergence": 0.9}, {"divergence": 0.4}, {"target_acc": 80.0}]))
    assert study_mod.final_divergence(tmp_path) == pytest.approx(0.4)


def test_ablation_table_compares_variants_with_default_on_the_same_seeds():
    def row(variant, method, acc, div, seed=0):
        return {
            "variant": variant,
            "method": method,
            "student_acc": acc,
            "final_divergence": div,
            "seed": seed,
            "prune_ratio": 0.6,
        }

    rows = [
        row("", "fedadmp", 80.0, 0.30),
        row("", "fedadmp", 70.0, 0.10, seed=1),  # seed 1 has no variant
        row("no_adv", "fedadmp", 82.5, 0.25),
        row("no_admm", "fedadmp", 79.0, None),
    ]
    table = study_report.ablation_table(rows, 0.6)
    assert "| FedADMP (default) | 80.00 ± 0.00 (n=1) | — | 0.3000 | — |" in table
    assert "| no_adv (fedadmp) | 82.50 ± 0.00 (n=1) | +2.50 | 0.2500 | -0.0500 |" in table
    assert "| no_admm (fedadmp) | 79.00 ± 0.00 (n=1) | -1.00 | — | — |" in table


@pytest.mark.parametrize(
    "body,message",
    [
        (
            "prune_ratios: [0.6, 1.5]\ntasks:\n  - name: a\n    scenario: scenario.yaml\n",
            "prune_ratios[1]: 1.5 is out of range [0, 1)",
        ),
        ("tasks:\n  - name: a\n", "tasks[0]: name and scenario are required"),
        (
            "tasks:\n  - name: a\n    scenario: scenario.yaml\n    overides: []\n",
            "unknown key 'tasks[0].overides' (known keys in tasks[0]: name, scenario, overrides, variant_ratios)",
        ),
        (
            "methods: [fedkd, fedavg]\ntasks:\n  - name: a\n    scenario: scenario.yaml\n",
            "methods: 'fedavg' is not one of fedkd, naive, fedtiny, fedadmp, centralized",
        ),
    ],
)
def test_study_errors_are_one_line_naming_the_key(tmp_path, body, message):
    with pytest.raises(ConfigError) as err:
        study_mod.load_study(_study(tmp_path, body))
    assert str(err.value) == message


def test_teacher_with_target_bn_comes_from_a_federated_run():
    """The centralized run measures the teacher with target BN on the pooled test data; the table's
    row is the federated runs' figure (per device, as the students are measured), whatever the order."""
    base = {"seed": 0, "prune_ratio": 0.6, "teacher_acc": 70.0, "teacher_latency_ms": 1.0, "teacher_params": 100}
    base |= {"teacher_macs": 1000, "student_acc": 90.0, "params": 40, "macs": 300, "latency_ms": 0.5}
    rows = [
        base | {"method": "fedadmp", "teacher_acc_target_bn": 93.0},
        base | {"method": "centralized", "teacher_acc_target_bn": 95.0},
    ]
    for order in (rows, rows[::-1]):
        _, means = study_report.task_table(order, 0.6)
        assert means["source_only_bn"] == 93.0


def test_the_start_rule_ranks_the_exported_models_label_free_scores(tmp_path):
    """simulations.start_rule: per task, the start whose exported model scores lowest wins the task (the
    teacher's score where the run fell back to it); most tasks won wins, ties by mean rank."""
    from simulations.start_rule import settle

    def run(name, chosen, scores, teacher=None):
        folder = tmp_path / name
        folder.mkdir()
        selection = {
            "chosen": chosen,
            "teacher_score": teacher,
            "candidates": {k: {"score": v} for k, v in scores.items()},
        }
        (folder / "summary.json").write_text(json.dumps({"selection": selection}))
        return str(folder)

    rows = []
    for task, (none, l1, fisher) in {"a": (-2.0, -2.2, -2.1), "b": (-1.0, -1.1, -1.3), "c": (-0.5, -0.7, -0.6)}.items():
        for variant, score in (("", none), ("fedadmp_l1", l1), ("fedadmp_fisher", fisher)):
            rows.append(
                {
                    "task": task,
                    "method": "fedadmp",
                    "variant": variant,
                    "prune_ratio": "0.9",
                    "seed": "0",
                    "run_dir": run(f"{task}-{variant or 'none'}", "final", {"final": score, "start": 0.0}),
                }
            )
    rows.append({"task": "a", "method": "naive", "variant": "", "prune_ratio": "0.9", "seed": "0", "run_dir": "x"})
    winner, table = settle(rows, 0.9, 0)
    # l1 is lowest on a and c, fisher on b: l1 wins 2 tasks to 1
    assert winner == "l1" and table["b"] == {"none": -1.0, "l1": -1.1, "fisher": -1.3}
    fallback = run("d-none", "teacher", {"final": -9.0}, teacher=-0.1)  # the teacher shipped: its score counts
    rows += [
        {"task": "d", "method": "fedadmp", "variant": "", "prune_ratio": "0.9", "seed": "0", "run_dir": fallback},
        {
            "task": "d",
            "method": "fedadmp",
            "variant": "fedadmp_l1",
            "prune_ratio": "0.9",
            "seed": "0",
            "run_dir": run("d-l1", "final", {"final": -0.05}),
        },
        {
            "task": "d",
            "method": "fedadmp",
            "variant": "fedadmp_fisher",
            "prune_ratio": "0.9",
            "seed": "0",
            "run_dir": run("d-fisher", "final", {"final": -0.3}),
        },
    ]
    winner, table = settle(rows, 0.9, 0)
    # wins: l1 2 (a, c), fisher 2 (b, d); ranks (0 best): l1 0 + 1 + 0 + 2 = 3, fisher 1 + 0 + 1 + 0 = 2
    assert table["d"]["none"] == -0.1 and winner == "fisher"


def test_the_aggregation_rule_takes_the_cheapest_mode_that_holds_a_boosted_device():
    """simulations.aggregation_rule by hand. Task x, clean mean 96 / 95 over seeds 0-1 (mean 95.5):
    clip boosted 95.0 (gap 0.5), clean 95.35 (cost 0.15); trimmed boosted 95.2 (0.3), clean 95.45 (0.05);
    median boosted 93 (2.5: fails); mean boosted 40 (fails). Trimmed_mean costs least (0.05; clip's 0.15
    is beyond the 0.05 tie) and wins; a seed missing an arm is left out."""
    from simulations.aggregation_rule import gaps, settle

    accs = {
        "": (96.0, 95.0),
        "boosted_mean": (40.0, 40.0),
        "boosted_clip": (95.0, 95.0),
        "clean_clip": (95.35, 95.35),
        "boosted_trimmed_mean": (95.2, 95.2),
        "clean_trimmed_mean": (95.45, 95.45),
        "boosted_median": (93.0, 93.0),
        "clean_median": (95.5, 95.5),
    }
    rows = [
        {"task": "x", "variant": v, "seed": str(s), "student_acc": str(a)}
        for v, pair in accs.items()
        for s, a in enumerate(pair)
    ]
    rows.append({"task": "x", "variant": "", "seed": "2", "student_acc": "10.0"})  # seed 2 lacks the other arms
    table = gaps(rows)
    assert table["x"]["clip"] == pytest.approx({"boosted_gap": 0.5, "clean_cost": 0.15, "seeds": 2})
    assert table["x"]["median"]["boosted_gap"] == pytest.approx(2.5)
    assert settle(table) == "trimmed_mean"
    table["x"]["trimmed_mean"]["clean_cost"] = 0.12  # clip's 0.15 is within 0.05 of it: the tie goes to clip
    assert settle(table) == "clip"
    for figures in table["x"].values():
        figures["boosted_gap"] = 5.0
    assert settle(table) == "mean"  # nothing holds the boosted device: the mean stays


def test_a_variant_that_changes_the_teacher_trains_its_own():
    teacher_key = study_mod.teacher_key
    plain = teacher_key("a", 0, [])
    assert teacher_key("a", 0, ["admp.keep_init=none", "federation.mask_rounds=3"]) == plain  # same teacher
    grey = teacher_key("a", 0, ["teacher.grey_input=true"])
    narrow = teacher_key("a", 0, ["model.width=0.5", "admp.rho=2"])
    assert len({plain, grey, narrow, teacher_key("a", 1, []), teacher_key("b", 0, [])}) == 5
    assert teacher_key("a", 0, ["teacher.epochs=2", "data.max_source=9"]) == teacher_key(
        "a", 0, ["data.max_source=9", "teacher.epochs=2"]
    )  # the order of the overrides does not matter
