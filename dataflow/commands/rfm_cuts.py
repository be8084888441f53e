"""``profilestream rfm-cuts``: RFM cut points (quintiles), in batch, as a segments file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dataflow.eval import segments
from dataflow.eval.cdnow import read_cdnow
from dataflow.eval.segments import (
    cdnow_rfm_inputs,
    cuts_from_inputs,
    fold_events,
    profile_rfm_inputs,
    read_events,
    write_segments,
)
from operators.profile import ProfileParams, materialize


def add_command(subparsers: Any) -> None:
    """Register ``profilestream rfm-cuts``."""
    cuts = subparsers.add_parser(
        "rfm-cuts",
        help="compute RFM cut points (quintiles) and write a segments file",
        description=segments.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = cuts.add_mutually_exclusive_group(required=True)
    source.add_argument("--deltas", type=Path, help="profile delta file (JSONL) to rebuild from")
    source.add_argument("--events", type=Path, help="event log (JSONL) to fold into profiles")
    source.add_argument("--cdnow", action="store_true", help="the CDNOW log of `lifetimes`")
    cuts.add_argument(
        "--as-of-ms", type=int, default=None, help="score time (default: the newest event)"
    )
    cuts.add_argument("--base", type=Path, default=None, help="segments file to take segments from")
    cuts.add_argument("--out", type=Path, required=True, help="segments file to write")
    cuts.set_defaults(handler=_rfm_cuts_command)


def _rfm_cuts_command(args: argparse.Namespace) -> None:
    if args.cdnow:
        log = read_cdnow()
        as_of = args.as_of_ms or max(p.ts_ms for p in log)
        inputs = cdnow_rfm_inputs(log, as_of)
        origin = "the CDNOW log"
    elif args.deltas is not None:
        profiles = materialize(args.deltas.read_bytes().splitlines())
        fields = [{"user_id": uid, **p.fields} for uid, p in profiles.items()]
        as_of = args.as_of_ms or max((f.get("last_seen_ms", 0) for f in fields), default=0)
        inputs = profile_rfm_inputs(fields, as_of)
        origin = f"profiles of {args.deltas.name}"
    else:
        fold = fold_events(read_events(args.events), None, ProfileParams())
        as_of = args.as_of_ms or fold.last_ms
        fields = [
            {
                "user_id": uid,
                "last_purchase_ms": s.profile.last_purchase_ms,
                "counts": s.profile.counts,
                "spend": s.profile.spend,
            }
            for uid, s in fold.states.items()
        ]
        inputs = profile_rfm_inputs(fields, as_of)
        origin = f"profiles folded from {args.events.name}"
    if inputs.empty:
        raise ValueError("nobody has bought: no RFM cut points to compute")
    computed = cuts_from_inputs(inputs)
    meta = {"source": f"quintiles of {origin}", "as_of_ms": int(as_of), "customers": len(inputs)}
    version = write_segments(args.out, computed, meta, args.base)
    print(f"{len(inputs)} customers as of {as_of}: {computed}")
    print(f"wrote {args.out} (definitions version {version})")
