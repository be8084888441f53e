"""Category demand: bucketing against a brute force, closing, forecasts, snapshots, and the eval."""

from __future__ import annotations

import itertools
import json
import math
import pickle
import random
from collections import defaultdict
from typing import Any

import msgspec
import pytest

from dataflow.eval import demand as demand_eval
from dataflow.eval.demand import Series, naive_scale, rolling_scores
from dataflow.sim import DEFAULT_END_MS, generate_events
from operators.apps import (
    CategoryDemand,
    DemandForecaster,
    DemandParams,
    DemandReport,
    close_until,
    corrections,
    decode_demand,
    default_season,
    encode_demand,
    new_demand,
    next_close_ms,
    observe,
)
from operators.apps.demand import _SNAPSHOT_MAGIC
from operators.ingest import NO_WATERMARK, Event, parse_event
from operators.ingest.units import DAY_MS, HOUR_MS, MINUTE_MS
from tests.support.cli import profilestream

T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z, a whole hour
ZERO = {"views": 0, "carts": 0, "purchases": 0, "units": 0, "revenue": 0.0}


def ev(
    ts_ms: int,
    kind: str = "view",
    *,
    price: float | None = None,
    quantity: int = 1,
    n: int = 0,
    watermark: int = NO_WATERMARK,
) -> Event:
    return Event(f"e{n}", "u", ts_ms, kind, item_id="i", category="shoes", price=price,
                 quantity=quantity, watermark_ms=watermark)  # fmt: skip


def seasonal_units(n: int, seed: int = 0, season: int = 24) -> list[float]:
    """Poisson-like hourly counts with a day shape, as the generator's sessions have."""
    rng = random.Random(seed)
    shape = [1 + math.sin(2 * math.pi * i / season) for i in range(season)]
    return [float(sum(rng.random() < 0.5 * shape[i % season] / 4 for _ in range(8)))
            for i in range(n)]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "price", "quantity", "expected"),
    [
        ("view", None, 1, {"views": 1}),
        ("click", None, 1, {"views": 1}),
        ("add_to_cart", 12.0, 2, {"carts": 1}),
        ("purchase", 9.99, 3, {"purchases": 1, "units": 3, "revenue": 29.97}),
        ("purchase", None, 2, {"purchases": 1, "units": 2}),  # no price: units, no revenue
        ("search", None, 1, {}),
        ("refund", 5.0, 1, {}),
        ("favorite", None, 1, {}),
    ],
)
def test_each_event_type_feeds_its_measure(
    kind: str, price: float | None, quantity: int, expected: dict[str, float]
) -> None:
    params = DemandParams()
    state, late = observe(
        None, ev(T0 + 5 * MINUTE_MS, kind, price=price, quantity=quantity), params
    )
    assert late is None
    (report,) = close_until(state, T0 + HOUR_MS, params)
    assert report.actual == ZERO | expected
    assert (report.bucket_start_ms, report.bucket_ms, report.forecast_start_ms) == (
        T0,
        HOUR_MS,
        T0 + HOUR_MS,
    )


def counted(buckets: dict[int, dict[str, float]], event: Event) -> None:
    """Add ``event`` to ``buckets`` by hand, as the documented measures say."""
    b = buckets.setdefault(event.ts_ms // HOUR_MS * HOUR_MS, dict(ZERO))
    if event.type in ("view", "click"):
        b["views"] += 1
    elif event.type == "add_to_cart":
        b["carts"] += 1
    else:
        b["purchases"] += 1
        b["units"] += event.quantity
        b["revenue"] += event.price * event.quantity if event.price is not None else 0.0


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("lateness_ms", [0, 10 * MINUTE_MS, 3 * HOUR_MS])
def test_first_records_hold_the_on_time_events_and_the_newest_revisions_all_of_them(
    seed: int, lateness_ms: int
) -> None:
    """Against a brute force of the documented policy: an event older than its partition's
    watermark, or whose bucket has closed, is late; a late event joins its bucket's
    correction if the bucket was reported (or is still open), else it is in no record."""
    rng = random.Random(seed)
    params = DemandParams(horizon=6, correction_buckets=10_000)
    newest, state = T0, None
    reports: list[DemandReport] = []
    closed_to = -(2**62)  # what the state was last closed to
    on_time: dict[int, dict[str, float]] = {}
    everything: dict[int, dict[str, float]] = {}
    fates: list[str | None] = []
    for n in range(600):
        stamp = newest - lateness_ms  # the partition's watermark before this event
        if rng.random() < 0.2:  # out of order, some beyond the allowed lateness
            ts = newest - rng.randrange(1, 4 * lateness_ms + 2 * HOUR_MS)
        else:
            newest += rng.choice(
                [rng.randrange(1, 10 * MINUTE_MS), rng.randrange(HOUR_MS, 9 * HOUR_MS)]
            )
            ts = newest
        kind = rng.choice(["view", "click", "add_to_cart", "purchase", "search", "login"])
        price = rng.choice([None, round(rng.uniform(1, 99), 2)])
        event = ev(ts, kind, price=price, quantity=rng.randrange(1, 4), n=n, watermark=stamp)
        if state is None and kind in ("search", "login"):
            continue  # start the category on a demand event
        start = ts // HOUR_MS * HOUR_MS
        reported = {r.bucket_start_ms for r in reports}
        state, fate = observe(state, event, params)
        fates.append(fate)
        if kind in ("search", "login"):
            assert fate is None
        elif ts >= stamp and start + HOUR_MS > closed_to:
            assert fate is None
            counted(on_time, event)
            counted(everything, event)
        else:
            open_ = start + HOUR_MS > closed_to
            assert fate == ("correction" if open_ or start in reported else "too_old")
            if fate == "correction":
                counted(everything, event)
        reports += corrections(state)
        if rng.random() < 0.3:
            closed_to = max(closed_to, newest - lateness_ms)
            reports += close_until(state, closed_to, params)
    assert state is not None
    reports += close_until(state, newest + HOUR_MS, params)
    first = [r for r in reports if r.revision == 0]
    starts = [r.bucket_start_ms for r in first]
    assert starts == list(range(starts[0], starts[-1] + HOUR_MS, HOUR_MS)), "every hour, in order"
    for report in first:
        want = on_time.get(report.bucket_start_ms, ZERO)
        assert report.actual == pytest.approx(want, abs=1e-4), report.bucket_start_ms
    newest_revision = {r.bucket_start_ms: r for r in sorted(reports, key=lambda r: r.revision)}
    for start, report in newest_revision.items():
        assert report.actual == pytest.approx(everything.get(start, ZERO), abs=1e-4), start
    assert set(everything) <= set(newest_revision)
    assert "correction" in fates, "the stream must exercise the late path"
    assert state.late_events == sum(f is not None for f in fates)
    assert not state.open and not state.late_open and not state.outbox


def test_quiet_hours_close_as_zeros_in_order_and_an_event_in_a_closed_hour_is_late() -> None:
    params = DemandParams(horizon=4)
    state, _ = observe(None, ev(T0 + MINUTE_MS, "purchase", price=10.0, quantity=2), params)
    assert close_until(state, T0 + 59 * MINUTE_MS, params) == []  # the hour has not ended
    state, late = observe(state, ev(T0 + 59 * MINUTE_MS, "view"), params)  # so this one counts
    assert late is None
    reports = close_until(state, T0 + 4 * HOUR_MS, params)
    assert [r.bucket_start_ms - T0 for r in reports] == [0, HOUR_MS, 2 * HOUR_MS, 3 * HOUR_MS]
    assert reports[0].actual == ZERO | {"views": 1, "purchases": 1, "units": 2, "revenue": 20.0}
    assert [r.actual for r in reports[1:]] == [ZERO] * 3
    assert [r.predicted for r in reports] == [None, 2.0, 1.0, pytest.approx(2 / 3, abs=1e-4)]
    assert observe(state, ev(T0 + 3 * HOUR_MS + 59 * MINUTE_MS), params)[1] == "correction"
    assert observe(state, ev(T0 + 4 * HOUR_MS), params)[1] is None
    assert state.late_events == 1
    (correction,) = corrections(state)
    assert (correction.bucket_start_ms, correction.revision) == (T0 + 3 * HOUR_MS, 1)
    assert correction.actual == ZERO | {"views": 1} and correction.forecast == []
    assert corrections(state) == []  # sent once
    assert next_close_ms(state, params) == T0 + 5 * HOUR_MS
    assert close_until(state, T0, params) == []  # a watermark behind the state closes nothing
    assert close_until(state, 0, params) == []  # the watermark before the first event


def test_a_late_event_of_an_open_hour_waits_for_its_close_and_old_ones_are_too_old() -> None:
    params = DemandParams(horizon=2, correction_buckets=2)
    stamp = T0 + 2 * HOUR_MS  # its partition had got this far: events before are late
    state, fate = observe(None, ev(T0 + 2 * HOUR_MS, "view", watermark=stamp), params)
    assert fate is None
    state, fate = observe(
        state, ev(T0 + HOUR_MS + 5, "purchase", quantity=3, watermark=stamp), params
    )
    assert fate == "correction" and corrections(state) == []  # its hour is still open
    reports = close_until(state, T0 + 3 * HOUR_MS, params)
    assert [(r.bucket_start_ms - T0, r.revision, r.actual["units"]) for r in reports] == [
        (HOUR_MS, 0, 0),  # as it closed: the late purchase is not in it, nor in the forecast
        (2 * HOUR_MS, 0, 0),
        (HOUR_MS, 1, 3),  # then corrected
    ]
    close_until(state, T0 + 5 * HOUR_MS, params)  # hours 1-2 leave the two kept for corrections
    assert observe(state, ev(T0 + HOUR_MS + 9, "view", watermark=stamp), params)[1] == "too_old"
    assert sorted(state.recent) == [(T0 + 3 * HOUR_MS) // HOUR_MS, (T0 + 4 * HOUR_MS) // HOUR_MS]


def test_an_earlier_event_before_the_first_close_moves_the_first_bucket_back() -> None:
    params = DemandParams()
    state, _ = observe(None, ev(T0 + 3 * HOUR_MS), params)
    state, late = observe(state, ev(T0 + 10 * MINUTE_MS, "add_to_cart"), params)
    assert late is None
    reports = close_until(state, T0 + 4 * HOUR_MS, params)
    assert [(r.bucket_start_ms - T0, r.actual["carts"], r.actual["views"]) for r in reports] == [
        (0, 1, 0),
        (HOUR_MS, 0, 0),
        (2 * HOUR_MS, 0, 0),
        (3 * HOUR_MS, 0, 1),
    ]


def test_warm_up_falls_back_to_mean_then_seasonal_naive_then_holt_winters() -> None:
    params = DemandParams(bucket_ms=HOUR_MS, season=24, horizon=24)
    units = seasonal_units(24 * 3)
    state = new_demand("shoes", T0 // HOUR_MS, params)
    models, reports = [], []
    for hour, y in enumerate(units):
        for k in range(int(y)):
            observe(state, ev(T0 + hour * HOUR_MS + k, "purchase", n=k), params)
        (report,) = close_until(state, T0 + (hour + 1) * HOUR_MS, params)
        models.append(report.model)
        reports.append(report)
    assert models == (
        ["warm-up:mean"] * 23 + ["warm-up:seasonal-naive"] * 24 + ["holt-winters"] * 25
    )
    assert reports[5].forecast == [pytest.approx(sum(units[:6]) / 6, abs=1e-4)] * 24
    assert reports[30].forecast == units[7:31]  # the last 24 hours, in the phase of the next
    for previous, report in itertools.pairwise(reports):
        assert report.predicted == previous.forecast[0]  # one step ahead, as said an hour ago
    assert all(r.model_version == params.model_version for r in reports)


@pytest.mark.parametrize("model", ["holt-winters", "snarimax"])
def test_forecasts_are_never_negative(model: Any) -> None:
    params = DemandParams(season=4, horizon=12, model=model, alpha=0.5, beta=0.5, gamma=0.5)
    forecaster = DemandForecaster(params)
    for y in [40, 30, 35, 20, 15, 10, 12, 4, 2, 0, 1, 0, 0, 0, 0, 0]:  # falling fast: trend < 0
        forecaster.learn_one(float(y))
        forecast = forecaster.forecast(params.horizon)
        assert len(forecast) == 12 and min(forecast) >= 0.0
    assert forecaster.model == model


def test_holt_winters_starts_from_the_warm_up_and_learns_a_level_shift() -> None:
    params = DemandParams(season=3, horizon=6, alpha=0.5, gamma=0.1, warm_up_seasons=2)
    f = DemandForecaster(params)
    for y in [1, 2, 6, 1, 2, 6]:
        f.learn_one(float(y))
    assert f.forecast(6) == pytest.approx([1, 2, 6, 1, 2, 6])  # season exact, no trend
    for y in [11, 12, 16] * 10:
        f.learn_one(float(y))
    assert f.forecast(3) == pytest.approx([11, 12, 16], abs=0.5)


@pytest.mark.parametrize("model", ["holt-winters", "snarimax"])
def test_a_snapshot_round_trip_gives_identical_future_forecasts(model: Any) -> None:
    params = DemandParams(horizon=24, model=model)
    units = seasonal_units(24 * 6, seed=3)
    state = new_demand("shoes", T0 // HOUR_MS, params)

    def feed(state: CategoryDemand, hours: range) -> list[DemandReport]:
        out = []
        for hour in hours:
            for k in range(int(units[hour])):
                observe(state, ev(T0 + hour * HOUR_MS + k, "purchase", price=3.0, n=k), params)
            out += close_until(state, T0 + (hour + 1) * HOUR_MS, params)
        return out

    feed(state, range(24 * 3))
    observe(state, ev(T0 + 72 * HOUR_MS + 5, "view"), params)  # an open bucket travels too
    data = encode_demand(state)
    restored = decode_demand(data)
    original, resumed = feed(state, range(72, 24 * 6)), feed(restored, range(72, 24 * 6))
    assert original == resumed and original[0].actual["views"] == 1
    assert original[-1].model == model
    assert restored.error == state.error and restored.error.count > 0


def test_a_snapshot_from_elsewhere_is_refused() -> None:
    with pytest.raises(ValueError, match="format tag"):
        decode_demand(pickle.dumps({"not": "demand"}))
    with pytest.raises(ValueError, match="not CategoryDemand"):
        decode_demand(_SNAPSHOT_MAGIC + pickle.dumps([1]))


@pytest.mark.parametrize("model", ["holt-winters", "snarimax"])
def test_state_stays_bounded_after_many_buckets(model: Any) -> None:
    params = DemandParams(horizon=24, model=model)
    units = seasonal_units(24 * 200, seed=1)
    state = new_demand("shoes", T0 // HOUR_MS, params)
    sizes = {}
    for hour, y in enumerate(units):
        if y:
            observe(state, ev(T0 + hour * HOUR_MS, "purchase", quantity=int(y), price=2.5), params)
        close_until(state, T0 + (hour + 1) * HOUR_MS, params)
        if hour + 1 in (24 * 10, 24 * 200):
            sizes[hour + 1] = len(encode_demand(state))
    assert state.version == 24 * 200 and not state.open
    assert sizes[24 * 200] <= sizes[24 * 10] + 64  # counters' digits, nothing per bucket
    forecaster = state.forecaster
    assert len(forecaster._recent) == 24 and forecaster._warm is None


def test_error_counters_add_up_the_reports_one_step_errors() -> None:
    params = DemandParams(season=24)
    units = seasonal_units(24 * 5, seed=2)
    state = new_demand("shoes", T0 // HOUR_MS, params)
    reports = []
    for hour, y in enumerate(units):
        if y:
            observe(state, ev(T0 + hour * HOUR_MS, "purchase", quantity=int(y)), params)
        reports += close_until(state, T0 + (hour + 1) * HOUR_MS, params)
    scored = [r for i, r in enumerate(reports) if i >= 24]  # naive needs a day of history
    assert state.error.count == len(scored)
    assert state.error.abs_error_sum == pytest.approx(
        sum(abs(r.predicted - r.actual["units"]) for r in scored if r.predicted is not None),
        abs=1e-2,  # reports round to 4 decimals
    )
    assert state.error.naive_abs_error_sum == pytest.approx(
        sum(abs(units[i - 24] - units[i]) for i in range(24, len(units)))
    )


def test_a_dormant_category_stops_its_timer_and_skips_whole_seasons() -> None:
    params = DemandParams(max_gap_buckets=48, horizon=3)
    state, _ = observe(None, ev(T0 + 5 * MINUTE_MS, "purchase"), params)
    assert len(close_until(state, T0 + 47 * HOUR_MS, params)) == 47
    assert next_close_ms(state, params) == T0 + 48 * HOUR_MS
    assert len(close_until(state, T0 + 49 * HOUR_MS, params)) == 2
    assert state.quiet == 48 and next_close_ms(state, params) is None  # dormant: no timer
    year = 365 * DAY_MS
    state, _ = observe(state, ev(T0 + year + 2 * HOUR_MS, "purchase", quantity=4), params)
    reports = close_until(state, T0 + year + 4 * HOUR_MS, params)
    assert len(reports) < 24 + 3  # not the year's 8,760 empty hours
    assert state.skipped_buckets + len(reports) + 49 == year // HOUR_MS + 4
    assert state.skipped_buckets % 24 == 0  # the daily phase is kept
    assert [r.actual["units"] for r in reports if r.actual["units"]] == [4]
    assert reports[-1].bucket_start_ms == T0 + year + 3 * HOUR_MS
    assert next_close_ms(state, params) == T0 + year + 5 * HOUR_MS


def test_changed_parameters_regroup_open_buckets_and_restart_the_forecaster() -> None:
    hourly = DemandParams()
    state, _ = observe(None, ev(T0 + 10 * MINUTE_MS, "purchase", quantity=2), hourly)
    observe(state, ev(T0 + 25 * HOUR_MS), hourly)
    close_until(state, T0 + HOUR_MS, hourly)
    daily = DemandParams(bucket_ms=DAY_MS)
    state, _ = observe(state, ev(T0 + 26 * HOUR_MS, "add_to_cart"), daily)
    assert state.model_version == daily.model_version and state.forecaster.season == 7
    reports = close_until(state, (T0 // DAY_MS + 2) * DAY_MS, daily)
    # The first day's first hour went out hourly; the rest of it closes as a (zero) day.
    assert [(r.bucket_ms, r.actual["views"], r.actual["carts"]) for r in reports] == [
        (DAY_MS, 0, 0),
        (DAY_MS, 1, 1),
    ]


def test_params_are_checked_and_seasons_default_to_the_bucket() -> None:
    assert [default_season(ms) for ms in (MINUTE_MS, HOUR_MS, DAY_MS, 7 * DAY_MS, 5 * HOUR_MS)] == [
        1440,
        24,
        7,
        1,
        1,
    ]
    assert DemandParams().model_version == "holt-winters-3600s-m24-a0.02-b0-g0.1-w2"
    assert DemandParams(model="snarimax").model_version.startswith("snarimax-3600s-m24-p1")
    assert DemandParams(alpha=0.3).model_version != DemandParams().model_version
    for bad in ({"horizon": 0}, {"alpha": 0.0}, {"model": "prophet"}, {"season": 0}):
        with pytest.raises(ValueError):
            DemandParams(**bad)


def test_a_report_encodes_as_json() -> None:
    params = DemandParams(horizon=2)
    state, _ = observe(None, ev(T0, "purchase", price=4.5, quantity=2), params)
    (report,) = close_until(state, T0 + HOUR_MS, params)
    assert json.loads(msgspec.json.encode(report)) == {
        "category": "shoes",
        "bucket_start_ms": T0,
        "bucket_ms": HOUR_MS,
        "actual": {"views": 0, "carts": 0, "purchases": 1, "units": 2, "revenue": 9.0},
        "forecast": [2.0, 2.0],
        "forecast_start_ms": T0 + HOUR_MS,
        "predicted": None,
        "model": "warm-up:mean",
        "model_version": params.model_version,
        "revision": 0,
    }


# --- the evaluation -----------------------------------------------------------------------


def test_rolling_scores_equal_a_direct_computation() -> None:
    values = seasonal_units(24 * 6, seed=4)
    params = DemandParams(horizon=5, season=24, bucket_ms=HOUR_MS)
    start, stop = 24 * 4, 24 * 6
    scores = rolling_scores(values, params, 24, start, stop)
    forecaster = DemandForecaster(params)
    model, naive, n = 0.0, 0.0, 0
    for origin in range(stop - 1):
        forecaster.learn_one(values[origin])
        if origin >= start - 1:
            forecast = forecaster.forecast(5)
            for h in range(1, 6):
                if origin + h < stop:
                    model += abs(forecast[h - 1] - values[origin + h])
                    naive += abs(values[origin + h - 24] - values[origin + h])
                    n += 1
    assert sum(scores.counts) == n == sum(min(5, stop - 1 - o) for o in range(start - 1, stop - 1))
    assert scores.mae_model == pytest.approx(model / n)
    assert scores.mae_naive == pytest.approx(naive / n)
    assert naive_scale([1.0, 3.0, 2.0, 6.0], 2, 0, 4) == 2.0
    # m = 1 with h > m: naive repeats the last value
    flat = rolling_scores([1.0, 2.0, 3.0, 4.0, 5.0], DemandParams(horizon=2, season=1), 1, 3, 5)
    assert flat.naive == [1.0 + 1.0, 2.0] and flat.counts == [2, 1]


def test_generated_series_are_the_hourly_units_of_the_biggest_categories() -> None:
    series = demand_eval.generated_series(6_000, 2, days=3)
    start = DEFAULT_END_MS - 3 * DAY_MS
    units: dict[str, list[float]] = defaultdict(lambda: [0.0] * 72)
    for generated in generate_events(6_000, demand_eval.GENERATED_USERS, start_ms=start,
                                     span_days=3):  # fmt: skip
        event = parse_event(generated.line)
        if generated.expected_reason is not None or not isinstance(event, Event):
            continue
        if event.type == "purchase" and event.category is not None:
            units[event.category][(event.ts_ms - start) // HOUR_MS] += event.quantity
    biggest = sorted(units, key=lambda c: (-sum(units[c]), c))[:2]  # ties by name
    assert [s.name for s in series] == [f"generated {c} hourly" for c in biggest]
    assert [list(s.values) for s in series] == [units[c] for c in biggest]


def test_eval_demand_command_prints_a_table_and_json() -> None:
    done = profilestream("eval-demand", "--events", "20000", "--categories", "1", "--json")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    result = json.loads(out.strip().splitlines()[-1])
    names = [r["series"] for r in result["series"]]
    assert names[:2] == ["cdnow daily units", "cdnow daily units"]
    assert {"cdnow-daily", "cdnow-weekly", "generated-hourly"} == set(result["selection"])
    for row in result["series"]:
        assert row["mase_model"] == pytest.approx(row["mae_model"] / row["scale"])
        assert row["ratio"] == pytest.approx(row["mae_model"] / row["mae_naive"])
    daily = [r for r in result["series"] if r["series"] == "cdnow daily units" and r["selected"]]
    assert daily[0]["ratio"] < 1 and daily[0]["tail"] == 182
    assert "MASE" in out and "chosen on the first two thirds" in out


def test_a_periodic_series_is_forecast_exactly_and_split_in_thirds() -> None:
    toy = Series("toy", [float(i % 3) for i in range(90)], 3, 3, 3)
    row = demand_eval.evaluate_series(toy, DemandParams(bucket_ms=1, horizon=3, season=3))
    assert row.mae_naive == 0.0 and row.mae_model < 0.05 and row.fit == 60 and row.tail == 30
