"""Make the shipped zstd dictionary that resting user states are compressed with.

python benchmarks/train_state_dictionary.py [--out operators/data/state-dictionary.zstd]

Trains on the states of 4,000 users of the demo generator (:mod:`dataflow.sim`, its own
seed), folded by the profile step and the applications as ``state_bench`` folds them, then
measures what the dictionary takes off states it was not trained on: ``state_bench``'s
generator (other event mix, catalog and seed), and two public logs from the shared data
folder, read and replayed as ``eval-recsys`` does (:mod:`dataflow.eval.datasets`): Taobao's
UserBehavior sample (43 users, their whole histories) and the first 3,000 users of Amazon
Beauty (one purchase a day, with each item's category and brand). Prints the mean bytes per state
uncompressed and compressed, and writes them as JSON beside the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
import zstandard

# Runnable as `python benchmarks/train_state_dictionary.py`: the project root is not on
# sys.path then.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, dated_result, fmt, machine_info
from benchmarks.state_bench import CATALOG_ITEMS, fold_states, write_stream
from dataflow.eval.datasets import load_amazon, load_taobao, replay_lines, shared_data_dir
from dataflow.sim import build_catalog, generate_events
from operators.ingest import Event, parse_event
from operators.profile import pack_state
from operators.profile.state import STATE_DICTIONARY, state_compressor
from operators.recsys import ItemInteraction

DICTIONARY_BYTES = 16_384  # 64 KB took no more off (2026-12-07)


def first_users(events: Iterable[Event], users: int) -> Iterator[Event]:
    """The events of the first ``users`` users to appear."""
    seen: set[str] = set()
    for event in events:
        if event.user_id in seen or len(seen) < users:
            seen.add(event.user_id)
            yield event


def replayed(histories: dict[str, list[ItemInteraction]]) -> Iterator[Event]:
    """A public log's histories as the events ``eval-recsys`` replays them."""
    for line in replay_lines(histories):
        event = parse_event(line)
        if isinstance(event, Event):
            yield event


def amazon_beauty(folder: Path, users: int) -> dict[str, list[ItemInteraction]]:
    """The first ``users`` users of Amazon Beauty, each item with its first attribute (a
    category-path node) as its category and its last (the brand) as its brand."""
    beauty = load_amazon(folder / "Beauty.txt", folder / "Beauty_item2attributes.json")
    histories = dict(islice(beauty.histories.items(), users))
    for history in histories.values():
        for k, x in enumerate(history):
            found = beauty.attributes.get(x.item_id) or ["none"]
            history[k] = replace(x, category=found[0], brand=found[-1])
    return histories


def state_bench_events(users: int) -> Iterator[Event]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        write_stream(path, users, 6, 3, build_catalog(CATALOG_ITEMS, np.random.default_rng(3)))
        for line in path.read_bytes().splitlines():
            event = parse_event(line)
            if isinstance(event, Event):
                yield event


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "operators" / STATE_DICTIONARY)
    parser.add_argument("--data", type=Path, default=shared_data_dir())
    args = parser.parse_args()
    if not (args.data / "taobao").is_dir() or not (args.data / "amazon-seq").is_dir():
        parser.error(f"{args.data} lacks taobao/ and amazon-seq/ (the shared data folder)")
    load_before = os.getloadavg()[0]
    lines = (g.line for g in generate_events(120_000, 4_000, seed=20261207))
    demo = (e for e in map(parse_event, lines) if isinstance(e, Event))
    training: list[bytes | bytearray | memoryview] = [
        pack_state(state) for state in fold_states(first_users(demo, 4_000), seed=1)
    ]
    dictionary = zstandard.train_dictionary(DICTIONARY_BYTES, training)
    args.out.write_bytes(dictionary.as_bytes())
    print(f"trained on {len(training):,} demo states -> {args.out} ({DICTIONARY_BYTES:,} bytes)")
    # encode_state read the dictionary that was shipped before: measure with the new one.
    compressor = state_compressor(dictionary)
    taobao_log = args.data / "taobao" / "UserBehavior_head.csv"
    held_out = {
        "state_bench generator (2,000 users)": state_bench_events(2_000),
        "Taobao UserBehavior sample (43 users)": replayed(load_taobao(taobao_log).histories),
        "Amazon Beauty (first 3,000 users)": replayed(
            amazon_beauty(args.data / "amazon-seq", 3_000)
        ),
    }
    results = []
    for name, events in held_out.items():
        packed = [pack_state(state) for state in fold_states(events, seed=2)]
        raw = float(np.mean([len(p) for p in packed]))
        compressed = float(np.mean([len(compressor.compress(p)) for p in packed]))
        results.append({"states": name, "users": len(packed), "msgpack_bytes": raw,
                        "compressed_bytes": compressed})  # fmt: skip
        print(f"{name:<40} {fmt(raw):>7} -> {fmt(compressed):>7} bytes ({compressed / raw:.2f})")
    out = dated_result("train_state_dictionary")
    info = machine_info(load_before, dictionary_bytes=DICTIONARY_BYTES)
    out.write_text(json.dumps({"machine": info, "held_out": results}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
