"""RFM. Recency (whole days since the last purchase), frequency (``counts.purchase``) and
monetary value (``spend``, rounded to cents) are each scored 1-5 against four configured cut
points per dimension: the score is one plus the number of cuts the value exceeds, reversed
for recency (recent is 5). A value equal to a cut is in the band below it (``x <= cut``, as
in pandas' right-closed bins): fewer days, purchases or dollars. The score string
is ``f"{r}{f}{m}"``, ``""`` for a user who never bought. Groups come from the usual R
versus FM grid, with ``FM = ceil((F + M) / 2)``::

                 FM=1              FM=2                FM=3                FM=4       FM=5
    R=5  new_customers     potential_loyalist  potential_loyalist  champions  champions
    R=4  promising         potential_loyalist  potential_loyalist  loyal      loyal
    R=3  about_to_sleep    about_to_sleep      need_attention      loyal      loyal
    R=2  hibernating       hibernating         at_risk             at_risk    cannot_lose_them
    R=1  lost              hibernating         at_risk             at_risk    cannot_lose_them

and appear as segments named ``rfm:<group>``.

Why configured cut points, refreshed by a periodic batch job (:func:`rfm_cut_points`,
``profilestream rfm-cuts``), rather than quantiles kept by a streaming global sketch: a
campaign selects "champions" and must get the same people tomorrow, so scores should move
only when a customer does, not whenever other customers shift the quantiles; every worker
must score alike, while a sketch per worker sees only its own key range and would disagree
across workers (and a merged global one needs a shuffle and still lags); batch quantiles are
exact where a sketch is approximate; and a cut file is versioned (``definitions_version``),
so any score can be reproduced from the events and the file, which a sketch's drifting
internal state cannot offer.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from operators.ingest.units import DAY_MS
from operators.profile import UserProfile

#: RFM groups are published as segments named ``rfm:<group>``.
RFM_PREFIX: Final = "rfm:"

RFM_GROUPS: Final = (
    "champions",
    "loyal",
    "potential_loyalist",
    "new_customers",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cannot_lose_them",
    "hibernating",
    "lost",
)
# Rows R=1..5, columns FM=1..5: the grid drawn in the module docstring.
_GRID: Final = (
    ("lost", "hibernating", "at_risk", "at_risk", "cannot_lose_them"),
    ("hibernating", "hibernating", "at_risk", "at_risk", "cannot_lose_them"),
    ("about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"),
    ("promising", "potential_loyalist", "potential_loyalist", "loyal", "loyal"),
    ("new_customers", "potential_loyalist", "potential_loyalist", "champions", "champions"),
)
_GROUP_OF: Final[dict[str, str]] = {
    f"{r}{f}{m}": _GRID[r - 1][(f + m + 1) // 2 - 1]
    for r in range(1, 6)
    for f in range(1, 6)
    for m in range(1, 6)
}


@dataclass(frozen=True)
class RfmCuts:
    """Four non-decreasing cut points per RFM dimension (quintile boundaries, usually)."""

    recency_days: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("recency_days", "frequency", "monetary"):
            cuts = getattr(self, name)
            if (
                len(cuts) != 4
                or not all(isinstance(c, int | float) and math.isfinite(c) for c in cuts)
                or any(b < a for a, b in itertools.pairwise(cuts))
                or cuts[0] < 0
            ):
                raise ValueError(f"rfm {name}: need 4 ascending numbers >= 0, got {list(cuts)}")


def rfm_score(recency_days: int, frequency: int, monetary: float, cuts: RfmCuts) -> str:
    """Score R, F and M 1-5 against ``cuts``; a value on a cut is in the band below it.

    >>> cuts = RfmCuts((2, 4, 7, 10), (1, 1, 1, 2), (65.0, 136.0, 298.0, 879.0))
    >>> rfm_score(2, 1, 65.0, cuts), rfm_score(3, 2, 65.004, cuts), rfm_score(11, 3, 900, cuts)
    ('511', '441', '155')
    """
    r = 5 - bisect.bisect_left(cuts.recency_days, recency_days)
    f = 1 + bisect.bisect_left(cuts.frequency, frequency)
    m = 1 + bisect.bisect_left(cuts.monetary, round(monetary, 2))
    return f"{r}{f}{m}"


def rfm_group(score: str) -> str | None:
    """The group of an RFM score (see the grid in the module docstring); None for ``""``.

    >>> rfm_group("555"), rfm_group("511"), rfm_group("512"), rfm_group("111"), rfm_group("")
    ('champions', 'new_customers', 'potential_loyalist', 'lost', None)
    """
    return _GROUP_OF.get(score)


def profile_rfm(profile: UserProfile, cuts: RfmCuts, now_ms: int) -> str:
    """The user's RFM score as of ``now_ms``; ``""`` for a user who never bought."""
    last = profile.last_purchase_ms
    if not last:
        return ""
    days = (now_ms - last) // DAY_MS if now_ms > last else 0
    return rfm_score(days, profile.counts.get("purchase", 0), profile.spend, cuts)


def next_rfm_change_ms(profile: UserProfile, cuts: RfmCuts, now_ms: int) -> int | None:
    """When the recency score drops next: the whole days pass the next cut not yet exceeded."""
    last = profile.last_purchase_ms
    if not last:
        return None
    days = (now_ms - last) // DAY_MS
    i = bisect.bisect_left(cuts.recency_days, days)
    if i == len(cuts.recency_days):
        return None
    return last + (math.floor(cuts.recency_days[i]) + 1) * DAY_MS


def rfm_cut_points(
    recency_days: Sequence[float] | np.ndarray,
    frequencies: Sequence[float] | np.ndarray,
    monetary: Sequence[float] | np.ndarray,
) -> RfmCuts:
    """The batch job: quintile boundaries of each dimension over all customers who bought.

    Monetary values are rounded to cents first and every cut to 2 decimals, so the file
    holds exactly what scoring compares against.

    >>> rfm_cut_points([0, 1, 2, 3, 4], [1, 1, 1, 2, 5], [10, 20, 30, 40, 50])
    RfmCuts(recency_days=(0.8, 1.6, 2.4, 3.2), frequency=(1.0, 1.0, 1.4, 2.6), \
monetary=(18.0, 26.0, 34.0, 42.0))
    """
    columns = []
    for name, values in (
        ("recency_days", recency_days),
        ("frequency", frequencies),
        ("monetary", monetary),
    ):
        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            raise ValueError(f"no {name} values: nobody has bought")
        if name == "monetary":
            array = np.round(array, 2)
        quintiles = np.quantile(array, [0.2, 0.4, 0.6, 0.8])
        columns.append(tuple(round(float(q), 2) for q in quintiles))
    return RfmCuts(*columns)


# --- conditions ------------------------------------------------------------------------------
