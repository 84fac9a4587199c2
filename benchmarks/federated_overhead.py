"""What the Flower + Ray machinery costs: round wall time against a plain loop doing the same
local ADMP work on the same cores, start-up time, bytes per client-round, and what caching the
teacher in Flower's ``Context.state`` would cost per message.

1. ``fedadmp simulate`` (subprocess) on the default scenario, evaluation only at the end;
2. the same rounds in one process: same devices, sampling, seeds, teacher and hyper-parameters,
   torch on all cores, FedAvg + ADMM steps, no Flower, no Ray;
3. pickling a node Context with and without the teacher in its state (the simulation copies the
   whole Context to the worker and back on every message).

Usage: python benchmarks/federated_overhead.py [--rounds 6] [--out benchmarks/results/federated_overhead.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import simulate


def simulate_rounds(rounds: int, out: Path, sets: list[str]) -> tuple[Path, float]:
    """Run the simulation (the mask phase from ones, as the plain loop runs it); returns its run
    directory and the wall-clock start time."""
    own = ["admp.keep_init=none", f"federation.mask_rounds={rounds}", "federation.finetune_rounds=1"]
    start = time.time()
    run = simulate([*own, *sets, "federation.eval_every=1000"], out, "overhead")
    return run, start


def plain_loop(run: Path, rounds: int) -> list[float]:
    """The same mask-phase rounds without Flower or Ray (same AdmpState steps); seconds per round."""
    from admp.masks import clone_masks, group_sizes
    from admp.models import groups_of
    from admp.state import AdmmSettings, AdmpState
    from admp.teacher import initial_model
    from admp.trainer import admp_local_train, teacher_targets
    from admp_config.schema import load_config
    from admp_config.seeding import numpy_rng, torch_generator
    from admp_data.tasks import build_task
    from strategies.aggregation import weighted_average

    cfg = load_config(run / "config.yaml")
    hp, fed = cfg.admp, cfg.federation
    torch.set_num_threads(2)
    task = build_task(cfg.data, cfg.run.seed)
    teacher = initial_model(cfg, task.num_classes, task.input_shape)
    teacher.load_state_dict(torch.load(run / "teacher.pt", weights_only=True))
    teacher.eval()
    groups = groups_of(teacher)
    settings = AdmmSettings.from_hyper(hp)
    state = AdmpState.initial(settings, group_sizes(teacher, groups))
    weights = teacher.state_dict()
    times = []
    for rnd in range(1, rounds + 1):
        start = time.perf_counter()
        rng = numpy_rng(cfg.run.seed, "sample", "train", rnd)
        devices = sorted(int(i) for i in rng.choice(task.num_devices, fed.clients_per_round, replace=False))
        results = []
        for dev in devices:
            data = task.device(dev).train.x
            student = copy.deepcopy(teacher)
            student.load_state_dict(weights)
            local = AdmpState(settings, clone_masks(state.m), clone_masks(state.s), state.z, state.u, state.rho)
            admp_local_train(
                student,
                groups,
                local,
                data,
                teacher_targets(teacher, data, hp.teacher_bn),
                fed.local_epochs,
                hp,
                torch_generator(cfg.run.seed, "client", dev, rnd),
            )
            results.append((student.state_dict(), local.m, local.s, len(data)))
        weights = weighted_average([(w, n) for w, _, _, n in results])
        state.m = weighted_average([(mk, n) for _, mk, _, n in results])
        state.s = weighted_average([(sk, n) for _, _, sk, n in results])
        if rnd > fed.warmup_rounds:
            state.admm_step()
        times.append(time.perf_counter() - start)
    return times


def context_costs(run: Path) -> dict[str, Any]:
    """Pickled size and round-trip time of a node Context with and without the teacher."""
    from flwr.app import ConfigRecord, Context, RecordDict

    from strategies import protocol as P

    teacher = torch.load(run / "teacher.pt", weights_only=True)
    out: dict[str, Any] = {}
    for name, state in (
        ("hash_only", RecordDict({"device": ConfigRecord({"teacher_hash": "x" * 64})})),
        (
            "teacher_in_state",
            RecordDict({"device": ConfigRecord({"teacher_hash": "x" * 64}), "teacher": P.to_record(teacher)}),
        ),
    ):
        ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=state, run_config={})
        start = time.perf_counter()
        for _ in range(50):
            blob = pickle.dumps(ctx)
            pickle.loads(blob)
        out[name] = {"pickled_bytes": len(blob), "roundtrip_ms": (time.perf_counter() - start) / 50 * 1e3}
    out["extra_bytes_per_message_if_cached_in_state"] = 2 * (
        out["teacher_in_state"]["pickled_bytes"] - out["hash_only"]["pickled_bytes"]
    )
    return out


def main() -> None:
    """Run the three measurements and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="mask rounds (at least 2: the last one evaluates)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="scenario overrides for both sides, e.g. federation.local_epochs=2",
    )
    parser.add_argument("--out", default="benchmarks/results/federated_overhead.json")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the last mask round evaluates and is not compared)")
    with tempfile.TemporaryDirectory() as tmp:
        run, started = simulate_rounds(args.rounds, Path(tmp), args.set)
        rows = json.loads((run / "metrics.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        sim = [r["round_seconds"] for r in rows if r["phase"] == "mask"][:-1]  # the last one evaluates
        plain = plain_loop(run, args.rounds)[: len(sim)]
        report = {
            "overrides": args.set,
            "rounds_compared": len(sim),
            "simulation_round_seconds": sim,
            "plain_loop_round_seconds": plain,
            "simulation_mean_s": sum(sim) / len(sim),
            "plain_mean_s": sum(plain) / len(plain),
            "startup_seconds_to_first_round": round(summary["first_round_at"] - started, 2),
            "teacher_train_seconds": summary["teacher"].get("train_seconds"),
            "bytes_per_client_round": summary["bytes_per_client_round"],
            "bytes_per_client_round_without_teacher": summary["bytes_per_client_round_without_teacher"],
            "dense_student_bytes": summary["dense_student_bytes"],
            "context": context_costs(run),
        }
        report["ratio_simulation_to_plain"] = report["simulation_mean_s"] / report["plain_mean_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, list)}, indent=2))


if __name__ == "__main__":
    main()
