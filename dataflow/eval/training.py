"""Train the item model from an event log, as ``profilestream train`` and the evaluations do.

``histories_from_events`` groups each user's item events in event-time order, as
:func:`operators.recsys.train_item_model` reads them; ``train`` fits the model and saves a
new version folder, which a running flow started with ``--item-model-dir`` picks up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from operators.ingest import Event, parse_event
from operators.profile import DEFAULT_TYPE_WEIGHTS
from operators.recsys import ItemInteraction, ItemModel, save_item_model, train_item_model

Log = Callable[[str], None]


def histories_from_events(lines: list[bytes]) -> dict[str, list[ItemInteraction]]:
    """Each user's item events with interest weight, in event-time order (bad lines skipped)."""
    histories: dict[str, list[ItemInteraction]] = {}
    for line in lines:
        event = parse_event(line)
        if not isinstance(event, Event) or event.item_id is None:
            continue
        if DEFAULT_TYPE_WEIGHTS.get(event.type, 0.0) <= 0.0:
            continue
        histories.setdefault(event.user_id, []).append(
            ItemInteraction(event.item_id, event.type, event.ts_ms, event.category, event.brand)
        )
    for history in histories.values():
        history.sort(key=lambda x: x.ts_ms)
    return histories


def train(
    histories: dict[str, list[ItemInteraction]],
    attributes: dict[str, list[str]] | None,
    out: Path,
) -> tuple[ItemModel, Path]:
    """Train on ``histories`` and save a new version under ``out``; returns model and folder."""
    types = {x.type for h in histories.values() for x in h}
    # The profile's prior of what each type says about interest; rescaled by the trainer.
    prior = {t: DEFAULT_TYPE_WEIGHTS[t] for t in types if t in DEFAULT_TYPE_WEIGHTS}
    model = train_item_model(histories.values(), attributes, type_weights=prior)
    return model, save_item_model(model, out)
