"""The per-category step under Bytewax: demand counted into buckets that close as the
watermark passes (see :mod:`operators.apps.demand`)."""

from __future__ import annotations

from datetime import datetime

from bytewax.operators import StatefulBatchLogic

from dataflow import metrics
from dataflow.clock import (
    StepTime,
)
from operators.apps import (
    CategoryDemand,
    DemandParams,
    DemandReport,
    close_until,
    corrections,
    decode_demand,
    encode_demand,
    next_close_ms,
    observe,
)
from operators.ingest import (
    Event,
)


class CategoryLogic(StatefulBatchLogic[Event, DemandReport, bytes]):
    """One category's demand: count events into buckets, close them as the watermark passes.

    ``on_batch`` only counts (and re-states a closed bucket a late event joined); buckets
    close in timers and at the end of the input, when every event older than the
    watermark has been counted (see :mod:`dataflow.clock`).
    """

    __slots__ = ("params", "state", "step", "time")

    def __init__(self, params: DemandParams, step: StepTime, resume: bytes | None) -> None:
        self.params = params
        self.step = step
        self.time = step.here()
        self.state: CategoryDemand | None = None if resume is None else decode_demand(resume)

    def on_batch(self, values: list[Event]) -> tuple[list[DemandReport], bool]:
        state = self.state
        for event in values:
            state, late = observe(state, event, self.params)
            if late is not None:
                metrics.DEMAND_LATE_EVENTS.labels(late).inc()
        self.state = state
        assert state is not None
        return exported(corrections(state)), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[DemandReport], bool]:
        return self._close(self.time.table.watermark_ms), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[DemandReport], bool]:
        return self._close(self.time.table.end_ms()), StatefulBatchLogic.RETAIN  # all is in

    def notify_at(self) -> datetime | None:
        due = next_close_ms(self.state, self.params) if self.state is not None else None
        return None if due is None else self.step.wall_due(self.time, due)

    def snapshot(self) -> bytes:
        assert self.state is not None
        return encode_demand(self.state)

    def _close(self, watermark: int) -> list[DemandReport]:
        if self.state is None:
            return []
        return exported(close_until(self.state, watermark, self.params))


def exported(reports: list[DemandReport]) -> list[DemandReport]:
    """Show closed buckets and the new forecast on the Grafana panel; count corrections."""
    for report in reports:
        if report.revision:
            metrics.DEMAND_CORRECTIONS.inc()
            continue
        category = report.category
        for measure, value in report.actual.items():
            metrics.DEMAND_ACTUAL.labels(category, measure).set(value)
        if report.forecast:
            metrics.DEMAND_FORECAST.labels(category, "next").set(report.forecast[0])
            metrics.DEMAND_FORECAST.labels(category, "horizon").set(sum(report.forecast))
        if report.predicted is not None:
            metrics.DEMAND_ABS_ERROR.labels(category).inc(
                abs(report.predicted - report.actual["units"])
            )
            metrics.DEMAND_FORECASTS_SCORED.labels(category).inc()
    return reports
