"""The learned risk score on the Fraud Detection Handbook's simulated transactions.

python benchmarks/handbook_bench.py [--seeds 0,2,3] [--flow-seed 0] [--out results.json]

The Handbook (Le Borgne et al., chapter 3) publishes baselines on its own random instance
of its simulator, with the protocol in :mod:`dataflow.eval.handbook` (train week from
2018-07-25, 7-day delay, test week, known-compromised cards removed; AUC, AP, card
precision@100). Per simulator seed this script:

1. simulates the default-size data (5,000 customers, 10,000 terminals, 183 days);
2. fits the Handbook's own baseline (its 15 features; logistic regression and random forest
   with its settings) on that instance: the same-data reference for the published table;
3. replays the project's features in event time (:func:`~dataflow.eval.handbook.replayed_features`,
   verdicts 7 days late) and fits the forest on what had settled when the test week
   starts: on the Handbook's one training week, and on the last eight weeks.

For ``--flow-seed`` it also streams the events and chargebacks through the real flow
(``profilestream run``), trains with ``profilestream train-risk`` on the flow's own
``risk_scores`` output as of the test week, runs the flow again with that model, and scores
the test week from the flow's output.

The model's settings were chosen on seed 1 and the features shaped on seed 0's test week:
seeds 2 and 3 are the ones no choice saw.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine_info
from dataflow.eval.handbook import (
    DELAY_DAYS,
    PUBLISHED,
    WEEK,
    baseline_scores,
    first_test_day_ms,
    learned_scores,
    metrics,
    protocol_test_set,
    replayed_features,
)
from dataflow.sim.handbook import (
    HandbookParams,
    handbook_events,
    handbook_labels,
    simulate,
)

ROOT = Path(__file__).resolve().parent.parent


def run_seed(seed: int) -> dict[str, object]:
    started = time.perf_counter()
    sim = simulate(HandbookParams(seed=seed))
    keep = protocol_test_set(sim)
    features = replayed_features(sim)
    stream_s = time.perf_counter() - started
    rows: list[dict[str, object]] = []
    for name, scores in baseline_scores(sim, keep).items():
        rows.append({"detector": f"Handbook features, {name}", **metrics(sim, keep, scores)})
    for weeks in (1, 8):
        scores, info = learned_scores(sim, features, keep, train_days=weeks * WEEK)
        name = f"profilestream forest, {weeks} training week{'s' * (weeks > 1)}"
        rows.append({"detector": name, **metrics(sim, keep, scores), **info})
    return {
        "seed": seed,
        "transactions": len(sim.ts_ms),
        "frauds": int(sim.fraud.sum()),
        "test_transactions": int(keep.sum()),
        "test_frauds": int(sim.fraud[keep].sum()),
        "stream_features_s": round(stream_s, 1),
        "stream_us_per_transaction": round(stream_s / len(sim.ts_ms) * 1e6, 1),
        "rows": rows,
    }


def _profilestream(*args: str, log: Path) -> float:
    """Run ``profilestream ARGS`` to completion (output to ``log``); its wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with log.open("wb") as out:
        subprocess.run(
            [sys.executable, "-m", "dataflow", *args], cwd=ROOT, env=env, stdout=out,
            stderr=out, check=True,
        )  # fmt: skip
    return time.perf_counter() - started


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def through_flow(seed: int, work: Path) -> dict[str, object]:
    """The events and their chargebacks through ``profilestream run``, a model trained on
    the flow's own feature log as of the test week, and the flow again with that model."""
    sim = simulate(HandbookParams(seed=seed))
    keep = protocol_test_set(sim)
    # Chargebacks arrive in real time: in the replay they sit among the events in time
    # order, as a topic read live would deliver them.
    lines = [(int(sim.ts_ms[i]), line) for i, line in enumerate(handbook_events(sim))]
    lines += [(json.loads(line)["ts"], line) for line in handbook_labels(sim, DELAY_DAYS)]
    lines.sort(key=lambda pair: pair[0])
    stream = work / "stream.jsonl"
    stream.write_bytes(b"".join(line + b"\n" for _, line in lines))
    labels = work / "chargebacks.jsonl"
    labels.write_bytes(b"".join(line + b"\n" for line in handbook_labels(sim, DELAY_DAYS)))
    common = ["run", "--source", "file", "--sink", "file", "--input-path", str(stream)]
    first = _profilestream(*common, "--output-dir", str(work / "log"), log=work / "run1.log")
    model = work / "risk-model.msgpack"
    _profilestream(
        "train-risk", "--scores", str(work / "log" / "risk_scores.jsonl"),
        "--labels", str(labels), "--out", str(model), "--now-ms", str(first_test_day_ms(sim)),
        log=work / "train.log",
    )  # fmt: skip
    second = _profilestream(
        *common, "--output-dir", str(work / "scored"), "--risk-model-path", str(model),
        log=work / "run2.log",
    )  # fmt: skip
    scored = {s["event_id"]: s for s in _read_jsonl(work / "scored" / "risk_scores.jsonl")}
    ids = [f"tx{i}" for i in np.flatnonzero(keep)]
    missing = sum(1 for i in ids if i not in scored)
    scores = np.array([scored[i]["score"] if i in scored else 0.0 for i in ids], dtype=float)
    dead = len(_read_jsonl(work / "scored" / "dead_letters.jsonl"))
    return {
        "seed": seed,
        "events": len(lines),
        "detector": "profilestream forest through the flow, 8 training weeks",
        **metrics(sim, keep, scores),
        "model_version": next(iter(scored.values()))["model_version"] if scored else None,
        "train_log": (work / "train.log").read_text().strip(),
        "test_purchases_without_score": missing,
        "dead_letters": dead,
        "flow_wall_s": [round(first, 1), round(second, 1)],
        "flow_events_per_s": [round(len(lines) / first), round(len(lines) / second)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,2,3", help="simulator seeds (1 was used to tune)")
    parser.add_argument("--flow-seed", type=int, default=0,
                        help="seed streamed through the real flow (-1: none)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    results = [run_seed(seed) for seed in seeds]
    flow = None
    if args.flow_seed >= 0:
        with tempfile.TemporaryDirectory(prefix="handbook-flow-") as work:
            flow = through_flow(args.flow_seed, Path(work))
    print(f"{'detector':<56} {'seed':>4} {'AUC':>6} {'AP':>6} {'CP@100':>7}")
    for name, (auc, ap, cp) in PUBLISHED.items():
        print(f"{'Handbook published, ' + name:<56} {'-':>4} {auc:>6.3f} {ap:>6.3f} {cp:>7.3f}")
    rows = [(r["seed"], row) for r in results for row in r["rows"]]  # type: ignore[attr-defined]
    if flow is not None:
        rows.append((flow["seed"], flow))
    for seed, row in rows:
        print(
            f"{row['detector']:<56} {seed:>4} {row['auc']:>6.3f} "
            f"{row['average_precision']:>6.3f} {row['card_precision_at_100']:>7.3f}"
        )
    report = {
        "machine": machine_info(load_before),
        "protocol": {
            "train_start": "2018-07-25",
            "training_days": WEEK,
            "delay_days": DELAY_DAYS,
            "test_days": WEEK,
            "known_compromised_cards_removed": True,
            "tuned_on_seed": 1,
        },
        "published": {
            k: dict(zip(("auc", "average_precision", "card_precision_at_100"), v, strict=True))
            for k, v in PUBLISHED.items()
        },
        "seeds": results,
        "through_flow": flow,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"{dt.date.today()}-handbook_bench.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
