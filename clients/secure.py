"""Secure aggregation on the device (``federation.secure_aggregation``): Flower's ``secaggplus_mod``
around our training handlers.

The server's SecAgg+ workflow sends a round as four ``train`` messages (set-up, key shares, the
training message itself with the masked-vector stage, unmasking), each carrying the ``secaggplus``
config record. This mod hands them to Flower's ``secaggplus_mod``; for the training stage it runs the
handler the message is for (``train`` for the mask phase, ``train.kd`` where its config's phase is
``kd``: Flower's mod only takes message type ``train``), and lays the reply out as Flower's legacy
``FitRes`` whose parameters are our summed arrays (``strategies.secure.secure_vector``). Flower's
mod then masks them and empties every array record, so only the masked vector, the entries' names
and the clear metrics leave the device.
"""

from __future__ import annotations

import functools

from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from clients.device import config_record
from strategies import protocol as P
from strategies.secure import LAYOUT, layout_record, secure_vector


def secure_aggregation(train_kd: ClientAppCallable) -> Mod:
    """The mod that runs a SecAgg+ stage message through Flower's ``secaggplus_mod`` (any other message
    goes on as it is); ``train_kd`` answers the KD phase's training messages, the app's other handler."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if RECORD_KEY_CONFIGS not in msg.content.config_records:
            return call_next(msg, context)
        return secaggplus_mod(msg, context, functools.partial(_masked_reply, call_next, train_kd))

    return mod


def _masked_reply(call_next: ClientAppCallable, train_kd: ClientAppCallable, inner: Message, ctx: Context) -> Message:
    """The device's training reply to a SecAgg+ round, with its vector laid out for the masking."""
    handler = train_kd if str(config_record(inner.content).get("phase", "")) == "kd" else call_next
    reply = handler(inner, ctx)
    if reply.has_error():
        return reply
    names, arrays = secure_vector(reply.content, inner.content)
    n = int(P.metric(reply.content, P.NUM_EXAMPLES))
    legacy = fitres_to_recorddict(FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {}), False)
    for key, record in legacy.items():
        reply.content[key] = record
    reply.content[LAYOUT] = layout_record(names)
    return reply
