"""Communication tracker, as in FlowerTune: bytes each way per round.

Counts the payload Flower serialises (array bytes plus keys, config and metric values) for every
message the server sends and every reply it receives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable


def _config_bytes(record: Any) -> int:
    """As ConfigRecord.count_bytes (8 bytes a number, 1 a bool, the length of str/bytes, plus
    the keys), which raises on an empty string."""
    def size(value: Any) -> int:
        if isinstance(value, bool):
            return 1
        if isinstance(value, (int, float)):
            return 8
        return len(value)

    return sum(len(k) + (sum(size(x) for x in v) if isinstance(v, list) else size(v)) for k, v in record.items())


def payload_bytes(content: Any) -> int:
    """Bytes of a RecordDict's records (ArrayRecord / ConfigRecord / MetricRecord)."""
    total = sum(record.count_bytes() for record in content.array_records.values())
    total += sum(record.count_bytes() for record in content.metric_records.values())
    total += sum(_config_bytes(record) for record in content.config_records.values())
    return total


@dataclass
class RoundTraffic:
    down_bytes: int = 0          # server -> nodes
    up_bytes: int = 0            # nodes -> server
    messages_down: int = 0
    replies_up: int = 0

    @property
    def per_node_round_bytes(self) -> float:
        """What one node moves in one round (download + upload), averaged over the nodes."""
        nodes = max(self.messages_down, 1)
        return (self.down_bytes + self.up_bytes) / nodes


class CommunicationTracker:
    def __init__(self) -> None:
        self.rounds: dict[int, RoundTraffic] = {}

    def _round(self, server_round: int) -> RoundTraffic:
        return self.rounds.setdefault(server_round, RoundTraffic())

    def sent(self, server_round: int, messages: Iterable[Any]) -> None:
        traffic = self._round(server_round)
        for message in messages:
            traffic.down_bytes += payload_bytes(message.content)
            traffic.messages_down += 1

    def received(self, server_round: int, replies: Iterable[Any]) -> None:
        traffic = self._round(server_round)
        for reply in replies:
            if not reply.has_error():
                traffic.up_bytes += payload_bytes(reply.content)
                traffic.replies_up += 1

    def round_summary(self, server_round: int) -> dict[str, Any]:
        traffic = self._round(server_round)
        return {**asdict(traffic), "per_node_round_bytes": traffic.per_node_round_bytes}

    def totals(self) -> dict[str, Any]:
        down = sum(t.down_bytes for t in self.rounds.values())
        up = sum(t.up_bytes for t in self.rounds.values())
        per_node = [t.per_node_round_bytes for t in self.rounds.values() if t.messages_down]
        return {
            "down_bytes": down,
            "up_bytes": up,
            "total_bytes": down + up,
            "rounds": len(self.rounds),
            "mean_per_node_round_bytes": sum(per_node) / len(per_node) if per_node else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        return {str(r): asdict(t) for r, t in sorted(self.rounds.items())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = {int(r): RoundTraffic(**t) for r, t in state.items()}
