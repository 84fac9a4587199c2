"""One exchange of messages, from the strategy's configure step to its aggregate step.

Flower's Strategy interface calls ``configure_*`` and later ``aggregate_*`` with nothing in common but
the round number, so what the aggregate step must know about what was sent lives in one object,
replaced whole by each new exchange: which node was asked for which device, the message each node
was sent (its reply must answer that one), whether the replies' statistics become the fleet's
aggregates, and what the replies under validation claim (the bound for devices of unknown size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import Message


@dataclass
class Exchange:
    """The exchange under way: its round, ``asked`` {node id: device}, ``outbox`` {node id: message sent}
    (empty: the replies answer messages bound elsewhere, e.g. SecAgg+'s own), ``collect_stats`` and
    ``claims`` {metric: what each reply under validation claims}."""

    server_round: int
    asked: dict[int, int] = field(default_factory=dict)
    outbox: dict[int, Message] = field(default_factory=dict)
    collect_stats: bool = False
    claims: dict[str, list[float]] = field(default_factory=dict)

    def node_of(self, device: int) -> int:
        """The node ``device`` was asked through (-1: not asked)."""
        return next((node for node, asked in self.asked.items() if asked == device), -1)

    def refusal(self, server_round: int, reply: Message, seen: set[int]) -> str:
        """Why ``reply``, aggregated under ``server_round``, is not one this exchange accepts ("" if it is):
        its node was not asked in this round, it is the node's second reply, or it does not answer the
        message its node was sent (another message's id: stale or cross-round; another message type)."""
        node = reply.metadata.src_node_id
        if node in seen:
            return "a second reply"
        if node not in self.asked or server_round != self.server_round:
            return "not asked this round"
        sent = self.outbox.get(node)
        if sent is None:
            return ""
        sent_id, reply_to = sent.metadata.message_id, reply.metadata.reply_to_message_id
        if sent_id and reply_to != sent_id:
            return "a reply to another message (stale, duplicated or of another round)"
        if not reply.has_error() and reply.metadata.message_type != sent.metadata.message_type:
            return f"a reply of type {reply.metadata.message_type} to a {sent.metadata.message_type} message"
        return ""
