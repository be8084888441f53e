"""Make the shipped takeover score from the risk benchmark's tuning streams.

python benchmarks/train_takeover.py [--out operators/data/takeover-model.msgpack]

Generates every *tuning* stream of ``benchmarks/risk_bench.py`` (its held-out streams are
never read), keeps the purchases the rules find from a suspected origin, and trains the
score as ``profilestream train-takeover`` does (:mod:`dataflow.eval.takeover`): the
threshold from leave-one-stream-out scores, for 98% of escalated suspicions right. Prints
each stream's counts and the choice, and writes them as JSON beside the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Runnable as `python benchmarks/train_takeover.py`: the project root is not on sys.path then.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, dated_result, machine_info
from benchmarks.risk_bench import STREAMS, _generate
from dataflow.eval.risk import read_events, read_labels
from dataflow.eval.takeover import (
    TAKEOVER_PARAMS,
    TAKEOVER_PRECISION,
    suspected_purchases,
    train_takeover,
)
from operators.apps.risk import SHIPPED_TAKEOVER_MODEL
from operators.apps.risk_model import save_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_TAKEOVER_MODEL)
    parser.add_argument("--precision", type=float, default=TAKEOVER_PRECISION)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    tuning = [s for s in STREAMS if s.group == "tuning"]
    streams, rows = [], []
    with tempfile.TemporaryDirectory(prefix="takeover-") as work:
        for stream in tuning:
            events, labels = _generate(stream, Path(work))
            found = suspected_purchases(read_events(events), read_labels(labels))
            streams.append(found)
            rows.append(
                {
                    "stream": stream.name,
                    "size": {"events": stream.events, "users": stream.users, "days": stream.days},
                    "suspected_purchases": len(found.takeover),
                    "takeover_purchases": int(found.takeover.sum()),
                    "suspicions": len(set(found.suspicions)),
                }
            )
            print(f"{stream.name:<18} {rows[-1]}", file=sys.stderr)
    model, choice = train_takeover(streams, args.precision)
    save_model(model, args.out)
    print(
        f"{model.version}: {model.examples} suspected purchases ({model.frauds} takeover) "
        f"from {len(streams)} streams; threshold {choice.threshold:.4f}, out of stream: "
        f"{choice.precision:.3f} of {choice.suspicions} suspicions' escalations right, "
        f"{choice.recall:.3f} of {choice.takeovers} takeovers found; wrote {args.out}"
    )
    report = {
        "machine": machine_info(load_before),
        "model": model.version,
        "params": TAKEOVER_PARAMS.__dict__,
        "precision_target": args.precision,
        "choice": {f: getattr(choice, f) for f in choice.__struct_fields__},
        "streams": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "model_file": str(args.out.resolve().relative_to(ROOT)),
    }
    out = args.report or dated_result("train_takeover")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
