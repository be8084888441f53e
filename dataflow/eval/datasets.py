"""Read public recommendation benchmarks as per-user event histories, and replay them as events.

Two formats, both read from their own files at run time (their licences forbid copying them):

- Amazon sequential-recommendation files (S3-Rec preprocessing): ``<Cat>.txt`` has one user
  per line, ``user item_1 ... item_n`` in time order, and ``<Cat>_item2attributes.json``
  maps an item to attribute ids (category-path nodes and the brand). The interactions are
  5-core reviews, so they are replayed as ``purchase`` events. There are no timestamps: user
  ``u`` starts at a seeded offset within a year and acts once a day, so that users interleave
  in the replay as they do in a live stream.
- Taobao UserBehavior CSV: ``user,item,category,behaviour,unix_seconds`` with behaviours
  ``pv``, ``cart``, ``fav``, ``buy`` (view, add_to_cart, favorite, purchase).

The last interaction of every user is held out as the test target (leave-one-out); the rest
is what the offline model trains on and what the dataflow replays.
"""

from __future__ import annotations

import csv
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from operators.ingest.units import DAY_MS
from operators.recsys import ItemInteraction

#: 2020-01-01T00:00:00Z: where the synthetic Amazon timeline starts.
AMAZON_EPOCH_MS = 1_577_836_800_000
TAOBAO_TYPES = {"pv": "view", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"}


def shared_data_dir() -> Path:
    """The folder of the shared data sets: ``$PROFILESTREAM_SHARED_DATA``, else ``shared/data``
    beside the repository."""
    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    return Path(os.environ.get("PROFILESTREAM_SHARED_DATA", default))


@dataclass
class Benchmark:
    """Per-user interaction histories in time order, and each item's attribute ids."""

    name: str
    histories: dict[str, list[ItemInteraction]]
    attributes: dict[str, list[str]]

    def split_last(self) -> tuple[dict[str, list[ItemInteraction]], dict[str, ItemInteraction]]:
        """Leave-one-out: (everything but each user's last interaction, the last ones)."""
        replay = {u: h[:-1] for u, h in self.histories.items() if len(h) >= 2}
        targets = {u: h[-1] for u, h in self.histories.items() if len(h) >= 2}
        return replay, targets


def load_amazon(sequences: Path, attributes: Path | None) -> Benchmark:
    """Read ``<Cat>.txt`` (and optionally ``<Cat>_item2attributes.json``)."""
    attrs: dict[str, list[str]] = {}
    if attributes is not None:
        raw = json.loads(attributes.read_text())
        attrs = {item: [f"a{a}" for a in ids] for item, ids in raw.items()}
    histories: dict[str, list[ItemInteraction]] = {}
    for line in sequences.read_text().splitlines():
        user, *items = line.split()
        start = AMAZON_EPOCH_MS + (zlib.crc32(user.encode()) % 365) * DAY_MS
        histories[user] = [
            ItemInteraction(item, "purchase", start + i * DAY_MS) for i, item in enumerate(items)
        ]
    return Benchmark(sequences.stem, histories, attrs)


def load_taobao(path: Path) -> Benchmark:
    """Read a Taobao UserBehavior CSV (no header); the category becomes the item attribute."""
    histories: dict[str, list[ItemInteraction]] = {}
    attrs: dict[str, list[str]] = {}
    with path.open(newline="") as f:
        for user, item, category, behaviour, seconds in csv.reader(f):
            histories.setdefault(user, []).append(
                ItemInteraction(item, TAOBAO_TYPES[behaviour], int(seconds) * 1000, category)
            )
            attrs[item] = [f"c{category}"]
    for history in histories.values():
        history.sort(key=lambda x: x.ts_ms)
    return Benchmark(path.stem, histories, attrs)


def replay_lines(histories: dict[str, list[ItemInteraction]]) -> Iterator[bytes]:
    """The histories as JSON event lines, all users interleaved in event-time order."""
    rows = [
        (x.ts_ms, user, i, x) for user, history in histories.items() for i, x in enumerate(history)
    ]
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    encode = msgspec.json.encode
    for ts_ms, user, i, x in rows:
        event = {
            "event_id": f"{user}-{i}",
            "user_id": user,
            "ts": ts_ms,
            "type": x.type,
            "item_id": x.item_id,
        }
        if x.category is not None:
            event["category"] = x.category
        if x.brand is not None:
            event["brand"] = x.brand
        yield encode(event)
