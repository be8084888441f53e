"""The per-item risk step under Bytewax: purchases and chargebacks taken in event-time order
as the watermark passes them, each purchase scored (see :mod:`operators.apps.learned_risk`)."""

from __future__ import annotations

from datetime import datetime

from bytewax.operators import StatefulBatchLogic

from dataflow import metrics
from dataflow.clock import StepTime
from operators.apps.learned_risk import (
    LEARNED_KIND,
    ItemOutput,
    ItemRisk,
    ItemVerdict,
    PurchaseCheck,
    RiskScore,
    decode_item_risk,
    encode_item_risk,
    next_due_ms,
    receive,
    settle_until,
)
from operators.apps.risk_model import RiskModel


class ItemRiskLogic(StatefulBatchLogic[PurchaseCheck | ItemVerdict, ItemOutput, bytes]):
    """One item's risk view: hold records until the watermark passes them, then score.

    ``on_batch`` only queues; records are taken in timers and at the end of the input, when
    every record older than the watermark has arrived (see :mod:`dataflow.clock`), so the
    scores do not depend on how the users' outputs interleaved.
    """

    __slots__ = ("model", "settle_days", "state", "step", "time")

    def __init__(
        self,
        model: RiskModel | None,
        settle_days: int,
        step: StepTime,
        resume: bytes | None,
    ) -> None:
        self.model = model
        self.settle_days = settle_days
        self.step = step
        self.time = step.here()
        self.state: ItemRisk | None = None if resume is None else decode_item_risk(resume)

    def on_batch(self, values: list[PurchaseCheck | ItemVerdict]) -> tuple[list[ItemOutput], bool]:
        state = self.state
        for record in values:
            state = receive(state, record)
        self.state = state
        return [], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[ItemOutput], bool]:
        return self._take(self.time.table.watermark_ms), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[ItemOutput], bool]:
        return self._take(self.time.table.end_ms()), StatefulBatchLogic.RETAIN  # all is in

    def notify_at(self) -> datetime | None:
        due = next_due_ms(self.state)
        return None if due is None else self.step.wall_due(self.time, due)

    def snapshot(self) -> bytes:
        assert self.state is not None
        return encode_item_risk(self.state)

    def _take(self, watermark: int) -> list[ItemOutput]:
        if self.state is None:
            return []
        self.state, outputs = settle_until(self.state, watermark, self.model, self.settle_days)
        for output in outputs:
            if type(output) is RiskScore:
                metrics.RISK_SCORES.inc()
            else:
                metrics.ALERTS.labels(LEARNED_KIND).inc()
        return outputs
