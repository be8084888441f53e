"""``profilestream segments-check``: streaming RFM against a batch recount on CDNOW; timings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dataflow.eval import segments
from dataflow.eval.segments import (
    TARGET_SHARE,
    cdnow_flow_check,
    cdnow_offline_check,
    time_segments,
)
from operators.apps.segments import BUNDLED_SEGMENTS, parse_segment_book


def add_command(subparsers: Any) -> None:
    """Register ``profilestream segments-check``."""
    check = subparsers.add_parser(
        "segments-check",
        help="check streaming RFM against a batch recomputation on CDNOW; time the segments",
        description=segments.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--segments", type=Path, default=None, help="segments file to time")
    check.add_argument("--events", type=int, default=100_000, help="generated events to time on")
    check.add_argument(
        "--flow-out",
        type=Path,
        default=None,
        help="also replay CDNOW through the real dataflow, writing its outputs here",
    )
    check.set_defaults(handler=_segments_check_command)


def _segments_check_command(args: argparse.Namespace) -> None:
    if args.flow_out is not None:
        flow = cdnow_flow_check(args.flow_out)
        if flow.comparison.share_equal < TARGET_SHARE or not flow.memberships_match:
            raise ValueError("the dataflow's RFM scores and the batch disagree (see above)")
    check = cdnow_offline_check()
    book = parse_segment_book((args.segments or BUNDLED_SEGMENTS).read_bytes())
    for name, value in time_segments(book, n_events=args.events).items():
        print(f"{name:<40}{value:8.2f}")
    if check.comparison.share_equal < TARGET_SHARE or not check.memberships_match:
        raise ValueError("streaming and batch disagree (see above)")
