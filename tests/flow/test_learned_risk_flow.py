"""The learned purchase score through the real dataflow: the buyer's and the item's features,
chargebacks read from their own file, a model trained on the flow's own feature log."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, run_main

from dataflow.config import Config
from dataflow.eval.handbook import replayed_features
from dataflow.flow import build_flow
from dataflow.sim.handbook import (
    HandbookParams,
    Simulation,
    handbook_events,
    handbook_labels,
    simulate,
)
from dataflow.sources import JsonlSource
from operators.apps.learned_risk import LEARNED_KIND
from operators.apps.risk_model import RiskModel, RiskModelParams, fit_from_feedback, save_model
from operators.ingest import EventTimeSpeed
from operators.ingest.units import DAY_MS
from tests.support.fakes import HashEncoder, WordListSentiment

PARAMS = HandbookParams(customers=150, terminals=300, days=40, seed=5)
OUTPUTS = ("risk_scores", "alerts", "dead_letters")


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return simulate(PARAMS)


@pytest.fixture(scope="module")
def files(sim: Simulation, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("handbook")
    events, labels = folder / "events.jsonl", folder / "chargebacks.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in handbook_events(sim)))
    labels.write_bytes(b"".join(line + b"\n" for line in handbook_labels(sim, 7)))
    return events, labels


def run(
    files: tuple[Path, Path], retrain: _RetrainAfter | None = None, **settings: Any
) -> dict[str, list[Any]]:
    """The flow over the events and the chargebacks (two input partitions, as
    ``--labels-path`` reads them); its outputs as parsed JSON. ``retrain`` takes the risk
    scores' place as their sink."""
    outputs: dict[str, list[Any]] = {name: [] for name in OUTPUTS}
    sinks: dict[str, DynamicSink[Any]] = {
        name: TestingSink(items) for name, items in outputs.items()
    }
    if retrain is not None:
        outputs["risk_scores"], sinks["risk_scores"] = retrain.scores, retrain
    config = Config(emit_interval_ms=0, risk_settle_days=7, **settings)
    flow = build_flow(
        config,
        encoder=HashEncoder(),
        sentiment=WordListSentiment(),
        source=JsonlSource(list(files)),
        sinks=sinks,
        timers=lambda: EventTimeSpeed(min_wait_ms=50, max_wait_ms=500),
    )
    run_main(flow)
    return {name: [json.loads(v) for _, v in items] for name, items in outputs.items()}


@pytest.fixture(scope="module")
def unscored(files: tuple[Path, Path]) -> dict[str, list[Any]]:
    return run(files)


def test_every_purchase_is_logged_once_with_the_replays_features(
    sim: Simulation, unscored: dict[str, list[Any]]
) -> None:
    assert unscored["dead_letters"] == []
    scores = {s["event_id"]: s for s in unscored["risk_scores"]}
    assert len(scores) == len(unscored["risk_scores"]) == len(sim.ts_ms)
    expected = replayed_features(sim)
    got = np.array([scores[f"tx{i}"]["features"] for i in range(len(sim.ts_ms))])
    # The chargebacks file is read beside the events, ahead of them in event time: the
    # item step's watermark order makes the features what an in-order replay computes.
    assert np.allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert all(s["score"] is None and s["model_version"] is None for s in scores.values())
    assert not [a for a in unscored["alerts"] if a["kind"] == LEARNED_KIND]


def test_a_model_trained_on_the_flows_log_scores_and_alerts(
    sim: Simulation, files: tuple[Path, Path], unscored: dict[str, list[Any]], tmp_path: Path
) -> None:
    now = PARAMS.start_ms + 30 * DAY_MS
    verdicts = [(f"tx{i}", int(sim.ts_ms[i]) + 7 * DAY_MS) for i in np.flatnonzero(sim.fraud)]
    model = fit_from_feedback(
        ((s["event_id"], s["event_time_ms"], s["features"]) for s in unscored["risk_scores"]),
        verdicts,
        now,
        RiskModelParams(trees=10, max_depth=6, min_frauds=5),
    )
    model_path = tmp_path / "model.msgpack"
    save_model(model, model_path)

    out = run(files, risk_model_path=model_path)
    scores = out["risk_scores"]
    assert {s["model_version"] for s in scores} == {model.version}
    for s in scores[:200]:
        assert s["score"] == pytest.approx(model.score_one(s["features"]), abs=1e-6)
    flagged = {s["event_id"] for s in scores if s["score"] >= model.threshold}
    learned = [a for a in out["alerts"] if a["kind"] == LEARNED_KIND]
    assert {a["event_ids"][0] for a in learned} == flagged
    assert all(a["model_version"] == model.version for a in learned)
    # Scored after the training time, the model ranks fraud above genuine purchases.
    later = [s for s in scores if s["event_time_ms"] >= now]
    fraud = {f"tx{i}" for i in np.flatnonzero(sim.fraud)}
    mean_fraud = np.mean([s["score"] for s in later if s["event_id"] in fraud])
    mean_genuine = np.mean([s["score"] for s in later if s["event_id"] not in fraud])
    assert mean_fraud > 3 * mean_genuine


class _RetrainAfter(DynamicSink[Any]):
    """The risk scores' sink; once it holds ``after`` scores, ``train-risk`` writes a new
    model over the one the flow loaded (as a daily job would while the flow runs)."""

    def __init__(self, after: int, path: Path, model: RiskModel) -> None:
        self.after, self.path, self.model = after, path, model
        self.scores: list[Any] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self)


class _Partition(StatelessSinkPartition[Any]):
    def __init__(self, sink: _RetrainAfter) -> None:
        self.sink = sink

    def write_batch(self, items: list[Any]) -> None:
        sink = self.sink
        before = len(sink.scores)
        sink.scores += items
        if before < sink.after <= len(sink.scores):
            save_model(sink.model, sink.path)
            os.utime(sink.path, ns=(2 * 10**18, 2 * 10**18))  # a new mtime, however fast


def test_a_retrained_model_takes_over_without_a_restart(
    sim: Simulation, files: tuple[Path, Path], unscored: dict[str, list[Any]], tmp_path: Path
) -> None:
    log = [(s["event_id"], s["event_time_ms"], s["features"]) for s in unscored["risk_scores"]]
    verdicts = [(f"tx{i}", int(sim.ts_ms[i]) + 7 * DAY_MS) for i in np.flatnonzero(sim.fraud)]
    params = RiskModelParams(trees=10, max_depth=6, min_frauds=5)
    old, new = (
        fit_from_feedback(log, verdicts, PARAMS.start_ms + days * DAY_MS, params)
        for days in (20, 30)
    )
    assert old.version != new.version
    path = tmp_path / "model.msgpack"
    save_model(old, path)
    halfway = len(log) // 2
    retrain = _RetrainAfter(halfway, path, new)

    out = run(files, retrain, risk_model_path=path, model_poll_s=0.0)
    versions = [s["model_version"] for s in out["risk_scores"]]
    switch = versions.index(new.version)
    # The old model until the file changed, the new one from the next scores on: no restart.
    assert halfway <= switch < len(versions) - halfway // 2
    assert set(versions[:switch]) == {old.version} and set(versions[switch:]) == {new.version}
    models = {old.version: old, new.version: new}
    for s in out["risk_scores"][switch - 50 : switch + 50]:
        model = models[s["model_version"]]
        assert s["score"] == pytest.approx(model.score_one(s["features"]), abs=1e-6)
    scored = {s["event_id"]: s for s in out["risk_scores"]}
    learned = [a for a in out["alerts"] if a["kind"] == LEARNED_KIND]
    assert {a["model_version"] for a in learned} == {old.version, new.version}
    for alert in learned:
        score = scored[alert["event_ids"][0]]
        assert alert["model_version"] == score["model_version"]
        assert score["score"] >= models[score["model_version"]].threshold
