"""Generated events, labels and catalogs as files, and a summary of what a stream holds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import msgspec
import numpy as np

from dataflow.sim.world import CatalogItem, GeneratedEvent
from operators.ingest import DeadLetter, Event, parse_event
from operators.ingest.units import DAY_MS

Lang = Literal["en", "zh"]


def write_events(path: str | Path, events: Iterable[GeneratedEvent]) -> int:
    """Write one JSON line per event to ``path``; return how many were written."""
    count = 0
    with Path(path).open("wb") as f:
        for event in events:
            f.write(event.line + b"\n")
            count += 1
    return count


class _EventId(msgspec.Struct):
    event_id: str


def write_labels(path: str | Path, events: Iterable[GeneratedEvent]) -> int:
    """Write ``{"event_id": ..., "kind": ...}`` lines for the anomalous events; return how many."""
    decoder = msgspec.json.Decoder(_EventId)
    encoder = msgspec.json.Encoder()
    count = 0
    with Path(path).open("wb") as f:
        for event in events:
            if event.anomaly is not None:
                event_id = decoder.decode(event.line).event_id
                f.write(encoder.encode({"event_id": event_id, "kind": event.anomaly}) + b"\n")
                count += 1
    return count


#: Episodes whose purchases a card's owner disputes: the fraud a chargeback confirms.
CHARGED_BACK: Final = frozenset({"account_takeover", "amount_anomaly", "card_testing"})


_json = msgspec.json.Encoder()


def chargeback_line(
    purchase_id: str,
    user_id: str,
    item_id: str,
    bought_ms: int,
    known_ms: int,
    kind: str | None = None,
) -> bytes:
    """A ``chargeback`` event (a JSON line without its newline) on the purchase
    ``purchase_id`` of ``item_id``, made at ``bought_ms`` and known at ``known_ms``;
    ``kind``, if given, says which scenario made the fraud (the flow ignores it).

    >>> chargeback_line("p1", "u1", "i1", 1_000, 2_000)
    b'{"event_id":"cb-p1","user_id":"u1","ts":2000,"type":"chargeback","item_id":"i1","ref_event_id":"p1","ref_ts":1000}'
    """
    body: dict[str, str | int] = {
        "event_id": f"cb-{purchase_id}",
        "user_id": user_id,
        "ts": known_ms,
        "type": "chargeback",
        "item_id": item_id,
        "ref_event_id": purchase_id,
        "ref_ts": bought_ms,
    }
    if kind is not None:
        body["kind"] = kind
    return _json.encode(body)


def chargebacks_for(
    events: Iterable[GeneratedEvent],
    end_ms: int,
    seed: int,
    median_days: float = 10.0,
    sigma: float = 0.6,
) -> list[bytes]:
    """``chargeback`` events for the purchases of fraud episodes (:data:`CHARGED_BACK`),
    in time order: each arrives a lognormal delay after its purchase (median
    ``median_days``, 1 to 60 days), names it (``ref_event_id``, ``ref_ts``) and its item,
    and is kept only if it arrives by ``end_ms``, as a labels feed read at the stream's end
    would hold. Genuine purchases get none (issuers report disputes, not clean sales).
    """
    rng = np.random.default_rng([seed, 5])  # its own stream: the events stay as they are
    out: list[tuple[int, bytes]] = []
    for generated in events:
        if generated.anomaly not in CHARGED_BACK:
            continue
        event = parse_event(generated.line)
        if not isinstance(event, Event) or event.type != "purchase":
            continue
        days = min(max(float(rng.lognormal(np.log(median_days), sigma)), 1.0), 60.0)
        arrives = event.ts_ms + round(days * DAY_MS)
        if arrives <= end_ms:
            line = chargeback_line(
                event.event_id, event.user_id, str(event.item_id), event.ts_ms, arrives
            )
            out.append((arrives, line))
    out.sort(key=lambda pair: pair[0])
    return [line for _, line in out]


def write_catalog(path: str | Path, catalog: Iterable[CatalogItem]) -> int:
    """Write the catalog as JSON lines (one :class:`CatalogItem` object each)."""
    encoder = msgspec.json.Encoder()
    count = 0
    with Path(path).open("wb") as f:
        for item in catalog:
            f.write(encoder.encode(item) + b"\n")
            count += 1
    return count


def read_catalog(path: str | Path) -> list[CatalogItem]:
    """Inverse of :func:`write_catalog`."""
    decoder = msgspec.json.Decoder(CatalogItem)
    with Path(path).open("rb") as f:
        return [decoder.decode(line) for line in f if line.strip()]


@dataclass
class GenerationSummary:
    """What a generated stream contains, for the CLI and the demo to print."""

    lines: int = 0
    users: set[str] = field(default_factory=set)
    valid_by_type: Counter[str] = field(default_factory=Counter)
    malformed_by_reason: Counter[str] = field(default_factory=Counter)
    anomalies_by_kind: Counter[str] = field(default_factory=Counter)  # events
    victims: set[tuple[str, str]] = field(default_factory=set)  # (kind, user)
    stats: dict[str, int] = field(default_factory=dict)  # filled by generate_events

    def add(self, event: GeneratedEvent) -> GeneratedEvent:
        self.lines += 1
        if event.expected_reason is not None:
            self.malformed_by_reason[event.expected_reason] += 1
            return event
        if event.anomaly is not None:
            self.anomalies_by_kind[event.anomaly] += 1
            self.victims.add((event.anomaly, event.user_id))
        self.users.add(event.user_id)
        parsed = parse_event(event.line)
        self.valid_by_type["?" if isinstance(parsed, DeadLetter) else parsed.type] += 1
        return event

    def lines_out(self) -> list[str]:
        bad = sum(self.malformed_by_reason.values())
        out = [f"valid events by type ({self.lines - bad} from {len(self.users)} users):"]
        out += [f"  {name:<18}{count:>9}" for name, count in self.valid_by_type.most_common()]
        out.append(f"malformed by reason ({bad}):")
        out += [f"  {name:<18}{count:>9}" for name, count in self.malformed_by_reason.most_common()]
        if self.anomalies_by_kind:
            episodes, short = self.stats.get("episodes", 0), self.stats.get("short_history", 0)
            out.append(
                f"anomalies by kind ({self.anomalies_by_kind.total()} events, {episodes} "
                f"episodes, {short} on users without the history their detector needs):"
            )
            users = Counter(kind for kind, _ in self.victims)
            out += [
                f"  {name:<18}{count:>9} events {users[name]:>6} users"
                for name, count in sorted(self.anomalies_by_kind.items())
            ]
        return out
