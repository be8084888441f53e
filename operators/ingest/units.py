"""Durations in milliseconds, the unit of every event time and timer here.

>>> DAY_MS == 24 * HOUR_MS == 1_440 * MINUTE_MS
True
"""

from typing import Final

SECOND_MS: Final = 1_000
MINUTE_MS: Final = 60 * SECOND_MS
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
WEEK_MS: Final = 7 * DAY_MS
