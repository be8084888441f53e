"""The risk rules on fraud they were not tuned on: recall, precision and false alerts per kind.

python benchmarks/risk_bench.py [--replay-only] [--out results.json]

Each stream is legitimate traffic from the project's generator with labelled episodes
(``generate --anomalies``) in one *style* (:mod:`dataflow.sim.anomalies`):

- **tuning**: ``tuned`` (what ``risk-v2`` was tuned on) and ``shifted`` (other amounts,
  browsing first, takeovers from known devices, slower card tests, refunds and bots; what
  ``risk-v3`` was tuned on), seeds 1-3, 200k events each; and ``drawn:101``-``drawn:103``,
  the first held-out draws, which became tuning streams when their takeover errors were
  read (the known-device suspicion's once-a-month limit came from them); ``drawn:201``-
  ``drawn:206``, on which ``risk-v4``'s changes were first measured and then tuned (its
  takeover window and its amount threshold), and ``drawn:211``-``drawn:213`` (30 days),
  where its takeover misses were read. ``risk-v5``'s takeover score is trained on all of
  them (``benchmarks/train_takeover.py``);
- **held out**: ``drawn:104``-``drawn:115``, every episode number drawn at random from wide
  ranges (:func:`~dataflow.sim.anomalies.drawn_style`), generator seeds 104-115 and three
  stream sizes. No rule, threshold or model was chosen with these streams or their style
  values: 104-106 held ``risk-v3`` out, 107-109 were first drawn for ``risk-v4``'s figures,
  110-115 for ``risk-v5``'s.

Tuning streams are scored by folding them through ``assess`` (``eval-risk --replay``, the
same logic in-process); held-out streams through the real dataflow, as a user runs
``profilestream eval-risk`` (``--replay-only``: in-process for them too). The table gives,
per kind, episode recall, alert precision and false alerts per 1,000 legitimate users a
day, per stream and pooled over each group; and, pooled over the held-out streams, the same
rules with the ratio thresholds deciding suspected takeovers (``ato_learned`` off: what
``risk-v4`` did), replayed in-process on the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, dated_result, machine_info
from dataflow.eval.risk import read_events, read_labels, replay_alerts, score_alerts
from dataflow.sim import (
    DEFAULT_END_MS,
    AnomalyConfig,
    episode_style,
    generate_events,
    write_events,
    write_labels,
)
from operators.apps import KINDS, RiskParams, load_takeover_model
from operators.ingest.units import DAY_MS

#: The kinds the issue's hidden stream checks; the others are reported too.
HIDDEN_KINDS = ("account_takeover", "amount_anomaly", "card_testing", "refund_abuse", "bot")
COUNTS = ("episodes", "found", "alerts", "correct", "on_legit_users")


@dataclass(frozen=True)
class Stream:
    group: str
    style: str
    seed: int
    events: int
    users: int
    days: float

    @property
    def name(self) -> str:
        return f"{self.style}/seed {self.seed}"


#: The held-out streams' sizes (events, users, days), in turn.
SIZES = ((200_000, 5_000, 14), (300_000, 8_000, 30), (160_000, 4_000, 14))
STREAMS = (
    *(
        Stream("tuning", style, seed, 200_000, 5_000, 14)
        for style in ("tuned", "shifted")
        for seed in (1, 2, 3)
    ),
    Stream("tuning", "drawn:101", 101, 200_000, 5_000, 14),
    Stream("tuning", "drawn:102", 102, 300_000, 8_000, 30),
    Stream("tuning", "drawn:103", 103, 160_000, 4_000, 14),
    *(Stream("tuning", f"drawn:{seed}", seed, 200_000, 5_000, 14) for seed in range(201, 207)),
    *(Stream("tuning", f"drawn:{seed}", seed, 300_000, 5_000, 30) for seed in range(211, 214)),
    *(
        Stream("held out", f"drawn:{seed}", seed, *SIZES[(seed - 104) % 3])
        for seed in range(104, 116)
    ),
)


def _generate(stream: Stream, work: Path) -> tuple[Path, Path]:
    events = list(
        generate_events(
            stream.events,
            stream.users,
            seed=stream.seed,
            start_ms=DEFAULT_END_MS - round(stream.days * DAY_MS),
            span_days=stream.days,
            anomalies=AnomalyConfig(style=episode_style(stream.style)),
        )
    )
    base = work / f"{stream.style.replace(':', '-')}-{stream.seed}"
    write_events(base.with_suffix(".jsonl"), events)
    write_labels(base.with_suffix(".labels.jsonl"), events)
    return base.with_suffix(".jsonl"), base.with_suffix(".labels.jsonl")


def _through_flow(events: Path, labels: Path) -> dict[str, Any]:
    """``profilestream eval-risk --json`` as a user runs it: the real dataflow, one worker."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dataflow",
            "eval-risk",
            "--json",
            "--events",
            str(events),
            "--labels",
            str(labels),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def run_stream(stream: Stream, work: Path, flow: bool) -> dict[str, Any]:
    started = time.perf_counter()
    events, labels = _generate(stream, work)
    generated = time.perf_counter() - started
    report = _through_flow(events, labels) if flow else _replayed(events, labels, RiskParams())
    report["kinds"] = {k: v for k, v in report["kinds"].items() if k in KINDS}
    # The same rules with the ratio thresholds deciding suspected purchases (risk-v4's).
    rules_only = _replayed(events, labels, RiskParams(ato_learned=False))
    return {
        "group": stream.group,
        "style": stream.style,
        "seed": stream.seed,
        "size": {"events": stream.events, "users": stream.users, "days": stream.days},
        "generate_s": round(generated, 1),
        "score_s": round(time.perf_counter() - started - generated, 1),
        **report,
        "rules_only": {k: rules_only["kinds"][k] for k in KINDS} | {"all": rules_only["all"]},
    }


def _replayed(events: Path, labels: Path, params: RiskParams) -> dict[str, Any]:
    alerts = replay_alerts(events, params)
    report = score_alerts(alerts, read_labels(labels), read_events(events)).as_json()
    report["source"] = "replay"
    return report


def pooled(
    results: list[dict[str, Any]], group: str, rules_only: bool = False
) -> dict[str, dict[str, Any]]:
    """Per kind, the group's counts summed and its rates recomputed from the sums (of the
    ratio rules' replay with ``rules_only``)."""
    rows = [r for r in results if r["group"] == group]
    user_days = sum(r["legit_users"] / 1000 * r["days"] for r in rows)
    out: dict[str, dict[str, Any]] = {}
    for kind in [*KINDS, "all"]:
        sums = {
            c: sum(
                (r["rules_only"] if rules_only else r["kinds"] | {"all": r["all"]})[kind][c]
                for r in rows
            )
            for c in COUNTS
        }
        out[kind] = {
            **sums,
            "recall": sums["found"] / sums["episodes"] if sums["episodes"] else None,
            "precision": sums["correct"] / sums["alerts"] if sums["alerts"] else None,
            "false_per_1000_users_per_day": sums["on_legit_users"] / user_days,
        }
    return out


def _cell(row: dict[str, Any]) -> str:
    def num(value: float | None) -> str:
        return "   -" if value is None else f"{value:.2f}"

    return f"{num(row['recall'])}/{num(row['precision'])}"


def print_table(results: list[dict[str, Any]], pools: dict[str, dict[str, Any]]) -> None:
    held_out = [r for r in results if r["group"] == "held out"]
    columns = [(f"{r['style']}/{r['seed']}", r["kinds"] | {"all": r["all"]}) for r in held_out]
    columns += [(f"pooled {group}", pool) for group, pool in pools.items()]
    print("recall/precision per kind, held-out streams and pooled (false alerts per 1,000")
    print("legitimate users a day last; every stream's rows are in the JSON)")
    print(f"{'kind':<17}" + "".join(f"{name:>22}" for name, _ in columns))
    for kind in [*KINDS, "all"]:
        print(f"{kind:<17}" + "".join(f"{_cell(rows[kind]):>22}" for _, rows in columns))
    print(
        f"{'false /1k/day':<17}"
        + "".join(f"{rows['all']['false_per_1000_users_per_day']:>22.3f}" for _, rows in columns)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--replay-only", action="store_true", help="score held-out streams in-process too"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="risk-bench-") as work:
        results = []
        for stream in STREAMS:
            flow = stream.group == "held out" and not args.replay_only
            results.append(run_stream(stream, Path(work), flow))
            print(f"scored {stream.name} ({results[-1]['source']})", file=sys.stderr)
    pools = {group: pooled(results, group) for group in ("tuning", "held out")}
    pools["held out, v4 rules"] = pooled(results, "held out", rules_only=True)
    print_table(results, pools)
    held = pools["held out"]
    met = all(
        (held[k]["recall"] or 0) >= 0.9 and (held[k]["precision"] or 0) >= 0.9 for k in HIDDEN_KINDS
    )
    print(
        f"held out, the issue's kinds: recall and precision >= 0.9 for every kind: "
        f"{'met' if met else 'not met'}; false alerts "
        f"{held['all']['false_per_1000_users_per_day']:.3f} per 1,000 users a day (target 5)"
    )
    report = {
        "machine": machine_info(load_before),
        "rules": RiskParams().model_version,
        "takeover_model": load_takeover_model().version,
        "streams": results,
        "pooled": pools,
        "targets": {"recall": 0.9, "precision": 0.9, "false_per_1000_users_per_day": 5.0},
        "held_out_targets_met": met,
    }
    out = args.out or dated_result("risk_bench")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
