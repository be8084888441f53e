"""`profilestream demo` end to end, small: generate, train the item model, run the flow, report."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflow.commands.demo import format_report, run_demo
from dataflow.config import Config

pytestmark = pytest.mark.slow


def test_the_demo_accounts_for_every_line_and_recommends(tmp_path: Path) -> None:
    config = Config(input_path=tmp_path / "events.jsonl", output_dir=tmp_path, metrics_port=0)
    report = run_demo(config, 4_000, 300, seed=3, log=lambda _line: None)
    assert report.events_in_deltas + report.dead_by_reason.total() == report.events_in
    assert report.deltas_by_kind.total() < report.events_in_deltas  # coalesced
    assert report.dead_by_reason == report.expected_dead_by_reason
    assert len(report.profiles) == 3
    assert all(p.recommended for p in report.profiles)
    assert any(p.top_keywords for p in report.profiles)
    text = format_report(report)
    assert "recommended next" in text and "top keywords" in text and "last 24 hours" in text
    assert [p.name for p in (tmp_path / "models").iterdir()]  # the trained item model version
