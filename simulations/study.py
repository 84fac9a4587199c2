"""``fedadmp study STUDY.yaml``: every method on the same splits, seeds and round budget.

A study lists tasks (a base scenario plus overrides), methods, pruning ratios and seeds. Each
(task, method, ratio, seed) is one run; finished runs are recorded in ``runs.csv`` and skipped when
the study is started again, so an interrupted study resumes where it stopped. The teacher of a
(task, seed) is trained once and loaded by that pair's later runs.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import Field, model_validator
from rich.console import Console

from admp_config.base import Section, SectionError, parse_section
from admp_config.choices import METHODS, Method, VariantMethod
from admp_config.schema import load_config, read_yaml

COLUMNS = [
    "run_id",
    "task",
    "method",
    "variant",
    "prune_ratio",
    "seed",
    "teacher_acc",
    "teacher_acc_target_bn",
    "student_acc",
    "student_acc_as_exported",
    "final_divergence",
    "params",
    "teacher_params",
    "macs",
    "teacher_macs",
    "latency_ms",
    "teacher_latency_ms",
    "channels_pruned",
    "epsilon",
    "mb_per_client_round",
    "wall_seconds",
    "run_dir",
]


class StudyTask(Section):
    """One task of a study: a base scenario YAML (relative to the study file) plus overrides."""

    name: str = ""
    scenario: str = ""
    overrides: list[str] = []
    variant_ratios: dict[str, Annotated[float, Field(ge=0, lt=1)]] = {}  # a variant's ratio on this task (e.g.
    #   where another model family reaches the same latency at another p); unnamed variants keep their own

    @model_validator(mode="after")
    def _required(self) -> StudyTask:
        """A task without a name or a scenario cannot be run or reported."""
        if not self.name or not self.scenario:
            raise SectionError("", "name and scenario are required")
        return self


class StudyVariant(Section):
    """An ablation: ``method`` with extra overrides, run at the table ratio (or its own ``prune_ratio``)
    for every seed and task."""

    name: str = ""
    method: VariantMethod = "fedadmp"
    overrides: list[str] = []
    prune_ratio: Annotated[float, Field(ge=0, lt=1)] | None = None  # None: the study's table_ratio


class StudySpec(Section):
    """The study: tasks x methods x pruning ratios x seeds, plus ablation variants."""

    name: str = "study"
    out_dir: str = "results"  # relative to the study file
    data_dir: str = ""  # folder with mnist/, usps/, hapt/ npz files, relative to the study file
    methods: list[Method] = Field(default_factory=lambda: list(get_args(Method)))
    prune_ratios: list[Annotated[float, Field(ge=0, lt=1)]] = [0.3, 0.5, 0.6, 0.7]
    seeds: list[int] = [0, 1, 2]
    table_ratio: float = 0.6  # the ratio of the tables (and of the variants)
    sweep_seeds: list[int] = []  # seeds for the other ratios ([]: all seeds)
    sweep_methods: list[Method] = []  # methods for the other ratios ([]: all)
    tasks: list[StudyTask] = []
    variants: list[StudyVariant] = []

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        """At least one task; the table ratio is swept; variant names are set, unique and not methods."""
        if not self.tasks:
            raise SectionError("tasks", "a study needs at least one task")
        if self.table_ratio not in self.prune_ratios:
            raise SectionError("table_ratio", f"{self.table_ratio} is not one of prune_ratios {self.prune_ratios}")
        names = [v.name for v in self.variants]
        for i, task in enumerate(self.tasks):
            if unknown := sorted(set(task.variant_ratios) - set(names)):
                raise SectionError(f"tasks[{i}].variant_ratios", f"names no variant of this study: {unknown}")
        for i, variant in enumerate(self.variants):
            if not variant.name or variant.name in METHODS or names.count(variant.name) > 1:
                raise SectionError(f"variants[{i}]", f"name {variant.name!r} must be set, unique and not a method name")
        return self


def load_study(path: str | Path) -> tuple[StudySpec, Path]:
    """Read and check a study file, and every task's scenario with its overrides and each variant's.

    Returns the spec and the folder it lives in.
    """
    path = Path(path)
    spec = parse_section(StudySpec, read_yaml(path, "study"))
    data_dir = [f"data.data_dir={(path.parent / spec.data_dir).resolve()}"] if spec.data_dir else []
    for task in spec.tasks:
        load_config(path.parent / task.scenario, overrides=[*data_dir, *task.overrides])  # fail early, with the key
        for variant in spec.variants:
            load_config(path.parent / task.scenario, overrides=[*data_dir, *task.overrides, *variant.overrides])
    return spec, path.parent


def plan(spec: StudySpec) -> list[dict[str, Any]]:
    """Every run of the study; fedkd does not prune, so it runs once per (task, seed).

    Ratios other than ``table_ratio`` run for ``sweep_seeds`` and ``sweep_methods`` only (all when
    empty); variants run at ``table_ratio`` (or their own ratio) for every seed. Order: every run of the first seed (the
    table's ratio first, then the others from the highest down), then the table's runs of each
    further seed, so a study cut short has every task and ratio once before it repeats them.
    """
    runs = []
    for task in spec.tasks:
        for seed in spec.seeds:
            for method in spec.methods:
                ratios = [0.0] if method == "fedkd" else spec.prune_ratios
                for p in ratios:
                    if p not in (0.0, spec.table_ratio) and not _swept(spec, method, seed):
                        continue
                    runs.append(
                        {
                            "run_id": f"{task.name}-{method}-p{p:g}-s{seed}",
                            "task": task,
                            "method": method,
                            "variant": "",
                            "overrides": [],
                            "prune_ratio": p,
                            "seed": seed,
                            "data_dir": spec.data_dir,
                        }
                    )
            for v in spec.variants:
                ratio = spec.table_ratio if v.prune_ratio is None else v.prune_ratio
                ratio = task.variant_ratios.get(v.name, ratio)
                runs.append(
                    {
                        "run_id": f"{task.name}-{v.name}-p{ratio:g}-s{seed}",
                        "task": task,
                        "method": v.method,
                        "variant": v.name,
                        "overrides": v.overrides,
                        "prune_ratio": ratio,
                        "seed": seed,
                        "data_dir": spec.data_dir,
                    }
                )
    table = (0.0, spec.table_ratio)

    def order(run: dict[str, Any]) -> tuple[int, bool, float, int]:
        seed_at, swept = spec.seeds.index(run["seed"]), run["prune_ratio"] not in table
        return (min(seed_at, 1), swept, -run["prune_ratio"] if swept else 0.0, seed_at)

    return sorted(runs, key=order)  # stable: tasks and methods keep their order within


def _swept(spec: StudySpec, method: str, seed: int) -> bool:
    """Whether (method, seed) runs at the ratios other than the table's."""
    return (not spec.sweep_seeds or seed in spec.sweep_seeds) and (
        not spec.sweep_methods or method in spec.sweep_methods
    )


def final_divergence(run_dir: Path) -> float | None:
    """The last training divergence D (student vs teacher, on the devices' unlabeled data) of a run.

    It needs no target label, so it is the criterion the ablations are judged by (see studies/).
    """
    metrics = json.loads((run_dir / "metrics.json").read_text())
    values = [row["divergence"] for row in metrics if row.get("divergence") is not None]
    return float(values[-1]) if values else None


def _finished(csv_path: Path) -> dict[str, dict[str, str]]:
    if not csv_path.is_file():
        return {}
    with csv_path.open() as handle:
        return {row["run_id"]: row for row in csv.DictReader(handle)}


def _append(csv_path: Path, row: dict[str, Any]) -> None:
    """Append one finished run; a study started by an older version keeps its own columns."""
    columns = COLUMNS
    if csv_path.is_file():
        with csv_path.open(newline="") as handle:
            columns = next(csv.reader(handle), COLUMNS)
    new = not csv_path.is_file()
    with csv_path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in columns})


TeacherKey = tuple[str, int, tuple[str, ...]]
TEACHER_SECTIONS = ("data", "model", "teacher")  # the sections a teacher is built from


def teacher_key(task: str, seed: int, overrides: list[str]) -> TeacherKey:
    """The runs that can share one teacher: the same task and seed, and the same overrides of the
    sections the teacher is built from (a variant that changes the teacher's recipe trains its own)."""
    return task, seed, tuple(sorted(o for o in overrides if o.split(".", 1)[0].strip() in TEACHER_SECTIONS))


def _execute(
    run: dict[str, Any], base: Path, runs_dir: Path, teachers: dict[TeacherKey, str], console: Console
) -> dict[str, Any]:
    task: StudyTask = run["task"]
    data_dir = [f"data.data_dir={(base / spec_data_dir).resolve()}"] if (spec_data_dir := run.get("data_dir")) else []
    overrides = [
        *data_dir,
        *task.overrides,
        *run["overrides"],
        f"run.seed={run['seed']}",
        f"run.out_dir={runs_dir}",
        f"run.name={run['run_id']}",
    ]
    if run["prune_ratio"] > 0:
        overrides.append(f"admp.prune_ratio={run['prune_ratio']}")
    key = teacher_key(task.name, run["seed"], run["overrides"])
    if key in teachers:
        overrides.append(f"teacher.checkpoint={teachers[key]}")
    start = time.perf_counter()
    if run["method"] == "centralized":
        from simulations.centralized import run_centralized

        summary = run_centralized(load_config(base / task.scenario, overrides=overrides), console)
    else:
        from simulations.federated import run_federated_simulation

        cfg = load_config(base / task.scenario, overrides=[*overrides, f"federation.strategy={run['method']}"])
        run_federated_simulation(cfg)
        (run_dir,) = sorted(runs_dir.glob(f"{run['run_id']}-*"))[-1:]
        summary = json.loads((run_dir / "summary.json").read_text())
    teachers.setdefault(key, str(Path(summary["run_dir"]) / "teacher.pt"))
    return {
        **{k: run[k] for k in ("run_id", "method", "variant", "prune_ratio", "seed")},
        "task": task.name,
        "teacher_acc": summary["teacher"]["target_acc"],
        "teacher_acc_target_bn": summary["teacher"].get("target_acc_target_bn", ""),
        "student_acc": summary["student"]["target_acc"],
        "student_acc_as_exported": summary["student"].get("target_acc_as_exported", ""),
        "final_divergence": final_divergence(Path(summary["run_dir"])),
        "params": summary["student"]["params"],
        "teacher_params": summary["teacher"]["params"],
        "macs": summary["student"]["macs"],
        "teacher_macs": summary["teacher"]["macs"],
        "latency_ms": summary["student"]["latency_ms"],
        "teacher_latency_ms": summary["teacher"]["latency_ms"],
        "channels_pruned": summary.get("channels_pruned", 0.0),
        "epsilon": (summary.get("privacy") or {}).get("epsilon", ""),  # empty: not a private run
        "mb_per_client_round": round(summary.get("bytes_per_client_round", 0) / 1e6, 3),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "run_dir": summary["run_dir"],
    }


def run_study(path: str | Path, console: Console | None = None) -> Path:
    """Run (or resume) a study; returns its output folder with runs.csv, tables and plots."""
    from simulations.study_report import write_report

    console = console or Console()
    spec, base = load_study(path)
    out = (base / spec.out_dir / spec.name).resolve()
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out / "runs.csv"
    done = _finished(csv_path)
    variants = {v.name: v.overrides for v in spec.variants}
    teachers = {  # reuse a finished run's teacher while its file is there (run directories are not committed)
        teacher_key(r["task"], int(r["seed"]), variants.get(r.get("variant", ""), [])): str(
            Path(r["run_dir"]) / "teacher.pt"
        )
        for r in done.values()
        if (Path(r["run_dir"]) / "teacher.pt").is_file()
    }
    todo = [r for r in plan(spec) if r["run_id"] not in done]
    console.print(f"[bold]study {spec.name}[/bold]: {len(done)} runs done, {len(todo)} to go -> {out}")
    for i, run in enumerate(todo, 1):
        console.rule(f"{i}/{len(todo)}  {run['run_id']}")
        row = _execute(run, base, runs_dir, teachers, console)
        _append(csv_path, row)
        console.print(
            f"{run['run_id']}: teacher {row['teacher_acc']:.2f}%  student {row['student_acc']:.2f}%  "
            f"({row['wall_seconds']} s)"
        )
    write_report(out, spec)
    console.print(f"report: {out / 'report.md'}")
    return out
