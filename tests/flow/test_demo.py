"""`profilestream demo` end to end, small: generate, train the item model, run the flow, report."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflow.config import Config
from dataflow.demo import format_report, run_demo
from dataflow.sim import CATEGORIES

pytestmark = pytest.mark.slow
CHINESE = {c.name for c in CATEGORIES if c.lang == "zh"}


def test_the_demo_accounts_for_every_line_and_recommends(tmp_path: Path) -> None:
    config = Config(input_path=tmp_path / "events.jsonl", output_dir=tmp_path, metrics_port=0)
    report = run_demo(config, 4_000, 300, seed=3, log=lambda _line: None)
    assert report.events_in_deltas + report.dead_by_reason.total() == report.events_in
    assert report.deltas_by_kind.total() < report.events_in_deltas  # coalesced
    assert report.dead_by_reason == report.expected_dead_by_reason
    assert 3 <= len(report.profiles) <= 4  # the Chinese shopper may be one of the three
    assert all(p.recommended for p in report.profiles)
    assert any(p.top_keywords for p in report.profiles)
    text = format_report(report)
    assert "recommended next" in text and "top keywords" in text and "last 24 hours" in text
    assert [p.name for p in (tmp_path / "models").iterdir()]  # the trained item model version
    assert [p.name for p in (tmp_path / "item-vectors").iterdir()]  # the embedded catalog
    # The interest vector knows what a user shops for, in Chinese as in English: the catalog
    # item nearest to it is mostly of the user's top category.
    for lang in ("zh", "en"):
        agree, users = report.nearest_agreement[lang]
        assert users >= 30 and agree / users >= 0.8, (lang, agree, users)
    assert any(p.top_categories[0][0] in CHINESE for p in report.profiles if p.top_categories)
    assert "nearest catalog item is of the user's top category: en" in text
