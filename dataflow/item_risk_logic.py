"""The per-item risk step under Bytewax: purchases and chargebacks taken in event-time order
as the watermark passes them, each purchase scored (see :mod:`operators.apps.learned_risk`)."""

from __future__ import annotations

from collections.abc import Callable

from bytewax.operators import StatefulBatchLogic

from dataflow import metrics
from dataflow.clock import StepTime, WatermarkDriven
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


class ItemRiskLogic(WatermarkDriven[PurchaseCheck | ItemVerdict, ItemOutput]):
    """One item's risk view: hold records until the watermark passes them, then score.

    ``on_batch`` only queues; records are taken in event-time order as the watermark passes
    them (:class:`~dataflow.clock.WatermarkDriven`), so the scores do not depend on how the
    users' outputs interleaved. ``model`` gives the model in use when they are taken: a
    retrained one takes over without a restart, and each score names its version.
    """

    __slots__ = ("model", "settle_days", "state")

    def __init__(
        self,
        model: Callable[[], RiskModel | None],
        settle_days: int,
        step: StepTime,
        resume: bytes | None,
    ) -> None:
        super().__init__(step)
        self.model = model
        self.settle_days = settle_days
        self.state: ItemRisk | None = None if resume is None else decode_item_risk(resume)

    def on_batch(self, values: list[PurchaseCheck | ItemVerdict]) -> tuple[list[ItemOutput], bool]:
        state = self.state
        for record in values:
            state = receive(state, record)
        self.state = state
        return [], StatefulBatchLogic.RETAIN

    def due_ms(self) -> int | None:
        return next_due_ms(self.state)

    def snapshot(self) -> bytes:
        assert self.state is not None
        return encode_item_risk(self.state)

    def take(self, watermark_ms: int) -> list[ItemOutput]:
        if self.state is None:
            return []
        model = self.model()
        self.state, outputs = settle_until(self.state, watermark_ms, model, self.settle_days)
        for output in outputs:
            if type(output) is RiskScore:
                metrics.RISK_SCORES.inc()
            else:
                metrics.ALERTS.labels(LEARNED_KIND).inc()
        return outputs
