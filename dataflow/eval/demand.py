"""``profilestream eval-demand``: do the category demand forecasts beat seasonal naive?

Rolling-origin evaluation of :class:`operators.apps.demand.DemandForecaster` -- the wrapper the
flow uses -- fed one bucket at a time, on three kinds of series:

* CDNOW daily units (CDs per day, 546 days from 1997-01-01), horizons 1..7, seasonal naive
  with ``m = 7`` (the weekday);
* CDNOW weekly units (78 weeks), horizons 1..4, naive with ``m = 1``: 78 weeks do not hold
  two years, so a yearly seasonal naive would compare the last 26 weeks with the cohort's
  acquisition weeks a year before, and no model can learn a yearly season from 1.5 years;
* the synthetic stream (:func:`~dataflow.sim.generate_events`, 200k events
  over 14 days), hourly units of its biggest categories bucketed by
  :func:`~operators.apps.demand.observe` and :func:`~operators.apps.demand.close_until` as the flow
  does, horizons 1..24, seasonal naive with ``m = 24`` (its sessions follow the hour of day).

Each series is split in thirds. Hyperparameters and the model (Holt-Winters or SNARIMAX) are
chosen on the first two thirds -- warm-up on the first third, rolling-origin MAE on the
second -- and scored on the last third, the tail, which nothing was chosen on. The model
keeps learning through the tail, one bucket at a time; at every origin it forecasts ``h``
steps ahead and so does seasonal naive. All hourly categories share one choice, as they share
``DemandParams`` in the flow. A setting is chosen by its mean ratio of MAE to seasonal naive's
on the second third, among those biased by at most :data:`MAX_BIAS` (MAE favours forecasting
low on small skewed counts); SNARIMAX must beat Holt-Winters by :data:`COST_MARGIN` to be
chosen. On CDNOW the first third holds the whole acquisition: the model learns it, as the
flow would on a replay, and is chosen on days 182-363 (weeks 26-51), after it.

MASE is the standard scaled error: the tail's MAE over all origins and horizons divided by
the in-sample MAE of one-step seasonal naive on the first two thirds. CDNOW's customers all
made their first purchase in its first 12 weeks, so those weeks are huge and falling; they
inflate the in-sample scale and make every MASE look small. The table therefore also gives
MASE with the scale taken after the acquisition (``*_post``), and the decisive number is the
ratio of the model's MAE to seasonal naive's on the same origins (below 1: the model wins),
which no choice of scale changes.

>>> tiny = Series("toy", [float(i % 2) for i in range(60)], season=2, naive_season=2, horizon=2)
>>> row = evaluate_series(tiny, DemandParams(bucket_ms=1, horizon=2, season=2, alpha=0.5))
>>> row.mae_model < 0.05, row.mae_naive
(True, 0.0)
"""

from __future__ import annotations

import itertools
import math
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, cast

from dataflow.eval.cdnow import read_cdnow
from dataflow.sim import DEFAULT_END_MS, generate_events
from operators.apps import (
    CategoryDemand,
    DemandForecaster,
    DemandParams,
    close_until,
    new_demand,
    observe,
)
from operators.apps.demand import ModelName
from operators.ingest import Event, parse_event
from operators.ingest.units import DAY_MS, HOUR_MS, WEEK_MS

#: CDNOW's cohort was acquired in its first 12 weeks (Q1 1997).
CDNOW_ACQUISITION_DAYS: Final = 84
GENERATED_EVENTS: Final = 200_000
GENERATED_USERS: Final = 5_000
GENERATED_DAYS: Final = 14
GENERATED_CATEGORIES: Final = 4
#: Largest mean error, as a share of the mean, of a setting that may be chosen. MAE rewards
#: forecasting the median, which for small skewed counts is below the mean: a model that
#: under-forecasts by a quarter can win on MAE. The flow sums the forecast over the horizon,
#: which needs expected units, so such a setting is only chosen when none is unbiased.
MAX_BIAS: Final = 0.1
#: What a model's validation ratio must beat Holt-Winters' by to be chosen: SNARIMAX costs
#: about twenty times as much per bucket (133 vs 7 us for a learn and a 24-step forecast).
COST_MARGIN: Final = {"holt-winters": 0.0, "snarimax": 0.01}

#: Holt-Winters and SNARIMAX settings tried on the first two thirds of each series.
HW_GRID: Final = {
    "alpha": (0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
    "beta": (0.0, 0.01),
    "gamma": (0.02, 0.05, 0.1, 0.2, 0.4),
}
SNARIMAX_GRID: Final = {
    "snarimax_p": (1, 3),
    "snarimax_sp": (1, 2),
    "snarimax_sd": (0, 1),
    "learning_rate": (0.003, 0.01, 0.03),
}
SEASONAL_KNOBS: Final = ("gamma", "snarimax_sp", "snarimax_sd")


@dataclass(frozen=True)
class Series:
    """One series of bucket totals and how it is scored."""

    name: str
    values: Sequence[float]
    season: int  # the model's buckets per season (1: none)
    naive_season: int  # the baseline's m
    horizon: int
    bucket_ms: int = 1
    family: str = ""  # series of one family share their hyperparameters
    post_from: int = 0  # where the "post-acquisition" in-sample scale starts


@dataclass(frozen=True)
class Scores:
    """Absolute errors summed over the origins and horizons of one window."""

    model: list[float]  # per horizon h = 1..H
    naive: list[float]
    counts: list[int]
    signed: float = 0.0  # the model's errors with their sign, all horizons
    actual: float = 0.0  # the targets' sum, all horizons

    @property
    def bias(self) -> float:
        """The model's mean error as a share of the mean target (-0.2: 20% low)."""
        return self.signed / self.actual if self.actual else 0.0

    @property
    def mae_model(self) -> float:
        return sum(self.model) / max(sum(self.counts), 1)

    @property
    def mae_naive(self) -> float:
        return sum(self.naive) / max(sum(self.counts), 1)


@dataclass(frozen=True)
class Row:
    """One series' result on its tail."""

    series: str
    model: str
    selected: bool
    params: dict[str, Any]
    horizon: int
    naive_season: int
    fit: int
    tail: int
    mae_model: float
    mae_naive: float
    scale: float  # in-sample one-step seasonal-naive MAE (first two thirds)
    scale_post: float  # the same from ``post_from`` (CDNOW: after the acquisition)
    bias: float  # the model's mean error on the tail as a share of the mean target
    mase_model_by_h: list[float]

    @property
    def ratio(self) -> float:
        return self.mae_model / self.mae_naive if self.mae_naive else math.inf

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out |= {
            "mase_model": _div(self.mae_model, self.scale),
            "mase_naive": _div(self.mae_naive, self.scale),
            "mase_model_post": _div(self.mae_model, self.scale_post),
            "mase_naive_post": _div(self.mae_naive, self.scale_post),
            "ratio": self.ratio,
            "beats_naive": self.ratio < 1,
        }
        return out


def _div(a: float, b: float) -> float:
    return a / b if b else math.inf


def rolling_scores(
    values: Sequence[float], params: DemandParams, naive_season: int, start: int, stop: int
) -> Scores:
    """Feed ``values`` one at a time; score every forecast whose target lies in ``[start, stop)``.

    Origins run from ``start - 1`` to ``stop - 2``: after learning bucket ``o`` the model
    forecasts ``o + 1 .. o + H`` and seasonal naive says ``y[o + h - m * ceil(h / m)]``.
    """
    horizon = params.horizon
    m = naive_season
    model = [0.0] * horizon
    naive = [0.0] * horizon
    counts = [0] * horizon
    signed = actual = 0.0
    forecaster = DemandForecaster(params)
    for origin in range(stop - 1):
        forecaster.learn_one(values[origin])
        if origin < start - 1:
            continue
        forecast = forecaster.forecast(horizon)
        for h in range(1, min(horizon, stop - 1 - origin) + 1):
            target = values[origin + h]
            model[h - 1] += abs(forecast[h - 1] - target)
            naive[h - 1] += abs(values[origin + h - m * math.ceil(h / m)] - target)
            counts[h - 1] += 1
            signed += forecast[h - 1] - target
            actual += target
    return Scores(model, naive, counts, signed, actual)


def naive_scale(values: Sequence[float], m: int, start: int, stop: int) -> float:
    """In-sample MAE of one-step seasonal naive: ``|y[t] - y[t - m]|``, t in [start + m, stop)."""
    diffs = [abs(values[t] - values[t - m]) for t in range(start + m, stop)]
    return sum(diffs) / len(diffs) if diffs else math.nan


def _grid(model: str, season: int) -> list[dict[str, Any]]:
    """Every setting of ``model``'s grid; without a season, the seasonal knobs are left out."""
    grid = HW_GRID if model == "holt-winters" else SNARIMAX_GRID
    if season == 1:
        grid = {k: v for k, v in grid.items() if k not in SEASONAL_KNOBS}
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _params(series: Series, model: str, knobs: dict[str, Any]) -> DemandParams:
    return DemandParams(
        bucket_ms=series.bucket_ms,
        horizon=series.horizon,
        season=series.season,
        model=cast(ModelName, model),
        **knobs,
    )


@dataclass(frozen=True)
class Choice:
    """The setting of one model chosen on the validation third of a family's series."""

    knobs: dict[str, Any]
    ratio: float  # mean over the family of MAE / seasonal-naive MAE
    bias: float  # mean over the family of the mean error / mean target
    unbiased: bool  # whether it met MAX_BIAS (else the best ratio regardless)


def select(family: Sequence[Series], model: str) -> Choice:
    """The knobs of ``model`` with the lowest mean MAE ratio to naive on the validation third,
    among those whose forecasts are biased by at most :data:`MAX_BIAS` of the mean.

    Validation targets are the second third of each series; the tail is never looked at.
    """
    tried: list[Choice] = []
    for knobs in _grid(model, family[0].season):
        ratios, biases = [], []
        for series in family:
            n = len(series.values)
            fit = n - n // 3
            scores = rolling_scores(
                series.values, _params(series, model, knobs), series.naive_season, fit // 2, fit
            )
            ratios.append(scores.mae_model / scores.mae_naive if scores.mae_naive else math.inf)
            biases.append(scores.bias)
        ratio, bias = sum(ratios) / len(ratios), sum(biases) / len(biases)
        if math.isfinite(ratio):
            tried.append(Choice(knobs, ratio, bias, abs(bias) <= MAX_BIAS))
    if not tried:
        raise ValueError(f"no {model} setting gave a finite score on {family[0].family}")
    return min(tried, key=lambda c: (not c.unbiased, c.ratio))


def evaluate_series(series: Series, params: DemandParams, *, selected: bool = True) -> Row:
    """Score ``params`` on the tail (last third) of ``series``."""
    n = len(series.values)
    fit = n - n // 3
    scores = rolling_scores(series.values, params, series.naive_season, fit, n)
    scale = naive_scale(series.values, series.naive_season, 0, fit)
    scale_post = naive_scale(series.values, series.naive_season, series.post_from, fit)
    knobs = _knobs(params)
    return Row(
        series=series.name,
        model=params.model,
        selected=selected,
        params=knobs,
        horizon=series.horizon,
        naive_season=series.naive_season,
        fit=fit,
        tail=n - fit,
        mae_model=scores.mae_model,
        mae_naive=scores.mae_naive,
        scale=scale,
        scale_post=scale_post,
        bias=scores.bias,
        mase_model_by_h=[
            _div(e / max(c, 1), scale) for e, c in zip(scores.model, scores.counts, strict=True)
        ],
    )


def _knobs(params: DemandParams) -> dict[str, Any]:
    names = HW_GRID if params.model == "holt-winters" else SNARIMAX_GRID
    knobs: dict[str, Any] = {"season": params.seasonality}
    knobs |= {
        name: getattr(params, name)
        for name in names
        if params.seasonality > 1 or name not in SEASONAL_KNOBS
    }
    return knobs


def cdnow_series() -> list[Series]:
    """CDNOW units (CDs) per day and per week from the first day of the log."""
    log = read_cdnow()
    first = min(p.ts_ms for p in log)
    days = (max(p.ts_ms for p in log) - first) // DAY_MS + 1
    daily = [0.0] * days
    for p in log:
        daily[(p.ts_ms - first) // DAY_MS] += p.cds
    weekly = [sum(daily[w * 7 : w * 7 + 7]) for w in range(days // 7)]
    return [
        Series("cdnow daily units", daily, 7, 7, 7, DAY_MS, "cdnow-daily", CDNOW_ACQUISITION_DAYS),
        Series(
            "cdnow weekly units",
            weekly,
            1,
            1,
            4,
            WEEK_MS,
            "cdnow-weekly",
            CDNOW_ACQUISITION_DAYS // 7,
        ),
    ]


def generated_series(
    n_events: int = GENERATED_EVENTS,
    n_categories: int = GENERATED_CATEGORIES,
    *,
    seed: int = 0,
    days: int = GENERATED_DAYS,
) -> list[Series]:
    """Hourly units of the biggest categories of a generated stream, bucketed as the flow does.

    Every category's state starts at the stream's first hour; the watermark trails the newest
    event time by the flow's default allowed lateness, as a one-partition flow's does, and
    the end closes all.
    """
    start_ms = DEFAULT_END_MS - days * DAY_MS
    params = DemandParams()
    lateness_ms = 600_000
    states: dict[str, CategoryDemand] = {}
    units: dict[str, list[float]] = {}
    clock = closed = 0
    lines = generate_events(n_events, GENERATED_USERS, seed=seed, start_ms=start_ms, span_days=days)
    for generated in lines:
        if generated.expected_reason is not None:
            continue  # dead letters and the duplicates the profile step drops
        event = parse_event(generated.line)
        if not isinstance(event, Event) or event.category is None:
            continue
        state = states.get(event.category)
        if state is None:
            state = states[event.category] = new_demand(
                event.category, start_ms // params.bucket_ms, params
            )
            units[event.category] = []
        observe(state, event, params)
        clock = max(clock, event.ts_ms)
        watermark = clock - lateness_ms
        if watermark // params.bucket_ms > closed:  # an hour is due
            closed = watermark // params.bucket_ms
            for category, each in states.items():
                _collect(units[category], close_until(each, watermark, params))
    for category, each in states.items():
        _collect(units[category], close_until(each, DEFAULT_END_MS, params))
    biggest = sorted(units, key=lambda c: (-sum(units[c]), c))[:n_categories]
    return [
        Series(f"generated {c} hourly", units[c], 24, 24, 24, HOUR_MS, "generated-hourly")
        for c in biggest
    ]


def _collect(into: list[float], reports: Iterable[Any]) -> None:
    into.extend(float(r.actual["units"]) for r in reports)


def run_eval(series: Sequence[Series], log: Any = print) -> dict[str, Any]:
    """Choose per family and model on the first two thirds, score on the tail."""
    families: dict[str, list[Series]] = {}
    for s in series:
        families.setdefault(s.family or s.name, []).append(s)
    rows: list[Row] = []
    selection: dict[str, Any] = {}
    for family, members in families.items():
        started = time.perf_counter()
        chosen = {model: select(members, model) for model in ("holt-winters", "snarimax")}
        winner = min(
            chosen,
            key=lambda model: (
                not chosen[model].unbiased,
                chosen[model].ratio + COST_MARGIN[model],
            ),
        )
        selection[family] = {"selected": winner} | {
            model: asdict(choice) for model, choice in chosen.items()
        }
        for model, choice in chosen.items():
            for s in members:
                params = _params(s, model, choice.knobs)
                rows.append(evaluate_series(s, params, selected=model == winner))
        log(f"  {family}: chose {winner} in {time.perf_counter() - started:.1f} s")
    return {"series": [r.as_json() for r in rows], "selection": selection}


def format_table(result: dict[str, Any]) -> str:
    """The rows as a fixed-width table; ``*`` marks the model chosen on the first two thirds."""
    head = (
        f"{'series':<28}{'model':<14}{'h':>3}{'m':>3}{'fit':>5}{'tail':>5}{'MAE':>9}{'MAE sn':>9}"
        f"{'MASE':>7}{'MASE sn':>8}{'post':>7}{'post sn':>8}{'ratio':>7}{'bias':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in result["series"]:
        mark = "*" if r["selected"] else " "
        lines.append(
            f"{_pad(r['series'], 28)}{mark + r['model']:<14}{r['horizon']:>3}{r['naive_season']:>3}"
            f"{r['fit']:>5}{r['tail']:>5}{r['mae_model']:>9.2f}{r['mae_naive']:>9.2f}"
            f"{r['mase_model']:>7.3f}{r['mase_naive']:>8.3f}{r['mase_model_post']:>7.3f}"
            f"{r['mase_naive_post']:>8.3f}{r['ratio']:>7.3f}{r['bias']:>+7.1%}"
        )
    lines.append("")
    lines.append("chosen on the first two thirds (validation: ratio, bias):")
    for family, chosen in result["selection"].items():
        for model in ("holt-winters", "snarimax"):
            c = chosen[model]
            knobs = ", ".join(f"{k}={v}" for k, v in c["knobs"].items())
            mark = "*" if model == chosen["selected"] else " "
            lines.append(
                f"  {family:<17}{mark}{model:<13}ratio {c['ratio']:.3f}  bias {c['bias']:+.1%}"
                f"{'' if c['unbiased'] else ' (over MAX_BIAS)'}  {knobs}"
            )
    return "\n".join(lines)


def _pad(text: str, width: int) -> str:
    """``text`` cut or padded to ``width`` columns, CJK characters counting two."""
    out, used = "", 0
    for char in text:
        w = 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if used + w > width - 1:
            break
        out, used = out + char, used + w
    return out + " " * (width - used)
