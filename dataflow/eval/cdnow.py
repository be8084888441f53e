"""Read the CDNOW purchase log that the ``lifetimes`` package ships, and replay it as events.

CDNOW (1997-98, MIT via ``lifetimes``): 23,570 customers who first bought in Q1 1997 and
their 69,659 transactions until June 1998, one line per customer and day with the number of
CDs and the dollars spent. It is the classic data set for RFM and customer-base analysis,
so the segments and the category demand are checked against it: each line becomes one
``purchase`` event of ``quantity`` CDs at ``dollars / cds`` each, at midnight UTC of its day.
The log is moved 28 years forward (1997 becomes 2025): the validator rejects event times
before 2000 as upstream bugs, and a 28-year shift keeps every date on its weekday, so weekly
patterns stay where they were. The file is read from the installed package at run time
(never copied into the repository).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from operators.ingest.units import DAY_MS

#: The one category of the replay (CDNOW sold music CDs).
CATEGORY = "music_cds"
#: Years the log is moved forward (a multiple of 28 keeps weekdays from 1901 to 2099).
SHIFT_YEARS = 28


@dataclass(frozen=True)
class Purchase:
    """One CDNOW line: a customer's purchases of one day."""

    customer_id: str
    ts_ms: int  # midnight UTC of the day
    cds: int
    dollars: float


def cdnow_path() -> Path:
    """Where the installed ``lifetimes`` keeps ``CDNOW_master.txt``."""
    # Not ``lifetimes.datasets``: importing it needs pkg_resources, gone from new setuptools.
    root = resources.files("lifetimes") / "datasets" / "CDNOW_master.txt"
    return Path(str(root))


def read_cdnow(path: Path | None = None) -> list[Purchase]:
    """Every transaction of the log, in file order (by customer, then day), 28 years on.

    >>> log = read_cdnow()
    >>> len(log), len({p.customer_id for p in log}), log[0]
    (69659, 23570, Purchase(customer_id='00001', ts_ms=1735689600000, cds=1, dollars=11.77))
    >>> datetime.fromtimestamp(log[0].ts_ms / 1000, UTC).strftime("%a %Y-%m-%d")  # 1997: Wed
    'Wed 2025-01-01'

    """
    purchases = []
    with (path or cdnow_path()).open(encoding="ascii") as lines:
        next(lines)  # header
        for line in lines:
            customer, day, cds, dollars = line.split()
            date = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)
            date = date.replace(year=date.year + SHIFT_YEARS)
            ts_ms = int(date.timestamp()) * 1000
            purchases.append(Purchase(customer, ts_ms, int(cds), float(dollars)))
    return purchases


def cdnow_events(purchases: list[Purchase]) -> Iterator[dict[str, Any]]:
    """The log as ``purchase`` events in time order (ties by customer), ready for the flow.

    A line with zero CDs (a few exist) is one unit at its dollar value.
    """
    ordered = sorted(purchases, key=lambda p: (p.ts_ms, p.customer_id))
    for n, p in enumerate(ordered):
        quantity = max(p.cds, 1)
        yield {
            "event_id": f"cdnow-{n}",
            "user_id": f"cdnow-{p.customer_id}",
            "ts": p.ts_ms,
            "type": "purchase",
            "item_id": f"cd-{p.customer_id}-{p.ts_ms // DAY_MS}",
            "category": CATEGORY,
            "price": p.dollars / quantity,
            "quantity": quantity,
        }


def write_cdnow_events(out: Path, purchases: list[Purchase] | None = None) -> int:
    """Write the replay as JSON lines; returns how many."""
    encoder = msgspec.json.Encoder()
    n = 0
    with out.open("wb") as f:
        for event in cdnow_events(purchases if purchases is not None else read_cdnow()):
            f.write(encoder.encode(event) + b"\n")
            n += 1
    return n
