"""CDNOW (from `lifetimes`) through the real dataflow: streaming RFM against pandas."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataflow.config import Config
from dataflow.eval.segments import cdnow_flow_check
from tests.support.fakes import HashEncoder


@pytest.mark.slow
def test_cdnow_rfm_through_the_flow_equals_a_batch_recomputation(tmp_path: Path) -> None:
    check = cdnow_flow_check(
        tmp_path, encoder=HashEncoder(), config=Config(emit_interval_ms=1_000), out=None
    )
    assert check.events == 69_659
    assert check.comparison.users == 23_570
    assert check.comparison.share_equal >= 0.99
    assert check.memberships_match and check.transitions > 23_570
