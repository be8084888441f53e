"""A recovery store written by release 1 resumes under this release, and nothing is lost.

``tests/support/release_1/part-0.sqlite3`` is the recovery store of a run of release 1
(commit 2dfa61e, where snapshots were positional tuples and classes lived in
``operators.events`` and ``operators.demand``), aborted after 400 of the 600 lines below:
on that commit, ``build_flow(Config(embed_batch_size=4, embed_max_wait_ms=60_000,
emit_interval_ms=600_000), encoder=HashEncoder(), sentiment=WordListSentiment(),
source=TestingSource(lines with an ABORT at 400, batch_size=10), sinks=...)`` under
``run_main(epoch_interval=timedelta(0), recovery_config=...)``. Every user had changes
pending (the emit interval outlasted the run) and some texts were waiting, so the store
holds the state, the pending changes and the waiting events, as well as demand.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, TestingSource, run_main

from dataflow.config import Config
from dataflow.factories import profile_params
from dataflow.flow import build_flow
from dataflow.sim import generate_events
from operators.apps import DemandReport
from operators.ingest import Event, parse_event
from operators.profile import ProfileView, delta_from_json
from tests.support import ROOT
from tests.support.fakes import HashEncoder, WordListSentiment
from tests.support.kafka_flow import DEMAND_MEASURES, demand_recount
from tests.support.reference import assert_profiles_match, reference_states

STORE = ROOT / "tests" / "support" / "release_1" / "part-0.sqlite3"
LINES_SHA256 = "3134937c5554adef3f36650254863578348380517dd382670ba5768bfa82e97e"
ZERO = dict.fromkeys(DEMAND_MEASURES, 0.0)
CONFIG = Config(embed_batch_size=4, embed_max_wait_ms=60_000, emit_interval_ms=600_000)


def test_a_release_1_recovery_store_resumes_and_every_event_counts(tmp_path: Path) -> None:
    generated = list(generate_events(600, 25, seed=3, malformed_rate=0.02))
    lines = [g.line.decode() for g in generated]
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == LINES_SHA256
    store = tmp_path / "recovery"
    store.mkdir()
    shutil.copy(STORE, store / "part-0.sqlite3")
    outputs: dict[str, list[tuple[str, str]]] = {
        n: [] for n in ("deltas", "dead_letters", "segments", "alerts", "demand")
    }
    resumed_input = [
        (line if i >= 400 else "junk", f"previous:{i}") for i, line in enumerate(lines)
    ]
    flow = build_flow(
        CONFIG,
        encoder=HashEncoder(),
        sentiment=WordListSentiment(),
        # Lines before the abort are junk now: a resumed run must never read them again.
        source=TestingSource(resumed_input, batch_size=10),
        sinks={name: TestingSink(items) for name, items in outputs.items()},
    )
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(store)))

    dead = [json.loads(v) for _, v in outputs["dead_letters"]]
    assert all(int(d["source"].split(":")[1]) >= 400 for d in dead), "read before the abort"
    view = ProfileView()
    for _, value in outputs["deltas"]:
        view.apply(delta_from_json(value))
    params = profile_params(CONFIG, HashEncoder.name)
    reference = reference_states(lines, HashEncoder(), params, WordListSentiment())
    # Every user's events of both runs are in their profile: what release 1 had pending
    # and waiting came back from its tuples, the rest was read by this release.
    assert_profiles_match(view.profiles, reference, params, atol=1e-3)
    # Demand resumed from release 1's pickled category states: the first hours reported are
    # ones only release 1 read (it counted re-sent duplicates too, which this release does
    # not), and the hours after the abort count exactly the events accepted.
    deltas = [delta_from_json(v) for _, v in outputs["deltas"]]
    recount = demand_recount(generated, deltas)
    reports = [DemandReport(**json.loads(v)) for _, v in outputs["demand"]]
    assert min(r.bucket_start_ms for r in reports) == min(start for _, start in recount)
    before = max(e.ts_ms for g in generated[:400] if isinstance(e := parse_event(g.line), Event))
    after = [r for r in reports if r.bucket_start_ms > before]
    assert after
    for r in after:
        assert r.actual == pytest.approx(recount.get((r.category, r.bucket_start_ms), ZERO))
