"""The phases of a federated run, each a small function over one shared round runner.

discover -> adapt_teacher -> self_train_teacher (server.teacher_phase) -> mask_phase (FedADMP) or
baseline_start (fedkd, naive) -> finetune_phase -> quantize_phase (server.quantize_phase) -> export_model
-> finish (server.finish). A phase returns None when the
run pauses after ``federation.stop_after_round``; the checkpoint written after every round resumes it.
"""

from __future__ import annotations

import copy

import torch
from flwr.serverapp import Grid
from torch import nn

from admp.centroids import feature_dim
from admp.losses import information_maximisation
from admp.masks import MaskDict, group_sizes, pruned_fraction
from admp.models import example_input
from admp.objective import shares_centroids
from admp.state import AdmmSettings, AdmpState
from admp.surgery import prune_model
from admp.teacher import state_hash
from admp.trainer import norm_layers, teacher_targets
from admp_config.base import ConfigError
from server.clock import FleetClock
from server.fleet import (
    availability,
    device_sizes,
    discover_devices,
    fault_config,
    pool_bn_statistics,
    wait_for_nodes,
)
from server.importance import fleet_choice
from server.rounds import RoundRunner, Weights
from server.selection import select_export, start_candidates
from server.session import Session
from server.setup import RunSetup
from server.starts import Start, mask_start, recover_on_source
from strategies import protocol as P
from strategies.fedadmp import FedADMP
from strategies.fleet import Delivery, Fleet, RoundPolicy
from strategies.privacy import Privacy
from strategies.robust import Defence
from strategies.roster import Roster, SlotRoster
from strategies.selftraining import SharedStats


def teacher_delivery(teacher: nn.Module) -> Delivery:
    """The teacher as the devices fetch it: its record and the content hash they cache it by."""
    state = teacher.state_dict()
    return Delivery(P.to_record(state), state_hash(state))


def source_score(teacher: nn.Module, x: torch.Tensor) -> float:
    """The teacher's label-free score on source inputs ``x`` (eval mode, the source's BN statistics): its
    certainty where it is known to be right, against which ``server.guards.weak_teacher`` reads the fleet's.
    The same information-maximisation objective the devices report for the fleet, on one pool of data."""
    return float(information_maximisation(teacher_targets(teacher, x, bn="source")))


def discover(grid: Grid, run: RunSetup, virtual: bool = False) -> Session:
    """Find the devices and set up what every strategy of the run shares.

    ``virtual``: a simulation whose ``data.num_devices`` virtual devices run on its SuperNodes as slots
    (nothing is asked of them at start-up); else every node is a device that names itself."""
    cfg, fed = run.cfg, run.cfg.federation
    devices: Roster | dict[int, int]
    if virtual:
        slots = wait_for_nodes(grid, fed.simulation_nodes(run.task.num_devices), fed.round_timeout)
        devices = SlotRoster(run.task.num_devices, slots)
    else:
        devices = discover_devices(grid, run.task.num_devices, fed.round_timeout)
    task = run.task
    scenario = P.device_scenario(
        cfg.run.seed, cfg.data.model_dump(), cfg.model.model_dump(), run.arch, task.num_classes, task.input_shape
    )
    base_config = {
        "scenario": scenario,
        "hp": cfg.admp.model_dump(),
        "min_local_steps": fed.min_local_steps,  # every training round of every method
        "max_local_epochs": fed.max_local_epochs,
        "labels": fed.evaluate_labels,  # false: devices evaluate without labels (label-free figures only)
    } | fault_config(fed)
    shared = SharedStats(
        run.task.num_classes,
        marginal_on=cfg.admp.lambda_im > 0 and cfg.admp.im_marginal == "fleet",
        centroids_on=shares_centroids(cfg.admp),
    )
    delivery = teacher_delivery(run.teacher)
    if run.checkpoint is not None:
        shared.load_state_dict(run.checkpoint.fleet_stats)
        held = run.checkpoint.teacher_holders
        if held.get("hash") == delivery.teacher_hash:  # the devices keep it in their cache: not sent again
            delivery.holders = {int(d) for d in held["devices"]}
    local_noise = fed.privacy.mode == "local"  # noised replies are longer than any update bound expects
    robust = fed.robust
    update_bound = 0.0 if local_noise else robust.max_update_ratio
    defence = Defence(robust.aggregation, robust.trim_fraction, robust.clip_norm, update_bound)
    sizes = device_sizes(task) if fed.device_data == "scenario" else None  # own data: sizes the server cannot know
    fleet = Fleet(devices, cfg.run.seed, delivery, base_config, shared=shared, defence=defence, capacity=sizes)
    fleet.available, fleet.over_selection = availability(fed, cfg.run.seed), fed.profiles.over_selection
    if fed.privacy.active:
        training_rounds = final_round(run) - 1
        fleet.privacy = Privacy(fed.privacy, len(fleet.roster), fed.clients_per_round, training_rounds, cfg.run.seed)
        if cfg.admp.trainable == "norm":  # devices change only these layers: the rest is not released
            fleet.privacy.modules = sorted(norm_layers(run.model()))
        if run.checkpoint is not None:
            fleet.privacy.load_state_dict(run.checkpoint.privacy)
    elif run.checkpoint is not None and run.checkpoint.privacy:
        raise ConfigError("federation.privacy: the checkpoint's rounds were private; resume with its privacy settings")
    policy = RoundPolicy(fed.clients_per_round, fed.min_replies, fed.eval_clients)
    local_bn = fed.bn_recalibration == "local"
    clock = FleetClock.from_spec(fed.profiles, cfg.run.seed)
    runner = RoundRunner(grid, run.run_dir, run.console, fed.round_timeout, fed.eval_every, local_bn, clock=clock)
    runner.secure = fed.secure_aggregation if fed.secure_aggregation.enabled else None
    run.console.print(
        f"[bold]FedADMP federated[/bold] strategy={fed.strategy} dataset={run.task.name} "
        f"arch={run.arch} devices={len(fleet.roster)} -> {run.run_dir.path}"
    )
    return Session(run, fleet, policy, runner)


def adapt_teacher(session: Session) -> None:
    """The KD teacher's BN statistics (``admp.teacher_bn``) and its accuracy before any training.

    ``fleet``: the BN statistics are replaced by moments pooled over the devices' unlabeled data,
    one BN layer deeper per query so every layer sees adapted inputs; that teacher is the one
    delivered. ``local``: each device adapts its own copy; here it is only evaluated that way.
    """
    run = session.run
    if run.checkpoint is not None:
        return  # resumed: the checkpoint holds the teacher as adapted
    mode = run.cfg.admp.teacher_bn
    run.teacher_info["source_label_free_score"] = source_score(run.teacher, run.task.source_val.x)
    probe = session.kd_strategy(run.teacher.state_dict(), None)
    figures = session.runner.evaluate_all(probe, 0, run.teacher.state_dict())
    run.teacher_info["target_acc"] = figures.get("accuracy")
    if mode == "fleet":
        adapted = copy.deepcopy(run.teacher)
        pool_bn_statistics(session.runner, probe, adapted, 0)
        run.teacher = adapted.eval()
        session.fleet.delivery = teacher_delivery(run.teacher)  # nothing was sent yet
    if mode in ("fleet", "local"):
        figures = session.runner.evaluate_all(probe, 0, run.teacher.state_dict(), local_bn=mode == "local")
        run.teacher_info["target_acc_target_bn"] = figures.get("accuracy")
    run.teacher_info["label_free_score"] = figures.get("label-free-score")  # the teacher the run starts from
    adapted_acc = run.teacher_info.get("target_acc_target_bn")
    target = run.teacher_info["target_acc"]
    run.console.print(
        f"teacher: source val {run.teacher_info['source_val_acc']:.2f}%  federated target test "
        + (f"{target:.2f}%" if target is not None else "- (no labels)")
        + (f" ({mode} BN {adapted_acc:.2f}%)" if adapted_acc is not None else "")
    )


def mask_phase(session: Session) -> Start | None:
    """Federated ADMP rounds, then the merge: m = Z and physical removal of the pruned channels."""
    run, fed = session.run, session.run.cfg.federation
    ckpt = run.checkpoint
    if ckpt is not None and ckpt.phase != "mask":
        return Start(ckpt.student, ckpt.keep or None, ckpt.mask_rounds_done)
    settings = AdmmSettings.from_hyper(run.cfg.admp)
    state = AdmpState.initial(settings, group_sizes(run.teacher, run.groups))
    session.fleet.shared.start_phase(feature_dim(run.teacher))
    offset = run.teacher_rounds_played()  # round numbers continue after the teacher's self-training
    first, cloud = offset + 1, None
    if ckpt is not None:
        state.load_state_dict(ckpt.admp)
        weights, first = ckpt.student, ckpt.round + 1
    else:
        weights, start_keep = mask_start(run, fleet_choice(session, offset))  # ones, or a keep set, recovered
        if start_keep is not None:
            state = AdmpState.warm_started(settings, start_keep)
        if start_keep is not None and run.cfg.admp.keep_init != "fisher":  # its start is the cloud's own
            cloud = Start(_pruned_weights(run, weights, start_keep), start_keep, offset + fed.mask_rounds)
    strategy = FedADMP(
        weights=weights,
        state=state,
        s_min=run.cfg.admp.s_min,
        warmup_rounds=offset + fed.warmup_rounds,
        dual=fed.dual,
        local_epochs=fed.local_epochs,
        fleet=session.fleet,
        policy=session.policy,
    )
    if ckpt is None:  # the first round trains on the fleet's statistics of the starting model
        session.runner.evaluate_all(strategy, offset, weights, session.runner.local_bn, fleet_stats=True)
    on_round = session.checkpointer("mask", lambda: {"admp": state.state_dict()})
    last = offset + fed.mask_rounds
    rounds = range(first, last + 1)
    weights, finished = session.runner.run_rounds(strategy, "mask", weights, rounds, on_round, whole_phase=ckpt is None)
    if not finished:
        return None
    keep = state.merge_mask()
    recovery = "student" if run.cfg.admp.trainable == "norm" else run.cfg.admp.merge_recovery
    dense = run.model()
    dense.load_state_dict(run.teacher.state_dict() if recovery == "teacher" else weights)
    pruned = prune_model(dense, run.groups, keep, example_input(dense))  # m = Z folded, channels removed
    if recovery != "none":
        val_acc = recover_on_source(run, pruned, "merge")
        run.console.print(f"merged {recovery} recovered on the source: val acc {val_acc:.2f}%")
    pruned_share = pruned_fraction(keep)
    run.run_dir.log_metrics({"phase": "merge", "step": last, "round": last, "channels_pruned": pruned_share})
    run.console.print(f"merged: {pruned_share:.0%} of channels physically removed")
    return Start(pruned.state_dict(), keep, last, cloud)


def _pruned_weights(run: RunSetup, weights: Weights, keep: MaskDict) -> Weights:
    """The physically pruned copy of a dense (gated) student's weights."""
    dense = run.model()
    dense.load_state_dict(weights)
    return prune_model(dense, run.groups, keep, example_input(dense)).state_dict()


def finetune_phase(session: Session, start: Start) -> tuple[Weights, MaskDict | None] | None:
    """KD rounds on the plain (pruned or dense) student and the label-free choice of what to export
    (``server.selection``); returns its weights and keep set (None: dense).

    The baselines get the mask phase's rounds too, so every method spends the same round budget.
    """
    run, cfg, fed = session.run, session.run.cfg, session.run.cfg.federation
    if run.checkpoint is not None and run.checkpoint.phase == "quant":  # chosen already; quantizing it
        return start.weights, start.keep
    fedadmp = fed.strategy == "fedadmp"
    rounds = fed.finetune_rounds if fedadmp else fed.mask_rounds + fed.finetune_rounds
    lr = cfg.admp.finetune_lr if fedadmp else cfg.admp.lr
    strategy = session.kd_strategy(start.weights, start.keep, fed.local_epochs, lr)
    session.fleet.shared.start_phase(feature_dim(run.model(start.keep)))
    offset, first = start.mask_rounds_done, start.mask_rounds_done + 1
    if run.checkpoint is not None and run.checkpoint.phase == "kd":
        first, starts = run.checkpoint.round + 1, run.checkpoint.phase_start
        if "weights" in starts:  # a checkpoint that held only the phase's start and its score
            starts = {"start": starts | {"keep": start.keep or {}}}
    else:  # the candidates the phase's result must beat, scored before it trains
        starts = start_candidates(session, strategy, start, offset)
    extra = {"keep": start.keep or {}, "mask_rounds_done": offset, "phase_start": starts}
    weights, finished = session.runner.run_rounds(
        strategy,
        "finetune",
        start.weights,
        range(first, offset + rounds + 1),
        session.checkpointer("kd", lambda: extra),
        whole_phase=first == offset + 1,
    )
    if not finished:
        return None
    return select_export(session, weights, start.keep, starts, offset + rounds)


def export_model(session: Session, weights: Weights, keep: MaskDict | None) -> nn.Module:
    """The model to export: ``weights`` with BN statistics pooled from the devices (where the run pools)."""
    run, fed = session.run, session.run.cfg.federation
    model = run.model(keep)
    model.load_state_dict(weights)
    if fed.bn_recalibration in ("global", "local") and not fed.privacy.active:  # private: devices adapt BN
        pool_bn_statistics(session.runner, session.kd_strategy(weights, keep), model, final_round(run))
    return model.eval()


def final_round(run: RunSetup) -> int:
    """The round number of the final evaluation (after every training round)."""
    fed = run.cfg.federation
    return run.teacher_rounds_played() + fed.mask_rounds + fed.finetune_rounds + run.cfg.quantize.admm_rounds() + 1
