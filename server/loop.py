"""The federated run on the server: teacher, mask phase, merge, fine-tune, BN recalibration, export.

Every round ends with a checkpoint (``checkpoint.pt`` in the run directory: teacher, student,
masks, duals, rho, phase, round), and ``resume`` continues from it. Sampling is derived from the
root seed and the round, and replies are aggregated in device order, so a resumed run reaches the
same model as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from rich.console import Console

from admp.config import ScenarioConfig, to_yaml
from admp.data.tasks import build_task
from admp.admm import z_step
from admp.masks import group_sizes, zeros_masks
from admp.metrics import accuracy
from admp.models import example_input
from admp.seeding import seed_everything, torch_generator
from admp.surgery import l1_filter_scores, prune_model
from admp.teacher import initial_model, prepare_teacher, resolve_arch, state_hash
from admp.trainer import train_supervised
from server.export import export_and_measure
from server.fleet import discover_devices, recalibrate_from_clients
from server.report import RunDirectory, print_summary
from strategies import protocol as P
from strategies.base import Delivery, FleetStrategy, Rejection
from strategies.fedadmp import FedADMP, FedKD

log = logging.getLogger("fedadmp.server")
CHECKPOINT = "checkpoint.pt"


class Paused(Exception):
    """Raised after the checkpoint of ``federation.stop_after_round``."""


class FederatedRun:
    """One federated run (FedADMP or a baseline) driven through a Flower ``Grid``."""

    def __init__(self, grid: Grid, cfg: ScenarioConfig, console: Console | None = None,
                 resume: str | Path | None = None) -> None:
        self.grid, self.cfg = grid, cfg
        self.console = console or Console()
        self.fed = cfg.federation
        seed_everything(cfg.run.seed)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.task = build_task(cfg.data, cfg.run.seed)  # the server reads only the labeled source
        self.arch = resolve_arch(cfg)
        self.ckpt: dict[str, Any] | None = None
        if resume:
            self.ckpt = torch.load(Path(resume) / CHECKPOINT, map_location="cpu", weights_only=True)
            self.run_dir = RunDirectory.reopen(resume, keep_rows=int(self.ckpt["rows"]))
            self.teacher = initial_model(cfg, self.task.num_classes)
            self.teacher.load_state_dict(self.ckpt["teacher"])
            self.teacher.eval()
            self.teacher_info = dict(self.ckpt["teacher_info"])
        else:
            self.run_dir = RunDirectory(cfg.run.out_dir, cfg.run.name)
            self.run_dir.write_text("config.yaml", to_yaml(cfg))
            self.teacher, self.teacher_info = prepare_teacher(cfg, self.task)
            torch.save(self.teacher.state_dict(), self.run_dir.file("teacher.pt"))
        self.groups = self.teacher.channel_groups()
        teacher_state = self.teacher.state_dict()
        self.delivery = Delivery(P.state_to_record(teacher_state), state_hash(teacher_state))
        scenario = {"seed": cfg.run.seed, "data": dataclasses.asdict(cfg.data), "model": dataclasses.asdict(cfg.model),
                    "arch": self.arch, "num_classes": self.task.num_classes}
        self.base_config = {"scenario": scenario, "hp": dataclasses.asdict(cfg.admp),
                            "teacher_store": str(self.run_dir.file("device_store"))}
        self.dense_bytes = P.state_to_record(teacher_state).count_bytes()
        self.rejections: list[Rejection] = []
        self.started = time.perf_counter()
        self.first_round_at: float | None = None  # wall clock of the first round, for start-up time

    # --- helpers -----------------------------------------------------------------------------
    def _strategy_kwargs(self) -> dict[str, Any]:
        return {"seed": self.cfg.run.seed, "clients_per_round": self.fed.clients_per_round,
                "delivery": self.delivery, "base_config": self.base_config,
                "min_replies": self.fed.min_replies, "eval_clients": self.fed.eval_clients,
                "rejections": self.rejections}

    def _attach(self, strategy: FleetStrategy) -> FleetStrategy:
        strategy.devices = self.devices
        return strategy

    def _checkpoint(self, phase: str, rnd: int, student: dict, keep: dict | None,
                    strategy_state: dict, extra: dict | None = None) -> None:
        state = {"phase": phase, "round": rnd, "student": student, "keep": keep or {},
                 "strategy": strategy_state, "teacher": self.teacher.state_dict(),
                 "teacher_info": self.teacher_info, "rows": len(self.run_dir.rows)} | (extra or {})
        tmp = self.run_dir.file(CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.run_dir.file(CHECKPOINT))
        if phase != "done" and 0 < self.fed.stop_after_round <= rnd:
            raise Paused(f"paused after round {rnd}; continue with: fedadmp simulate --resume {self.run_dir.path}")

    def evaluate(self, strategy: FleetStrategy, rnd: int, weights: dict) -> float | None:
        """Federated evaluation of ``weights``; weighted accuracy over the devices that answered."""
        msgs = list(strategy.configure_evaluate(rnd, P.state_to_record(weights), ConfigRecord(), self.grid))
        replies = self.grid.send_and_receive(msgs, timeout=self.fed.round_timeout)
        result = strategy.aggregate_evaluate(rnd, replies)
        return float(result["accuracy"]) if result is not None else None

    def play_round(self, strategy: FleetStrategy, phase: str, rnd: int, weights: dict, last: bool) -> dict:
        """Train, aggregate, evaluate and log one round; returns the (possibly unchanged) weights."""
        start = time.perf_counter()
        self.first_round_at = self.first_round_at or time.time()
        sends_before = sum(self.delivery.sends.values())
        msgs = list(strategy.configure_train(rnd, P.state_to_record(weights), ConfigRecord(), self.grid))
        replies = self.grid.send_and_receive(msgs, timeout=self.fed.round_timeout)
        new_arrays, metrics = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            weights = P.record_to_state(new_arrays)
        row: dict[str, Any] = {"phase": phase, "step": rnd, "round": rnd, "clients": len(msgs),
                               "bytes_down": strategy.last_bytes["down"], "bytes_up": strategy.last_bytes["up"],
                               "teacher_sends": sum(self.delivery.sends.values()) - sends_before}
        row["bytes_down_teacher"] = row["teacher_sends"] * self.delivery.teacher.count_bytes()
        row |= {k.replace("-", "_"): float(v) for k, v in (metrics or {}).items()}
        row["target_acc"] = (self.evaluate(strategy, rnd, weights)
                             if rnd % self.fed.eval_every == 0 or last else None)
        row["round_seconds"] = round(time.perf_counter() - start, 3)
        self.run_dir.log_metrics(row)
        acc = f"{row['target_acc']:.2f}" if row["target_acc"] is not None else "-"
        self.console.print(f"\\[{phase}] round {rnd:>3}  acc {acc:>6}  ok {int(row.get('valid_replies', 0))}/{len(msgs)}"
                           f"  D {row.get('divergence', float('nan')):.3f}  down {row['bytes_down'] / 1e6:.2f}MB"
                           f"  up {row['bytes_up'] / 1e6:.2f}MB  {row['round_seconds']:.1f}s", soft_wrap=True)
        return weights

    # --- phases ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or resume) every phase and write the summary."""
        if self.ckpt is not None and self.ckpt["phase"] == "done":
            self.console.print(f"run already finished: {self.run_dir.path}")
            return json.loads(self.run_dir.file("summary.json").read_text())
        self.devices = discover_devices(self.grid, self.task.num_devices, self.fed.round_timeout)
        self.console.print(f"[bold]FedADMP federated[/bold] strategy={self.fed.strategy} dataset={self.task.name} "
                           f"arch={self.arch} devices={len(self.devices)} -> {self.run_dir.path}")
        if self.ckpt is None:
            probe = self._attach(FedKD(self.teacher.state_dict(), None, 1, 0.0, **self._strategy_kwargs()))
            self.teacher_info["target_acc"] = self.evaluate(probe, 0, self.teacher.state_dict())
            self.adapt_teacher_bn(probe)
        try:
            if self.fed.strategy == "fedadmp":
                student, keep, last_round = self.mask_phase()
            else:
                student, keep, last_round = self.baseline_start()
            student, model = self.kd_phase(student, keep, last_round)
        except Paused as pause:
            self.console.print(str(pause))
            return {"run_dir": str(self.run_dir.path), "paused": True}
        return self.finish(model, keep)

    def adapt_teacher_bn(self, probe: FleetStrategy) -> None:
        """The KD teacher's BN statistics (``admp.teacher_bn``) and its accuracy with them, untrained.

        ``fleet``: the teacher's BN statistics are replaced by moments pooled over the devices'
        unlabeled data, one BN layer deeper per query so every layer sees adapted inputs; the
        adapted teacher is the one delivered. ``local``: each device adapts its copy (on the
        device); here it is only evaluated that way. The accuracy is the zero-training reference.
        """
        mode = self.cfg.admp.teacher_bn
        if mode == "fleet":
            adapted = copy.deepcopy(self.teacher)
            layers = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in adapted.modules())
            for _ in range(layers):
                recalibrate_from_clients(self.grid, probe, adapted, 0, self.fed.round_timeout)
            self.teacher = adapted.eval()
            state = self.teacher.state_dict()
            self.delivery = Delivery(P.state_to_record(state), state_hash(state))  # none sent yet
        if mode in ("fleet", "local"):
            probe.base_config = self.base_config | {"local_bn": mode == "local"}
            self.teacher_info["target_acc_target_bn"] = self.evaluate(probe, 0, self.teacher.state_dict())
        adapted_acc = self.teacher_info.get("target_acc_target_bn")
        self.console.print(f"teacher: source val {self.teacher_info['source_val_acc']:.2f}%  "
                           f"federated target test {self.teacher_info['target_acc']:.2f}%"
                           + (f" ({mode} BN {adapted_acc:.2f}%)" if adapted_acc is not None else ""))

    def mask_phase(self) -> tuple[dict, dict, int]:
        """Federated ADMP rounds, then the merge into a physically pruned model's keep masks."""
        sizes = group_sizes(self.teacher, self.groups)
        strategy = self._attach(FedADMP(
            self.teacher.state_dict(), sizes, self.cfg.admp.prune_ratio, self.cfg.admp.rho,
            self.cfg.admp.rho_gamma, self.cfg.admp.rho_max, self.cfg.admp.s_min, self.fed.warmup_rounds,
            self.fed.dual, self.fed.local_epochs, self.cfg.admp.prune_ramp, **self._strategy_kwargs()))
        weights, first = self.teacher.state_dict(), 1
        if self.ckpt is not None:
            if self.ckpt["phase"] != "mask":
                return self.ckpt["student"], self.ckpt["keep"], int(self.ckpt["mask_rounds_done"])
            strategy.load_state_dict(self.ckpt["strategy"])
            weights, first = self.ckpt["student"], int(self.ckpt["round"]) + 1
        rounds = self.fed.mask_rounds
        for rnd in range(first, rounds + 1):
            weights = self.play_round(strategy, "mask", rnd, weights, last=rnd == rounds)
            self._checkpoint("mask", rnd, weights, None, strategy.state_dict())
        keep = strategy.merge_mask()
        dense = initial_model(self.cfg, self.task.num_classes)
        dense.load_state_dict(weights)
        pruned = prune_model(dense, self.groups, keep, example_input(dense))
        kept = sum(int(k.sum()) for k in keep.values()) / sum(k.numel() for k in keep.values())
        self.run_dir.log_metrics({"phase": "merge", "step": rounds, "round": rounds, "channels_pruned": 1 - kept})
        self.console.print(f"merged: {1 - kept:.0%} of channels physically removed")
        return pruned.state_dict(), keep, rounds

    def baseline_start(self) -> tuple[dict, dict | None, int]:
        """fedkd: the dense teacher copy; naive: L1-norm pruning on the cloud + source fine-tuning."""
        if self.ckpt is not None:
            return self.ckpt["student"], self.ckpt["keep"] or None, 0
        if self.fed.strategy == "fedkd":
            return self.teacher.state_dict(), None, 0
        example = example_input(self.teacher)
        scores = l1_filter_scores(self.teacher, self.groups, example)
        keep = z_step(scores, zeros_masks({g: v.numel() for g, v in scores.items()}), self.cfg.admp.prune_ratio)
        pruned = prune_model(self.teacher, self.groups, keep, example)
        train_supervised(pruned, self.task.source_train.x, self.task.source_train.y, max(1, self.cfg.teacher.epochs // 3),
                         self.cfg.teacher.lr / 5, self.cfg.teacher.batch_size, torch_generator(self.cfg.run.seed, "naive"))
        self.console.print(f"naive: L1-pruned on the cloud, source val acc "
                           f"{accuracy(pruned, self.task.source_val.x, self.task.source_val.y):.2f}%")
        return pruned.state_dict(), keep, 0

    def kd_phase(self, weights: dict, keep: dict | None, offset: int) -> tuple[dict, torch.nn.Module]:
        """KD rounds on the plain (pruned or dense) student, then BN recalibration from clients."""
        rounds = self.fed.finetune_rounds if self.fed.strategy == "fedadmp" else self.fed.mask_rounds + self.fed.finetune_rounds
        lr = self.cfg.schedule.finetune_lr if self.fed.strategy == "fedadmp" else self.cfg.admp.lr
        strategy = self._attach(FedKD(weights, keep, self.fed.local_epochs, lr, **self._strategy_kwargs()))
        first = offset + 1
        if self.ckpt is not None and self.ckpt["phase"] == "kd":
            first = int(self.ckpt["round"]) + 1
        for rnd in range(first, offset + rounds + 1):
            weights = self.play_round(strategy, "finetune", rnd, weights, last=False)  # a final eval follows
            self._checkpoint("kd", rnd, weights, keep, {}, {"mask_rounds_done": offset})
        model = initial_model(self.cfg, self.task.num_classes)
        if keep:
            model = prune_model(model, self.groups, keep, example_input(model))
        model.load_state_dict(weights)
        if self.fed.bn_recalibration in ("global", "local"):
            recalibrate_from_clients(self.grid, strategy, model, offset + rounds + 1, self.fed.round_timeout)
        return model.state_dict(), model.eval()

    def finish(self, model: torch.nn.Module, keep: dict | None) -> dict[str, Any]:
        """Final federated evaluation, export, summary table and plots."""
        final_round = self.fed.mask_rounds + self.fed.finetune_rounds + 1
        kwargs = self._strategy_kwargs()
        kwargs["base_config"] = self.base_config | {"local_bn": self.fed.bn_recalibration == "local"}
        strategy = self._attach(FedKD(model.state_dict(), keep, 1, 0.0, **kwargs))
        acc = self.evaluate(strategy, final_round, model.state_dict())
        self.run_dir.log_metrics({"phase": "final", "step": final_round, "round": final_round, "target_acc": acc})
        report = export_and_measure(self.run_dir, self.teacher, model, self.groups, self.task.source_val.x[:32])
        rows = [r for r in self.run_dir.rows if r.get("bytes_down")]
        per_client = [(r["bytes_down"] + r["bytes_up"]) / max(r["clients"], 1) for r in rows]
        no_teacher = [(r["bytes_down"] - r["bytes_down_teacher"] + r["bytes_up"]) / max(r["clients"], 1) for r in rows]
        summary: dict[str, Any] = {
            "run_dir": str(self.run_dir.path), "mode": "federated", "strategy": self.fed.strategy,
            "dataset": self.task.name, "arch": self.arch, "seed": self.cfg.run.seed,
            "prune_ratio": self.cfg.admp.prune_ratio if keep else 0.0, "devices": len(self.devices),
            **report, "wall_seconds": round(time.perf_counter() - self.started, 2),
            "first_round_at": self.first_round_at,
            "bytes_per_client_round": sum(per_client) / max(len(per_client), 1),
            "bytes_per_client_round_without_teacher": sum(no_teacher) / max(len(no_teacher), 1),
            "dense_student_bytes": self.dense_bytes,
            "teacher_sends": {str(k): v for k, v in sorted(self.delivery.sends.items())},
            "rejections": [dataclasses.asdict(r) for r in self.rejections],
        }
        summary["teacher"] |= {k: v for k, v in self.teacher_info.items() if k != "final_loss"}
        summary["student"]["target_acc"] = acc
        summary["channels_pruned"] = 1 - sum(summary["student"]["channels"].values()) / sum(summary["teacher"]["channels"].values())
        self.run_dir.write_json("summary.json", summary)
        self.run_dir.plot_training(x_key="round")
        self._checkpoint("done", final_round, model.state_dict(), keep, {})
        print_summary(summary, f"Federated {self.fed.strategy} on {self.task.name}", self.console)
        return summary
