"""A device's side of ADMM weight quantization: the penalty towards the server's targets and, with
``quantize.dual: per_client``, the device's own dual U_k.

The server's ``quant`` record holds T = Z - U (global dual) or Z (per-client duals). A device with its
own dual keeps U_k, its weights after its last training and the (stage, Z-step, rho) it trained under,
between rounds: a file per virtual device in a simulation, the node state on a real device (as the
masks' dual, ``clients.device``). On its next round it resets U_k at a new stage, advances it after a
new Z (``admp.quantize.advance_dual``), trains towards Z - U_k and sends U_k back for the server's
consensus step. Nothing of it is checkpointed: a resumed run restarts the duals, as the masks' do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Context, Message
from torch import nn

from admp.quantize import TensorDict, advance_dual, weight_penalty
from clients.device import config_float, config_int, keep_device_state, prefixed, read_device_state, unprefixed
from clients.job import Job
from strategies import protocol as P

STATE = "qdual"  # the state's name: the file name's stem, the node state's record (plus "qdual-meta")


@dataclass
class SavedDual:
    """What a device keeps of its quantization dual between rounds."""

    u: TensorDict
    last_w: TensorDict
    stage: int
    steps: int
    rho: float


def load_quant_dual(context: Context, device: int) -> SavedDual | None:
    """The device's saved dual, or None before its first round of the phase."""
    saved = read_device_state(context, device, STATE)
    if saved is None:
        return None
    tensors, meta = saved
    u, last_w = unprefixed(tensors, "u"), unprefixed(tensors, "w")
    return SavedDual(u, last_w, int(meta["stage"]), int(meta["steps"]), meta["rho"])


def save_quant_dual(context: Context, device: int, dual: SavedDual) -> None:
    """Keep the device's dual: in its own file on a simulation slot, else in the node state."""
    meta = {"stage": float(dual.stage), "steps": float(dual.steps), "rho": dual.rho}
    keep_device_state(context, device, STATE, prefixed(u=dual.u, w=dual.last_w), meta)


def current_dual(saved: SavedDual | None, z: TensorDict, stage: int, steps: int, rho: float) -> TensorDict:
    """The dual this round trains with: zero at a new stage (or a first round), advanced after a new Z,
    else as saved."""
    if saved is None or saved.stage != stage or set(saved.u) != set(z):
        return {k: torch.zeros_like(v) for k, v in z.items()}
    if saved.steps != steps:
        return advance_dual(saved.u, saved.last_w, z, saved.rho, rho)
    return saved.u


@dataclass
class QuantTerm:
    """The round's quantization penalty, and the device's own dual where it keeps one."""

    penalty: Callable[[nn.Module], torch.Tensor]
    dual: SavedDual | None = None

    def finish(self, context: Context, device: int, student: nn.Module) -> dict[str, ArrayRecord]:
        """After training: keep U_k with the trained weights and return the reply's ``qdual`` record."""
        if self.dual is None:
            return {}
        params = dict(student.named_parameters())
        self.dual.last_w = {k: params[k].detach().clone() for k in self.dual.u}
        save_quant_dual(context, device, self.dual)
        return {P.QUANT_DUAL: P.to_record(self.dual.u)}


def quantization_term(msg: Message, job: Job, context: Context, student: nn.Module) -> QuantTerm | None:
    """The ADMM quantization term (rho / 2) * ||W - T||^2 when the message carries ``quant``, each target
    checked against the student's weight of that name (shape, finite values); with per-client duals
    T = Z - U_k. None when the message has no quantization."""
    if P.QUANT not in msg.content:
        return None
    targets = P.from_record(P.array_record(msg.content, P.QUANT))
    params = dict(student.named_parameters())
    for name, target in targets.items():
        if name not in params or params[name].shape != target.shape or not bool(torch.isfinite(target).all()):
            raise ValueError(f"quant.{name}: not a finite target of one of the student's weights (shape, name)")
    rho = config_float(job.config, "quant-rho")
    if str(job.config.get("quant-dual", "global")) != "per_client":
        return QuantTerm(lambda model: weight_penalty(model, targets, rho))
    stage, steps = config_int(job.config, "quant-stage"), config_int(job.config, "quant-steps")
    u = current_dual(load_quant_dual(context, job.device), targets, stage, steps, rho)
    shifted = {k: targets[k] - u[k] for k in targets}
    return QuantTerm(lambda model: weight_penalty(model, shifted, rho), SavedDual(u, {}, stage, steps, rho))
