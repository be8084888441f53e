"""The per-category step under Bytewax: demand counted into buckets that close as the
watermark passes (see :mod:`operators.apps.demand`)."""

from __future__ import annotations

from bytewax.operators import StatefulBatchLogic

from dataflow import metrics
from dataflow.clock import StepTime, WatermarkDriven
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
from operators.ingest import Event


class CategoryLogic(WatermarkDriven[Event, DemandReport]):
    """One category's demand: count events into buckets, close them as the watermark passes.

    ``on_batch`` only counts (and re-states a closed bucket a late event joined); buckets
    close as the watermark passes them (:class:`~dataflow.clock.WatermarkDriven`).
    """

    __slots__ = ("params", "state")

    def __init__(self, params: DemandParams, step: StepTime, resume: bytes | None) -> None:
        super().__init__(step)
        self.params = params
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

    def due_ms(self) -> int | None:
        return next_close_ms(self.state, self.params) if self.state is not None else None

    def snapshot(self) -> bytes:
        assert self.state is not None
        return encode_demand(self.state)

    def take(self, watermark_ms: int) -> list[DemandReport]:
        if self.state is None:
            return []
        return exported(close_until(self.state, watermark_ms, self.params))


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
