"""Demand per category in event-time buckets, and an online forecast of the next ones.

Each category's state counts, per bucket of ``bucket_ms`` event time (an hour by default),
``views`` (views and clicks), ``carts`` (``add_to_cart``), ``purchases``, ``units`` (purchased
quantity) and ``revenue`` (price x quantity). The flow keeps one :class:`CategoryDemand` per
category and calls three pure steps:

* :func:`observe` adds an event to its bucket. Buckets stay open until the watermark (the
  event time every input partition has passed, less the allowed lateness) has passed their
  end. An event is *late* when it is older than its own partition's watermark was when it
  was read (``Event.watermark_ms``: a fact of the input's order, the same in every run), or
  when its bucket has closed anyway. A late event never changes a bucket's first record.
* :func:`close_until` closes, in order, every bucket that ended at or before the watermark,
  quiet ones included (zeros are demand too). Each closed bucket's units are learned by the
  category's :class:`DemandForecaster`, which then forecasts the next ``horizon`` buckets; a
  :class:`DemandReport` carries both, with what was predicted for the bucket one step ahead.
* :func:`corrections` re-states a closed bucket once per late event that joins it, while it
  is among the last ``correction_buckets`` (a late event of a bucket still open waits for
  its close): the same record with the corrected ``actual`` and ``revision`` = how many
  late events it now includes (its ``forecast`` is empty: the forecaster learned the bucket
  as it closed). The newest revision of every bucket equals a recount of the events; a late
  event older than the buckets kept is counted by the flow's
  ``profilestream_late_demand_events_total`` and in no record. Whether an event is late
  depends on its own partition's order alone, so the records are the same in every run
  (when late events of one bucket come from several partitions, the order of its
  revisions may differ; the newest does not).

The forecaster is River's Holt-Winters (additive, seasonality of a day of buckets) or
SNARIMAX, chosen by ``DemandParams.model``; ``profilestream eval-demand`` measures both
against seasonal naive on CDNOW and the synthetic stream, and the defaults follow from it.
Until it has seen ``warm_up_seasons`` seasons it falls back to seasonal naive (one season
seen) or the mean (less), and the report's ``model`` says ``warm-up:...``. Forecasts are
clamped at zero. State is bounded: the open buckets, the last ``correction_buckets`` closed
ones, River's fixed-size components, the last season of units (for the seasonal-naive
fallback and the naive error) and a few counters; no history grows with time. A category
quiet for ``max_gap_buckets`` buckets is dormant: its timer stops (:func:`next_close_ms` is
``None``) and, when the clock moves on, the empty stretch beyond that is skipped in whole
seasons, so a clock that jumps a year costs at most ``max_gap_buckets + season`` closes.

>>> from operators.ingest import Event
>>> T0, HOUR = 1_714_564_800_000, 3_600_000
>>> params = DemandParams(horizon=3, season=2)
>>> view = Event("e1", "u1", T0, "view", item_id="i1", category="shoes")
>>> state, late = observe(None, view, params)
>>> buy = Event("e2", "u2", T0 + 60_000, "purchase", item_id="i1", category="shoes", price=9.5,
...             quantity=2)
>>> state, late = observe(state, buy, params)
>>> reports = close_until(state, T0 + 2 * HOUR, params)  # closes that hour and the quiet next
>>> [(r.actual["views"], r.actual["units"], r.actual["revenue"]) for r in reports]
[(1, 2, 19.0), (0, 0, 0.0)]
>>> reports[1].predicted, reports[1].forecast, reports[1].model
(2.0, [2.0, 0.0, 2.0], 'warm-up:seasonal-naive')
>>> observe(state, Event("e3", "u3", T0 + 30_000, "view", item_id="i2", category="shoes"),
...         params)[1]
'correction'
>>> [(r.bucket_start_ms - T0, r.actual["views"], r.revision) for r in corrections(state)]
[(0, 2, 1)]
"""

from __future__ import annotations

import math
import pickle
from collections import deque
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Final, Literal

import msgspec

from operators.ingest import Event
from operators.ingest.units import DAY_MS, HOUR_MS

#: Event types that count toward demand, and the measure each one feeds.
DEMAND_TYPES: Final = {"view": 0, "click": 0, "add_to_cart": 1, "purchase": 2}
ModelName = Literal["holt-winters", "snarimax"]
#: What the forecasters import when a category first needs one. The import takes about a
#: second, so it is left out of start-up; a flow loads it beside its worker instead
#: (:func:`dataflow.runner.load_lazy_parts`), or the first forecast stalls every user that long.
FORECASTING_LIBRARY: Final = "river.time_series"
#: What became of a late event: in its bucket's correction, or in no record.
Lateness = Literal["correction", "too_old"]
#: River's seasonal Holt-Winters always carries a trend (its seasonal update reads it), so
#: ``beta=0`` runs as this negligible smoothing with the trend starting at zero: no trend.
_NO_TREND_BETA: Final = 1e-12
_SNAPSHOT_MAGIC: Final = b"psdemand1\n"


@dataclass(frozen=True)
class DemandParams:
    """Buckets, forecast and model of category demand; changing any of them but
    ``correction_buckets`` is a new ``model_version``.

    ``correction_buckets`` is how many closed buckets late events may still correct (their
    counts are kept that long). ``season`` is buckets per season; ``None`` picks a day of
    buckets for buckets shorter than a day (24 for hours), a week of days for daily buckets
    and no seasonality (1) otherwise.
    ``alpha``, ``beta`` and ``gamma`` are Holt-Winters' smoothing of level, trend and season
    (``beta=0``: no trend); ``snarimax_p``, ``snarimax_sp`` (regular and seasonal AR lags),
    ``snarimax_sd`` (seasonal differencing) and ``learning_rate`` configure SNARIMAX.

    The defaults are for hourly buckets, chosen by ``profilestream eval-demand`` on the first
    two thirds of the synthetic stream's hourly units: Holt-Winters, ``alpha=0.02``, no trend,
    ``gamma=0.1`` (within 0.003 of the best validation MAE ratio on the 14-day stream and on a
    42-day one; the surface is flat). SNARIMAX ties on 14 days (0.774 vs 0.777, forecasting 6%
    low), loses on 42 days and on CDNOW, and costs about twenty times as much per bucket.
    Daily buckets want a faster level: CDNOW daily chose ``alpha=0.5``.
    """

    bucket_ms: int = HOUR_MS
    horizon: int = 24
    season: int | None = None
    correction_buckets: int = 24
    model: ModelName = "holt-winters"
    alpha: float = 0.02
    beta: float = 0.0
    gamma: float = 0.1
    warm_up_seasons: int = 2
    snarimax_p: int = 1
    snarimax_sp: int = 2
    snarimax_sd: int = 0
    learning_rate: float = 0.01
    max_gap_buckets: int = 168
    model_version: str = field(init=False)
    seasonality: int = field(init=False, repr=False)  # ``season`` resolved

    def __post_init__(self) -> None:
        if self.bucket_ms < 1 or self.horizon < 1 or self.correction_buckets < 0:
            raise ValueError("demand needs bucket_ms >= 1, horizon >= 1, correction_buckets >= 0")
        if self.model not in ("holt-winters", "snarimax"):
            raise ValueError(f"demand model must be holt-winters or snarimax, not {self.model!r}")
        if not (0 < self.alpha <= 1 and 0 <= self.beta <= 1 and 0 <= self.gamma <= 1):
            raise ValueError("Holt-Winters needs 0 < alpha <= 1 and beta, gamma within [0, 1]")
        if self.warm_up_seasons < 1 or self.max_gap_buckets < 1:
            raise ValueError("warm_up_seasons and max_gap_buckets must be at least 1")
        season = self.season if self.season is not None else default_season(self.bucket_ms)
        if season < 1:
            raise ValueError(f"season must be at least 1 bucket, not {season}")
        object.__setattr__(self, "seasonality", season)
        if self.model == "holt-winters":
            knobs = f"a{self.alpha:g}-b{self.beta:g}-g{self.gamma:g}"
        else:
            knobs = f"p{self.snarimax_p}-sp{self.snarimax_sp}-sd{self.snarimax_sd}"
            knobs += f"-lr{self.learning_rate:g}"
        width = f"{self.bucket_ms / 1000:g}s"
        version = f"{self.model}-{width}-m{season}-{knobs}-w{self.warm_up_seasons}"
        object.__setattr__(self, "model_version", version)

    @property
    def warm_up_buckets(self) -> int:
        """Buckets learned before the model speaks (at least two)."""
        return max(2, self.warm_up_seasons * self.seasonality)


def default_season(bucket_ms: int) -> int:
    """Buckets per season when none is given: a day of hours, a week of days, else none.

    >>> default_season(3_600_000), default_season(86_400_000), default_season(7 * 86_400_000)
    (24, 7, 1)
    """
    if bucket_ms < DAY_MS and DAY_MS % bucket_ms == 0:
        return DAY_MS // bucket_ms
    return 7 if bucket_ms == DAY_MS else 1


class DemandForecaster:
    """An online forecaster of one series of bucket totals, wrapped around a River model.

    ``learn_one(y)`` one bucket at a time, ``forecast(horizon)`` at any point: the same calls
    the flow makes and ``eval-demand`` scores. Holt-Winters is initialised from the first
    season of the warm-up (level: its mean; season: the mean deviation of each phase over the
    warm-up; trend: the slope between the first and last season's means, or 0 when
    ``beta=0``) and then updated over the rest; River's own start (the first season as
    ratios to its mean, even for the additive model) is not used. SNARIMAX learns from the
    first bucket. Until the warm-up is over, forecasts are seasonal naive once a season has
    been seen, the mean before. Picklable; its size does not grow with what it has learned.

    >>> f = DemandForecaster(DemandParams(season=2, warm_up_seasons=2))
    >>> for y in [1, 5, 1, 5]:
    ...     f.learn_one(y)
    >>> f.model, [round(y, 3) for y in f.forecast(3)]
    ('holt-winters', [1.0, 5.0, 1.0])
    """

    def __init__(self, params: DemandParams) -> None:
        self.name: str = params.model
        self.season = params.seasonality
        self.warm_up = params.warm_up_buckets
        self.n = 0  # buckets learned
        self._recent: deque[float] = deque(maxlen=self.season)  # the last season
        self._warm: list[float] | None = []  # the warm-up's values; None once the model is up
        self._model: Any = _snarimax(params) if params.model == "snarimax" else None
        self._hw = (params.alpha, params.beta, params.gamma)

    @property
    def model(self) -> str:
        """Who forecasts now: the model's name, or ``warm-up:seasonal-naive|mean``."""
        if self._warm is None:
            return self.name
        return "warm-up:seasonal-naive" if self.n >= self.season > 1 else "warm-up:mean"

    def learn_one(self, y: float) -> None:
        """Learn the total of the next bucket."""
        if self._warm is not None:
            self._warm.append(y)
            if self.name == "snarimax":
                self._model.learn_one(y)
            if len(self._warm) >= self.warm_up:
                if self.name == "holt-winters":
                    self._model = self._start_holt_winters(self._warm)
                self._warm = None
        else:
            self._model.learn_one(y)
        self._recent.append(y)
        self.n += 1

    def forecast(self, horizon: int) -> list[float]:
        """The next ``horizon`` buckets, never below zero (zeros before anything is learned)."""
        if self._warm is None:
            values = self._model.forecast(horizon)
        elif self.n >= self.season > 1:
            values = [self._recent[h % self.season] for h in range(horizon)]
        else:
            values = [math.fsum(self._warm) / len(self._warm) if self._warm else 0.0] * horizon
        return [float(v) if v > 0.0 else 0.0 for v in values]  # NaN, too, reads as zero

    def naive_one_step(self) -> float | None:
        """Seasonal naive's forecast of the next bucket (last season's), once it has one."""
        return self._recent[0] if len(self._recent) == self.season else None

    def _start_holt_winters(self, values: list[float]) -> Any:
        from river.time_series import HoltWinters

        alpha, beta, gamma = self._hw
        m = self.season
        seasons = len(values) // m
        means = [math.fsum(values[k * m : (k + 1) * m]) / m for k in range(seasons)]
        slope = (means[-1] - means[0]) / ((seasons - 1) * m) if beta and seasons > 1 else 0.0
        model: Any  # River's components are deques whose types its hints do not follow
        if m > 1:
            model = HoltWinters(alpha, beta or _NO_TREND_BETA, gamma, seasonality=m)
            phases = [
                math.fsum(values[k * m + i] - means[k] for k in range(seasons)) / seasons
                for i in range(m)
            ]
            model.season.extend(phases)
        else:
            model = HoltWinters(alpha, beta or None)
        model.level.append(means[0] + slope * (m - 1) / 2)
        if model.trend is not None:
            model.trend.append(slope)
        model._initialized = True  # the components are set: River's own start is skipped
        for y in values[m:]:
            model.learn_one(y)
        return model


def _snarimax(params: DemandParams) -> Any:
    from river import linear_model, optim, preprocessing
    from river.time_series import SNARIMAX

    regressor = preprocessing.StandardScaler() | linear_model.LinearRegression(
        optimizer=optim.SGD(params.learning_rate), intercept_lr=params.learning_rate
    )
    m = params.seasonality
    return SNARIMAX(
        p=params.snarimax_p,
        d=0,
        q=0,
        m=m,
        sp=params.snarimax_sp if m > 1 else 0,
        sd=params.snarimax_sd if m > 1 else 0,
        regressor=regressor,
    )


class Bucket(msgspec.Struct, array_like=True, gc=False):
    """One bucket's counts; revenue in millionths, so it adds exactly."""

    views: int = 0
    carts: int = 0
    purchases: int = 0
    units: int = 0
    revenue: int = 0

    def add(self, event: Event, measure: int) -> None:
        """Count ``event``, whose type feeds ``measure`` (see :data:`DEMAND_TYPES`)."""
        if measure == 0:
            self.views += 1
        elif measure == 1:
            self.carts += 1
        else:
            self.purchases += 1
            self.units += event.quantity
            if event.price is not None:
                self.revenue += round(event.price * event.quantity * 1_000_000)

    def merge(self, other: Bucket) -> None:
        self.views += other.views
        self.carts += other.carts
        self.purchases += other.purchases
        self.units += other.units
        self.revenue += other.revenue

    def actual(self) -> dict[str, float]:
        """The counts as a report states them."""
        return {
            "views": self.views,
            "carts": self.carts,
            "purchases": self.purchases,
            "units": self.units,
            "revenue": self.revenue / 1_000_000,
        }


class ClosedBucket(msgspec.Struct, array_like=True, gc=False):
    """A closed bucket kept for corrections: its counts, late events included, and how many
    late events joined it."""

    counts: Bucket
    late: int = 0


class ForecastError(msgspec.Struct):
    """Running one-step errors on the buckets where both the forecaster and seasonal naive
    had a prediction: ``abs_error_sum / naive_abs_error_sum`` below 1 means it beats naive."""

    count: int = 0
    abs_error_sum: float = 0.0
    naive_abs_error_sum: float = 0.0


@dataclass(slots=True)
class CategoryDemand:
    """One category's open buckets, forecaster and counters (the flow keys it by category).

    Buckets are numbered ``ts_ms // bucket_ms``; every bucket before ``next_index`` is closed,
    and an event whose bucket ended at or before ``closed_ms`` (the watermark reached) is
    late. ``predicted`` is the one-step forecast for bucket ``next_index``. ``late_open``
    holds the late events of buckets still open (each joins its bucket once it has closed),
    ``recent`` the last closed buckets and ``outbox`` the corrections not yet sent.
    """

    category: str
    bucket_ms: int
    model_version: str
    next_index: int
    forecaster: DemandForecaster
    open: dict[int, Bucket] = field(default_factory=dict)
    closed_ms: int = -(2**62)
    predicted: float | None = None
    quiet: int = 0  # empty buckets closed in a row
    version: int = 0  # buckets closed
    late_events: int = 0
    skipped_buckets: int = 0  # dormant stretches skipped without a report
    error: ForecastError = field(default_factory=ForecastError)
    late_open: dict[int, list[Bucket]] = field(default_factory=dict)
    recent: dict[int, ClosedBucket] = field(default_factory=dict)
    outbox: list[DemandReport] = field(default_factory=list)

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Restore a pickled state, one of an older release too (new fields start empty)."""
        values = state[1]
        for f in fields(self):
            if f.name in values:
                value = values[f.name]
            elif f.default_factory is not MISSING:
                value = f.default_factory()
            else:
                value = f.default
            setattr(self, f.name, value)


class DemandReport(msgspec.Struct):
    """A closed bucket of one category, and the forecast made once it was learned.

    ``actual`` holds ``views``, ``carts``, ``purchases``, ``units`` and ``revenue``;
    ``forecast`` the units of the ``horizon`` buckets from ``forecast_start_ms``;
    ``predicted`` the units forecast for this bucket one step ahead (``None`` for the first).
    ``revision`` 0 is the bucket as it closed; a correction has the number of late events
    its ``actual`` now includes, and an empty ``forecast``.
    """

    category: str
    bucket_start_ms: int
    bucket_ms: int
    actual: dict[str, float]
    forecast: list[float]
    forecast_start_ms: int
    predicted: float | None
    model: str
    model_version: str
    revision: int = 0


def new_demand(category: str, index: int, params: DemandParams) -> CategoryDemand:
    """An empty state whose first bucket is ``index``."""
    return CategoryDemand(
        category, params.bucket_ms, params.model_version, index, DemandForecaster(params)
    )


def is_late(state: CategoryDemand, ts_ms: int, params: DemandParams) -> bool:
    """Whether an event at ``ts_ms`` falls in a bucket ``state`` has already closed."""
    return (ts_ms // params.bucket_ms + 1) * params.bucket_ms <= state.closed_ms


def observe(
    state: CategoryDemand | None, event: Event, params: DemandParams
) -> tuple[CategoryDemand, Lateness | None]:
    """Count ``event`` into its bucket; with the state, ``None`` if it came on time, else
    what became of it: ``"correction"`` (it joins its bucket's correction, see
    :func:`corrections`) or ``"too_old"`` (its bucket is older than the last
    ``correction_buckets``, or was never reported: it is in no record).

    Events of other types (searches, logins, ...) leave the counts alone and are never late.
    ``state`` is updated in place.
    """
    bucket_ms = params.bucket_ms
    index = event.ts_ms // bucket_ms
    if state is None:
        state = new_demand(event.category or "", index, params)
    elif state.model_version != params.model_version:
        _conform(state, params)
    measure = DEMAND_TYPES.get(event.type)
    if measure is None:
        return state, None
    closed = (index + 1) * bucket_ms <= state.closed_ms
    if index < state.next_index and not closed:  # earlier than the first bucket, none closed
        state.next_index = index
    if closed or event.ts_ms < event.watermark_ms:
        state.late_events += 1
        alone = Bucket()
        alone.add(event, measure)
        if not closed and params.correction_buckets:  # it joins its bucket once that closes
            state.late_open.setdefault(index, []).append(alone)
        elif (kept := state.recent.get(index)) is not None:
            _correct(state, index, kept, alone)
        else:
            return state, "too_old"
        return state, "correction"
    bucket = state.open.get(index)
    if bucket is None:
        bucket = state.open[index] = Bucket()
    bucket.add(event, measure)
    return state, None


def close_until(
    state: CategoryDemand, watermark_ms: int, params: DemandParams
) -> list[DemandReport]:
    """Close every bucket that ended at or before ``watermark_ms``, then send its correction.

    In order and including empty ones; each is learned, then forecast from. ``state`` is
    updated in place. ``watermark_ms`` is the event time the input has passed, the allowed
    lateness already taken off.
    """
    if state.model_version != params.model_version:
        _conform(state, params)
    if watermark_ms > state.closed_ms:
        state.closed_ms = watermark_ms
    end = watermark_ms // params.bucket_ms  # buckets before this one have ended
    reports: list[DemandReport] = []
    index = state.next_index
    season = params.seasonality
    while index < end:
        bucket = state.open.pop(index, None)
        if bucket is None and state.quiet >= params.max_gap_buckets and not state.late_open:
            # Dormant: skip whole seasons (the phase stays right) up to the next data or end.
            target = min(min(state.open, default=end), end)
            skip = (target - index) // season * season
            if skip:
                index += skip
                state.skipped_buckets += skip
                continue
        reports.append(_close(state, index, bucket, params))
        index += 1
    state.next_index = index
    for old in [i for i in state.recent if i < index - params.correction_buckets]:
        del state.recent[old]
    return reports + corrections(state)


def corrections(state: CategoryDemand) -> list[DemandReport]:
    """The corrected records made since they were last taken (see the module's docstring)."""
    if not state.outbox:
        return []
    reports, state.outbox = state.outbox, []
    return reports


def _correct(state: CategoryDemand, index: int, kept: ClosedBucket, late: Bucket) -> None:
    """Add a late event's counts to closed bucket ``index`` and queue the corrected record."""
    kept.counts.merge(late)
    kept.late += 1
    start_ms = index * state.bucket_ms
    state.outbox.append(
        DemandReport(
            category=state.category,
            bucket_start_ms=start_ms,
            bucket_ms=state.bucket_ms,
            actual=kept.counts.actual(),
            forecast=[],
            forecast_start_ms=start_ms + state.bucket_ms,
            predicted=None,
            model=state.forecaster.model,
            model_version=state.model_version,
            revision=kept.late,
        )
    )


def next_close_ms(state: CategoryDemand, params: DemandParams) -> int | None:
    """The watermark at which the next bucket closes; ``None`` while the category is dormant."""
    if state.quiet >= params.max_gap_buckets and not state.open and not state.late_open:
        return None
    return (state.next_index + 1) * params.bucket_ms


def _close(
    state: CategoryDemand, index: int, bucket: Bucket | None, params: DemandParams
) -> DemandReport:
    """Learn bucket ``index`` and forecast from it; keep it for corrections."""
    forecaster = state.forecaster
    if bucket is None:
        bucket = Bucket()
        state.quiet += 1
    else:
        state.quiet = 0
    units = bucket.units
    predicted = state.predicted
    naive = forecaster.naive_one_step()
    if predicted is not None and naive is not None:
        error = state.error
        error.count += 1
        error.abs_error_sum += abs(predicted - units)
        error.naive_abs_error_sum += abs(naive - units)
    forecaster.learn_one(float(units))
    forecast = forecaster.forecast(params.horizon)
    state.predicted = forecast[0]
    state.version += 1
    start_ms = index * params.bucket_ms
    report = DemandReport(
        category=state.category,
        bucket_start_ms=start_ms,
        bucket_ms=params.bucket_ms,
        actual=bucket.actual(),
        forecast=[round(y, 4) for y in forecast],
        forecast_start_ms=start_ms + params.bucket_ms,
        predicted=None if predicted is None else round(predicted, 4),
        model=forecaster.model,
        model_version=params.model_version,
    )
    late = state.late_open.pop(index, ())
    if params.correction_buckets:
        kept = state.recent[index] = ClosedBucket(msgspec.structs.replace(bucket))
        for alone in late:
            _correct(state, index, kept, alone)
    return report


def _conform(state: CategoryDemand, params: DemandParams) -> None:
    """Adopt new parameters (a restart with another configuration): regroup the open buckets
    by their start time into the new width and start a new forecaster (warm-up again)."""
    old_ms = state.bucket_ms
    if old_ms != params.bucket_ms:
        regrouped: dict[int, Bucket] = {}
        for index, bucket in sorted(state.open.items()):
            new = index * old_ms // params.bucket_ms
            regrouped.setdefault(new, Bucket()).merge(bucket)
        state.open = regrouped
        state.next_index = state.next_index * old_ms // params.bucket_ms
        state.bucket_ms = params.bucket_ms
    state.late_open, state.recent = {}, {}
    state.forecaster = DemandForecaster(params)
    state.predicted = None
    state.quiet = 0
    state.error = ForecastError()
    state.model_version = params.model_version


def encode_demand(state: CategoryDemand) -> bytes:
    """Snapshot bytes of a category's state (for Bytewax recovery).

    Pickle, behind a format tag: River models are plain Python objects with no serialisation
    of their own besides pickle (which River documents for persisting models), and Bytewax
    pickles snapshots anyway, so these bytes cross no trust boundary Bytewax does not already
    -- decode only what this flow's own recovery store wrote.
    """
    return _SNAPSHOT_MAGIC + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def decode_demand(data: bytes) -> CategoryDemand:
    """Inverse of :func:`encode_demand`."""
    if not data.startswith(_SNAPSHOT_MAGIC):
        raise ValueError("not a category demand snapshot (format tag missing or unknown)")
    state = pickle.loads(data[len(_SNAPSHOT_MAGIC) :])
    if not isinstance(state, CategoryDemand):
        raise ValueError(f"demand snapshot holds {type(state).__name__}, not CategoryDemand")
    return state
