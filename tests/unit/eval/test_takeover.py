"""Training the takeover score: suspected purchases from the rules, a threshold chosen on
streams the forest did not see, a model the flow loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataflow.eval.risk import read_events, read_labels
from dataflow.eval.takeover import SuspectedPurchases, suspected_purchases, train_takeover
from dataflow.sim import AnomalyConfig, generate_events, write_events, write_labels
from dataflow.sim.anomalies import SHIFTED
from operators.apps import TAKEOVER_FEATURES, load_takeover_model
from operators.apps.risk_model import RiskModelParams
from tests.support.cli import profilestream


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """Three small streams with takeovers only (of 5% of the users), half of them from a
    device the victim used."""
    folder = tmp_path_factory.mktemp("takeover")
    files = []
    for seed in (31, 32, 33):
        events = list(
            generate_events(
                100_000,
                2_000,
                seed=seed,
                anomalies=AnomalyConfig(0.05, kinds=("account_takeover",), style=SHIFTED),
            )
        )
        paths = folder / f"events-{seed}.jsonl", folder / f"labels-{seed}.jsonl"
        write_events(paths[0], events)
        write_labels(paths[1], events)
        files.append(paths)
    return files


@pytest.fixture(scope="module")
def suspected(streams: list[tuple[Path, Path]]) -> list[SuspectedPurchases]:
    return [suspected_purchases(read_events(e), read_labels(lab)) for e, lab in streams]


def test_suspected_purchases_are_the_ones_from_suspected_origins(
    suspected: list[SuspectedPurchases], streams: list[tuple[Path, Path]]
) -> None:
    for found, (events, labels) in zip(suspected, streams, strict=True):
        assert found.rows.shape == (len(found.takeover), len(TAKEOVER_FEATURES))
        takeover_buys = {
            e.event_id
            for e in read_events(events)
            if e.type == "purchase" and read_labels(labels).get(e.event_id) == "account_takeover"
        }
        # Takeovers of victims with the history a suspicion needs come from a suspected
        # origin; so do purchases of owners whose phone changed address.
        assert found.takeover.sum() >= 0.5 * len(takeover_buys) > 0
        assert 0.1 < 1 - found.takeover.mean() < 0.9
        # A suspicion opened by a new device is marked so, and all of its purchases share it.
        new_device = found.rows[:, TAKEOVER_FEATURES.index("new_device_suspicion")]
        assert set(np.unique(new_device)) <= {0.0, 1.0}


def test_the_threshold_comes_from_streams_the_forest_did_not_see(
    suspected: list[SuspectedPurchases],
) -> None:
    params = RiskModelParams(name="takeover-test", trees=20, max_depth=6, min_frauds=5)
    model, choice = train_takeover(suspected, precision=0.9, params=params)
    assert model.features == TAKEOVER_FEATURES and model.threshold == choice.threshold
    assert choice.precision >= 0.9 and choice.recall > 0.5
    assert choice.takeovers <= choice.suspicions
    # In-sample, the forest would look perfect; the held-out choice must not be that.
    scores = model.score(np.vstack([s.rows for s in suspected]))
    truth = np.concatenate([s.takeover for s in suspected])
    assert scores[truth].mean() > 3 * scores[~truth].mean()
    with pytest.raises(ValueError, match="two streams"):
        train_takeover(suspected[:1], params=params)


def test_train_takeover_writes_a_model_the_flow_loads(
    streams: list[tuple[Path, Path]], tmp_path: Path
) -> None:
    out = tmp_path / "takeover.msgpack"
    argv = ["train-takeover", "--out", str(out), "--precision", "0.9"]
    for events, labels in streams:
        argv += ["--events", str(events), "--labels", str(labels)]
    done = profilestream(*argv)
    assert done.returncode == 0, done.stderr
    assert "takeover-v1" in done.stdout
    model = load_takeover_model(out)
    assert model.features == TAKEOVER_FEATURES and 0 < model.threshold < 1
