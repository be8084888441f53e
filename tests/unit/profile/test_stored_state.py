"""How a user's state rests: positional MessagePack, and the map-shaped states of before.

``data/state-as-map.msgpack`` was written by commit ebf57a2 (states stored field by field,
as maps) from :func:`folded_state` below, with ``encode_state``. A recovery store of that
time holds such states; they must decode to what the same events give today.
``data/state-compressed.bin`` was written by commit ba55e1a, compressed against the
shipped dictionary: a dictionary retrained in its place would fail to read it, as it would
every recovery store written before.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from operators.apps import Applications, RiskParams, after_event, load_segment_book
from operators.apps.risk import RiskState
from operators.ingest import Event
from operators.profile import (
    ProfileParams,
    UserItemMemory,
    UserState,
    apply_event,
    decode_state,
    encode_state,
    pack_state,
)

T0 = 1_714_564_800_000
MAP_SHAPED = Path(__file__).parent / "data" / "state-as-map.msgpack"
COMPRESSED = Path(__file__).parent / "data" / "state-compressed.bin"


def folded_state() -> UserState:
    """A user with every part of the state filled: windows, affinities, risk memory,
    segment memberships, de-duplication ids and an item memory."""
    params = ProfileParams()
    apps = Applications(load_segment_book(windows=params.windows), params.windows, RiskParams())
    rng = np.random.default_rng(5)
    kinds = ["login", "view", "click", "add_to_cart", "purchase", "view", "refund"]
    state: UserState | None = None
    for i in range(40):
        kind = kinds[i % len(kinds)]
        fields: dict[str, Any] = {"device_id": f"d{i % 2}", "ip": f"10.0.0.{i % 3}"}
        if kind != "login":
            fields |= {"item_id": f"i{i % 9}", "category": f"c{i % 4}", "brand": f"b{i % 3}"}
        if kind in ("purchase", "refund"):
            fields["price"] = 10.0 + i
        ev = Event(f"e{i}", "u1", T0 + i * 3_600_000, kind, session_id=f"s{i // 5}", **fields)
        vector = rng.standard_normal(384).astype(np.float32) if params.moves_interest(ev) else None
        state, _ = apply_event(state, ev, vector, params, dim=384)
        assert state is not None
        after_event(state, ev, apps)
    assert state is not None
    state.profile.item_memory = UserItemMemory(
        "items-v1", [("i1", "view", T0), ("i2", "purchase", T0 + 1)], {3: 0.5, 7: 1.25}, 1.75, 2
    )
    return state


def test_a_state_rests_without_field_names() -> None:
    state = folded_state()
    data = pack_state(state)
    assert data[0] & 0xF0 == 0x90 or data[0] in (0xDC, 0xDD)  # a MessagePack array
    assert b"seen_event_ids" not in data and b"category_affinity" not in data
    again = decode_state(data, RiskState)  # as states rested before they were compressed
    assert pack_state(again) == data
    assert isinstance(again.apps, RiskState) and again.apps == state.apps
    assert again.profile.item_memory == state.profile.item_memory


def test_a_state_rests_compressed_against_the_shipped_dictionary() -> None:
    state = folded_state()
    data, packed = encode_state(state), pack_state(state)
    assert data[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    # The float16 vector (771 bytes) does not compress; the rest shrinks by over a third.
    assert len(packed) - len(data) > 0.35 * (len(packed) - 771)
    again = decode_state(data, RiskState)
    assert pack_state(again) == packed and encode_state(again) == data
    assert np.array_equal(again.profile.interest, state.profile.interest)


def test_a_resting_state_holds_no_more_memory_than_its_bytes() -> None:
    state = folded_state()
    encode_state(state)  # this thread's buffer and compressor exist from here on
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        data = encode_state(state)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A bytes object's header is 33 bytes. The compressor's own output keeps the allocation
    # of the uncompressed size: 4,082 bytes here for 2,551 of data.
    assert len(data) <= held <= len(data) + 64


def test_a_state_compressed_by_an_earlier_build_still_decodes() -> None:
    assert encode_state(decode_state(COMPRESSED.read_bytes(), RiskState)) == encode_state(
        folded_state()
    )


def test_a_state_stored_as_a_map_before_decodes_to_what_the_events_give_now() -> None:
    old = MAP_SHAPED.read_bytes()
    assert old[0] & 0xF0 == 0x80 and b"seen_event_ids" in old  # really the map shape
    state = decode_state(old, RiskState)
    assert isinstance(state.apps, RiskState)
    assert state.profile.item_memory == folded_state().profile.item_memory
    assert np.array_equal(state.profile.interest, folded_state().profile.interest)
    assert encode_state(state) == encode_state(folded_state())
    assert len(old) - len(encode_state(state)) > 300  # the field names


def test_a_map_shaped_state_without_the_later_fields_takes_their_defaults() -> None:
    plain = msgspec.msgpack.decode(MAP_SHAPED.read_bytes())
    for name in ("risk", "needs_full", "deltas_since_full"):
        del plain[name]
    del plain["profile"]["rfm"], plain["profile"]["item_memory"]
    state = decode_state(msgspec.msgpack.encode(plain))
    assert state.apps is None and state.needs_full is False and state.deltas_since_full == 0
    assert state.profile.rfm == "" and state.profile.item_memory is None
    assert state.profile.version == 40
