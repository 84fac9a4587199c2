"""The quantization phase: federated ADMM rounds that pull the chosen student onto integer levels, then
the final projection (``quantize.method: admm``); the projection alone for ``ptq``."""

from __future__ import annotations

from typing import Any

from admp.masks import MaskDict
from admp.quantize import QuantSettings, QuantState, project_weights, quantized_weights
from admp_config.schema import ScenarioConfig
from server.phases import final_round
from server.precision import planned_bits
from server.rounds import Weights
from server.session import Session
from strategies.quantize import QuantKD


def quant_settings(cfg: ScenarioConfig) -> QuantSettings:
    """The run's stages and rounds; the penalty on the masks' schedule (``admp.rho``, ``rho_gamma``,
    ``rho_max``), as the quantization constraint is one more ADMM constraint of the same problem."""
    q, hp = cfg.quantize, cfg.admp
    rho0 = hp.rho if hp.rho > 0 else 1.0  # the masks' no-ADMM ablation does not switch off quantization
    return QuantSettings(tuple(q.bits), q.rounds_per_stage, rho0, hp.rho_gamma, hp.rho_max)


def final_bits(session: Session, keep: MaskDict | None) -> dict[str, int]:
    """Every quantized weight's bits in the exported model: the last stage's."""
    bits = session.run.cfg.quantize.bits
    return {name: bits[-1] for name in quantized_weights(session.run.model(keep))}


def quantize_phase(session: Session, weights: Weights, keep: MaskDict | None) -> tuple[Weights, dict[str, Any]] | None:
    """The chosen student's weights on their integer levels and what the summary says of them; None when
    the run paused in the phase (its checkpoint resumes it)."""
    run = session.run
    q = run.cfg.quantize
    if not q.active:
        return weights, {}
    info: dict[str, Any] = {"method": q.method, "stages": list(q.bits)}
    bits = final_bits(session, keep)
    ckpt = run.checkpoint
    if ckpt is not None and ckpt.phase == "quant":  # the allocation made before the phase's first round
        bits, info = dict(ckpt.quant["bits"]), dict(ckpt.quant["info"])
    elif q.mixed:
        bits, info["mixed_precision"] = planned_bits(session, weights, keep, final_round(run) - 1 - q.admm_rounds())
    info["bits"] = bits
    if q.method == "admm":
        trained = _admm_rounds(session, weights, keep, bits, info)
        if trained is None:
            return None
        weights, info["residual_before_projection"] = trained
    return project_weights(weights, bits), info


def _admm_rounds(
    session: Session, weights: Weights, keep: MaskDict | None, bits: dict[str, int], info: dict[str, Any]
) -> tuple[Weights, float] | None:
    """The federated ADMM rounds (``QuantKD``); the weights and their relative distance to Z at the end."""
    run, cfg = session.run, session.run.cfg
    settings = quant_settings(cfg)
    state = QuantState(settings, bits)
    last = final_round(run) - 1
    first = last - settings.rounds + 1
    start = first
    ckpt = run.checkpoint
    if ckpt is not None and ckpt.phase == "quant":
        state.load_state_dict(ckpt.quant["state"])
        session.selection = dict(ckpt.quant["selection"])
        weights, start = ckpt.student, ckpt.round + 1
    fedadmp = cfg.federation.strategy == "fedadmp"
    strategy = QuantKD(
        quant=state,
        first_round=first,
        dual=cfg.quantize.dual,
        weights=weights,
        keep=keep,
        local_epochs=cfg.federation.local_epochs,
        lr=cfg.admp.finetune_lr if fedadmp else cfg.admp.lr,
        fleet=session.fleet,
        policy=session.policy,
    )
    selection, kept = session.selection, keep or {}
    on_round = session.checkpointer(
        "quant",
        lambda: {
            "keep": kept,
            "quant": {"state": state.state_dict(), "selection": selection, "bits": bits, "info": info},
        },
    )
    weights, finished = session.runner.run_rounds(
        strategy, "quantize", weights, range(start, last + 1), on_round, whole_phase=start == first
    )
    return (weights, state.residual(weights)) if finished else None
