"""The per-user step under Bytewax: :class:`UserLogic` adapts the pure
:class:`~operators.user.UserMachine` to a :class:`~bytewax.operators.StatefulBatchLogic`.

The machine decides everything; the adapter reads the clocks (the wall clock, and the
watermark of the worker's input partitions), drives the shared text batcher, tells the
worker the oldest event still waiting for a vector (category demand's watermark must not
pass it) and turns the machine's due times into the wake-up Bytewax asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bytewax.operators import StatefulBatchLogic

from dataflow.clock import Clock, StepTime, WorkerTime, as_datetime
from operators.ingest import Event, Progress
from operators.text.embedding import TextBatcher
from operators.user import MachineSettings, Ports, UserMachine, UserOutput, UserSnapshot, resumed


@dataclass(frozen=True)
class UserContext:
    """What every user's logic on a process shares: the machine's settings and ports, the
    text batcher behind them, the wall clock and the profile step's event time."""

    settings: MachineSettings
    ports: Ports
    batcher: TextBatcher
    clock: Clock
    time: StepTime  # the profile step's event time on each worker


#: What the profile step emits: the machine's outputs and the watermark each worker
#: forwards to the demand step.
Output = UserOutput | Progress


class UserLogic(StatefulBatchLogic[Event, Output, UserSnapshot]):
    """One user's machine under Bytewax."""

    __slots__ = ("context", "machine", "time")

    def __init__(self, context: UserContext, resume: UserSnapshot | tuple[Any, ...] | None) -> None:
        self.context = context
        self.time: WorkerTime = context.time.here()
        self.machine = UserMachine(context.settings, context.ports, resumed(resume))
        self._note_waiting()

    def on_batch(self, values: list[Event]) -> tuple[list[Output], bool]:
        out: list[Output] = list(self.machine.receive(values, self.context.clock()))
        self._note_waiting()
        return out, self._finished()

    def on_notify(self) -> tuple[list[Output], bool]:
        now = self.context.clock()
        if self.machine.waiting:
            self.context.batcher.flush_due(now)
        out: list[Output] = list(self.machine.on_time(now, self.time.table.watermark_ms))
        self._note_waiting()
        return out, self._finished()

    def on_eof(self) -> tuple[list[Output], bool]:
        machine, clock = self.machine, self.context.clock
        out: list[Output] = list(machine.advance(clock()))
        while machine.waiting:  # the input is over: embed what waits now
            self.context.batcher.flush(clock())
            out += machine.advance(clock())
        out += machine.finish(clock(), self.time.table.end_ms())
        self.time.input_ended = True
        self._note_waiting()
        return out, self._finished()

    def notify_at(self) -> datetime | None:
        # The wall clock matters only to events waiting for a batch that is late.
        now = self.context.clock() if self.machine.waiting else 0
        wall, event = self.machine.next_due(now)
        if event:
            at = self.context.time.wall_due(self.time, event)
            return at if not wall else min(as_datetime(wall), at)
        return as_datetime(wall) if wall else None

    def snapshot(self) -> UserSnapshot:
        # After on_eof, Bytewax snapshots every key once more and the run ends: the last
        # snapshot takes the state's bytes (see UserMachine.snapshot).
        return self.machine.snapshot(final=self.time.input_ended)

    def _finished(self) -> bool:
        if self.machine.finished():
            self.machine.release()
            return StatefulBatchLogic.DISCARD
        # Between activations a user's state rests as the bytes of its last delta: keeping
        # the active ones decoded gained 2% once the collector was tuned (runner.py), for
        # 1.4 KB more per user at 200k users.
        self.machine.rest()
        return StatefulBatchLogic.RETAIN

    def _note_waiting(self) -> None:
        oldest = self.machine.oldest_waiting_ms
        if oldest:
            self.time.waiting[self] = oldest
        else:
            self.time.waiting.pop(self, None)
