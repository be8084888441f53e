"""The synthetic event generator: deterministic, realistic, and honest about its bad lines."""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dataflow import sim as generator
from dataflow.sim import (
    ANOMALY_KINDS,
    CATEGORIES,
    DEFAULT_END_MS,
    DUPLICATE_LOOKBACK,
    EPISODE_STYLES,
    AnomalyConfig,
    GeneratedEvent,
    build_catalog,
    chargebacks_for,
    episode_style,
    generate_events,
    read_catalog,
    sessions,
    write_catalog,
    write_events,
)
from dataflow.sim.anomalies import SHIFTED, drawn_style
from operators.ingest import DeadLetter, Event, RejectReason, parse_event
from operators.ingest.units import DAY_MS
from tests.support.cli import profilestream

N_EVENTS = 30_000
N_USERS = 1_500


@pytest.fixture(scope="module")
def stream() -> list[GeneratedEvent]:
    return list(generate_events(N_EVENTS, N_USERS, seed=7, malformed_rate=0.03))


@pytest.fixture(scope="module")
def parsed(stream: list[GeneratedEvent]) -> list[Event | DeadLetter]:
    return [parse_event(e.line) for e in stream]


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_same_seed_same_lines_other_seed_other_lines() -> None:
    first = list(generate_events(2_000, 100, seed=3))
    assert first == list(generate_events(2_000, 100, seed=3))
    assert [e.line for e in first] != [e.line for e in generate_events(2_000, 100, seed=4)]


def test_default_catalog_is_the_seeded_one() -> None:
    catalog = build_catalog(generator.DEFAULT_CATALOG_ITEMS, np.random.default_rng(5))
    assert list(generate_events(500, 30, seed=5)) == list(
        generate_events(500, 30, seed=5, catalog=catalog)
    )


@pytest.mark.parametrize(
    ("n_events", "rate"), [(0, 0.01), (1, 0.0), (1, 1.0), (97, 0.01), (1_000, 0.2), (300, 1.0)]
)
def test_yields_exactly_n_events(n_events: int, rate: float) -> None:
    events = list(generate_events(n_events, 10, seed=1, malformed_rate=rate))
    assert len(events) == n_events
    assert sum(e.expected_reason is not None for e in events) == round(n_events * rate)


def test_valid_lines_parse_and_bad_lines_give_their_reason(
    stream: list[GeneratedEvent], parsed: list[Event | DeadLetter]
) -> None:
    for event, result in zip(stream, parsed, strict=True):
        if event.expected_reason in (None, RejectReason.DUPLICATE_EVENT):
            assert isinstance(result, Event), (event.line, result)
            assert result.user_id == event.user_id
        else:
            assert isinstance(result, DeadLetter), event.line
            assert result.reason == event.expected_reason, (event.line, result.error)
    reasons = {e.expected_reason for e in stream} - {None}
    assert reasons == {
        RejectReason.INVALID_JSON,
        RejectReason.NOT_AN_OBJECT,
        RejectReason.MISSING_FIELD,
        RejectReason.UNKNOWN_TYPE,
        RejectReason.INVALID_FIELD,
        RejectReason.BAD_TIMESTAMP,
        RejectReason.DUPLICATE_EVENT,
    }


def test_lines_are_single_line_utf8(stream: list[GeneratedEvent]) -> None:
    # FileSource reads the file as text, one line per message.
    for event in stream:
        text = event.line.decode("utf-8")
        assert text.strip() and "\n" not in text and "\r" not in text


def test_duplicates_are_prompt_resends_of_users_never_deleted(
    stream: list[GeneratedEvent], parsed: list[Event | DeadLetter]
) -> None:
    deleted = {p.user_id for p in parsed if isinstance(p, Event) and p.type == "delete_user"}
    valid = [i for i, e in enumerate(stream) if e.expected_reason is None]
    positions = [i for i, e in enumerate(stream) if e.expected_reason == "duplicate_event"]
    assert positions
    for i in positions:
        # The original is one of the last DUPLICATE_LOOKBACK valid lines before the re-send.
        before = valid[max(bisect.bisect_left(valid, i) - DUPLICATE_LOOKBACK, 0) :]
        assert any(stream[j].line == stream[i].line for j in before if j < i)
        assert stream[i].user_id not in deleted


def test_event_ids_are_unique_apart_from_duplicates(
    stream: list[GeneratedEvent], parsed: list[Event | DeadLetter]
) -> None:
    ids = [
        p.event_id
        for e, p in zip(stream, parsed, strict=True)
        if isinstance(p, Event) and e.expected_reason is None
    ]
    assert len(ids) == len(set(ids))


def test_users_are_zipf_skewed(stream: list[GeneratedEvent]) -> None:
    per_user = Counter(e.user_id for e in stream if e.expected_reason is None)
    top = sum(count for _, count in per_user.most_common(N_USERS // 100))
    assert top / per_user.total() > 0.15  # the top 1% of users: 15x their fair share at least
    assert len(per_user) == N_USERS  # ... and everyone shows up


def test_items_and_queries_repeat(parsed: list[Event | DeadLetter]) -> None:
    events = [p for p in parsed if isinstance(p, Event)]
    views = Counter(e.item_id for e in events if e.type == "view")
    queries = Counter(e.text for e in events if e.type == "search")
    assert views.most_common(1)[0][1] > 20 * views.total() / len(views)
    assert queries.most_common(10)[-1][1] > 50 and len(queries) < queries.total() / 5


def test_english_and_chinese_text(parsed: list[Event | DeadLetter]) -> None:
    texts = [p for p in parsed if isinstance(p, Event) and p.text]
    for kind in ("search", "review"):
        chinese = sum(_has_cjk(e.text or "") for e in texts if e.type == kind)
        english = sum(not _has_cjk(e.text or "") for e in texts if e.type == kind)
        assert chinese > 20 and english > 20, kind
    reviews = [e for e in texts if e.type == "review"]
    assert all(e.rating is not None and 1 <= e.rating <= 5 for e in reviews)


def test_sessions_in_time_order_within_the_span(
    stream: list[GeneratedEvent], parsed: list[Event | DeadLetter]
) -> None:
    valid = [p for e, p in zip(stream, parsed, strict=True) if e.expected_reason is None]
    times = [p.ts_ms for p in valid if isinstance(p, Event)]
    assert times == sorted(times)
    start = generator.DEFAULT_END_MS - generator.DEFAULT_SPAN_DAYS * DAY_MS
    assert start <= times[0] and times[-1] <= generator.DEFAULT_END_MS + DAY_MS
    assert any(b'"ts":"20' in e.line for e in stream if e.expected_reason is None)  # RFC 3339
    types = Counter(p.type for p in valid if isinstance(p, Event))
    assert types["view"] > types["add_to_cart"] > types["purchase"] > types["refund"] > 0
    assert {"login", "logout", "favorite", "share", "ad_click", "remove_from_cart"} <= set(types)
    sessions = Counter(p.session_id for p in valid if isinstance(p, Event))
    assert 3 < types.total() / len(sessions) < 20


def test_deleted_users_are_not_duplicated_and_may_return(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "DELETE_EVERY", 300)  # where the sessions are planned
    stream = list(generate_events(6_000, 100, seed=2, malformed_rate=0.05))
    events = [(e, parse_event(e.line)) for e in stream if e.expected_reason is None]
    deletes = [
        i for i, (_, p) in enumerate(events) if isinstance(p, Event) and p.type == "delete_user"
    ]
    deleted = {events[i][0].user_id for i in deletes}
    assert len(deletes) >= 5
    assert not deleted & {e.user_id for e in stream if e.expected_reason == "duplicate_event"}
    returned = {
        events[i][0].user_id
        for i in deletes
        if any(e.user_id == events[i][0].user_id for e, _ in events[i + 1 :])
    }
    assert returned


def test_catalog() -> None:
    catalog = build_catalog(500, np.random.default_rng(0))
    assert catalog == build_catalog(500, np.random.default_rng(0))
    assert len({i.item_id for i in catalog}) == 500
    assert {i.category for i in catalog} == {c.name for c in CATEGORIES}
    assert {i.lang for i in catalog} == {"en", "zh"}
    assert all(i.price > 0 and i.brand in i.title for i in catalog)
    assert sum(_has_cjk(i.title) for i in catalog) > 100


def test_files_round_trip(tmp_path: Path) -> None:
    catalog = build_catalog(40, np.random.default_rng(1))
    assert write_catalog(tmp_path / "catalog.jsonl", catalog) == 40
    assert read_catalog(tmp_path / "catalog.jsonl") == catalog
    events = list(generate_events(300, 20, seed=1, catalog=catalog))
    assert write_events(tmp_path / "events.jsonl", events) == 300
    with (tmp_path / "events.jsonl").open("rt", encoding="utf-8") as f:
        assert [line.rstrip("\n").encode() for line in f] == [e.line for e in events]


def test_generate_command(tmp_path: Path) -> None:
    out, catalog = tmp_path / "e" / "events.jsonl", tmp_path / "catalog.jsonl"
    argv = ["generate", "--events", "500", "--users", "40", "--malformed-rate", "0.1"]
    done = profilestream(
        *argv, "--out", str(out), "--catalog", str(catalog), "--catalog-items", "60"
    )
    assert done.returncode == 0, done.stderr
    assert len(out.read_bytes().splitlines()) == 500
    assert len(read_catalog(catalog)) == 60
    assert "wrote 500 events" in done.stdout and "malformed by reason (50)" in done.stdout
    assert profilestream(*argv, "--out", str(out), "--users", "0").returncode == 2


# Labelled anomalies ---------------------------------------------------------------------------

#: sha256 of the lines (each with its newline) of ``generate_events(2_000, 100, seed=3)``: the
#: plain stream must not change when anomaly injection is added or tuned.
PLAIN_2000_100_SEED3 = "34a5fcde5b0f6826ec47964e16391bab50984adf7fee6f9cdd0f54954bc95944"
N_ANOMALOUS = 40_000
ANOMALY_USERS = 800


@pytest.fixture(scope="module")
def anomalous() -> list[tuple[GeneratedEvent, Event | DeadLetter]]:
    events = generate_events(
        N_ANOMALOUS, ANOMALY_USERS, seed=7, malformed_rate=0.02, anomalies=AnomalyConfig(0.1)
    )
    return [(e, parse_event(e.line)) for e in events]


def _episodes(
    anomalous: list[tuple[GeneratedEvent, Event | DeadLetter]], kind: str
) -> dict[str, list[Event]]:
    by_user: dict[str, list[Event]] = {}
    for generated, event in anomalous:
        if generated.anomaly == kind:
            assert isinstance(event, Event)
            by_user.setdefault(event.user_id, []).append(event)
    return by_user


def test_plain_stream_is_unchanged_without_anomalies() -> None:
    digest = hashlib.sha256()
    for event in generate_events(2_000, 100, seed=3):
        assert event.anomaly is None
        digest.update(event.line + b"\n")
    assert digest.hexdigest() == PLAIN_2000_100_SEED3


def test_anomalies_are_labelled_valid_events_of_every_kind(
    anomalous: list[tuple[GeneratedEvent, Event | DeadLetter]],
) -> None:
    assert len(anomalous) == N_ANOMALOUS
    labelled = [(g, e) for g, e in anomalous if g.anomaly is not None]
    assert all(g.expected_reason is None and isinstance(e, Event) for g, e in labelled)
    types = {
        "account_takeover": {"login", "view", "purchase"},
        "amount_anomaly": {"purchase"},
        "card_testing": {"purchase"},
        "purchase_burst": {"purchase"},
        "login_burst": {"login"},
        "refund_abuse": {"refund"},
        "bot": {"view", "click", "search"},
    }
    seen: dict[str, set[str]] = {}
    for generated, event in labelled:
        assert isinstance(event, Event) and generated.anomaly is not None
        seen.setdefault(generated.anomaly, set()).add(event.type)
        assert event.device_id and event.ip
    assert set(seen) == set(ANOMALY_KINDS)
    assert all(seen[kind] <= types[kind] for kind in seen), seen
    victims = Counter(kind for kind, users in ((k, _episodes(anomalous, k)) for k in seen)
                      for _ in users)  # fmt: skip
    assert sum(victims.values()) == round(0.1 * ANOMALY_USERS)  # one episode per victim


def test_chargebacks_confirm_the_fraud_purchases_days_later(
    anomalous: list[tuple[GeneratedEvent, Event | DeadLetter]],
) -> None:
    charged = {"account_takeover", "amount_anomaly", "card_testing"}
    fraud = {
        e.event_id: e
        for g, e in anomalous
        if isinstance(e, Event) and e.type == "purchase" and g.anomaly in charged
    }
    assert {g.anomaly for g, e in anomalous if isinstance(e, Event) and e.event_id in fraud} == (
        charged
    )
    # A feed read 60 days after the stream's end holds a chargeback for every such purchase.
    read_late = chargebacks_for((g for g, _ in anomalous), DEFAULT_END_MS + 60 * DAY_MS, seed=7)
    late = [parse_event(line) for line in read_late]
    assert sorted(str(v.ref_event_id) for v in late if isinstance(v, Event)) == sorted(fraud)
    for verdict in late:
        assert isinstance(verdict, Event) and verdict.type == "chargeback"
        purchase = fraud[str(verdict.ref_event_id)]
        assert (verdict.user_id, verdict.item_id) == (purchase.user_id, purchase.item_id)
        assert verdict.ref_ts_ms == purchase.ts_ms
        assert DAY_MS <= verdict.ts_ms - purchase.ts_ms <= 60 * DAY_MS
    times = [v.ts_ms for v in late if isinstance(v, Event)]
    assert times == sorted(times) and len(set(times)) > 1
    # Read at the stream's end, it holds those that had arrived by then, and the same ones.
    end = DEFAULT_END_MS
    early = chargebacks_for((g for g, _ in anomalous), end, seed=7)
    arrived = [line for line, t in zip(read_late, times, strict=True) if t <= end]
    assert early == arrived and 0 < len(early) < len(late)


def test_anomalies_are_seeded() -> None:
    config = AnomalyConfig(0.2)
    first = list(generate_events(3_000, 60, seed=4, anomalies=config))
    assert first == list(generate_events(3_000, 60, seed=4, anomalies=config))
    assert first != list(generate_events(3_000, 60, seed=5, anomalies=config))


def test_episodes_look_like_their_kind(
    anomalous: list[tuple[GeneratedEvent, Event | DeadLetter]],
) -> None:
    before: dict[str, list[Event]] = {}  # each user's legitimate events
    for generated, event in anomalous:
        if isinstance(event, Event) and generated.expected_reason is None and not generated.anomaly:
            before.setdefault(event.user_id, []).append(event)

    def history(user: str, until: int) -> list[Event]:
        return [e for e in before.get(user, []) if e.ts_ms < until]

    for user, events in _episodes(anomalous, "account_takeover").items():
        login, *rest = events
        past = history(user, login.ts_ms)
        assert login.type == "login" and rest[-1].type == "purchase"
        assert login.device_id not in {e.device_id for e in past}
        assert login.ip not in {e.ip for e in past}
        assert rest[-1].ts_ms - login.ts_ms < 6 * 3_600_000
    for user, [purchase] in _episodes(anomalous, "amount_anomaly").items():
        amounts = [e.price * e.quantity for e in history(user, purchase.ts_ms)
                   if e.type == "purchase" and e.price]  # fmt: skip
        assert purchase.price is not None and len(amounts) >= 6
        assert purchase.price * purchase.quantity > 2.5 * max(amounts)
    for events in _episodes(anomalous, "card_testing").values():
        assert all(e.price is not None and e.price < 5 for e in events)
        assert events[-1].ts_ms - events[0].ts_ms < len(events) * 5 * 60_000
    for events in _episodes(anomalous, "login_burst").values():
        assert len({e.ip for e in events}) == len(events) >= 8
    for user, events in _episodes(anomalous, "refund_abuse").items():
        bought = [e for e in history(user, events[0].ts_ms) if e.type == "purchase"]
        assert 1 <= len(bought) <= len(events)
    for events in _episodes(anomalous, "bot").values():
        seconds = (events[-1].ts_ms - events[0].ts_ms) / 1000
        assert len(events) >= 120 and len(events) / seconds > 1.0


def test_shifted_style_changes_what_the_rules_were_tuned_on() -> None:
    """Takeovers from known devices that browse first, amount anomalies after views of the
    item, slower and dearer card tests, slower bots."""
    lines = generate_events(
        N_ANOMALOUS, ANOMALY_USERS, seed=7, anomalies=AnomalyConfig(0.1, style=SHIFTED)
    )
    anomalous = [(e, parse_event(e.line)) for e in lines]
    past: dict[str, set[str]] = {}
    for generated, event in anomalous:
        if isinstance(event, Event) and not generated.anomaly:
            past.setdefault(event.user_id, set()).add(event.device_id or "")
    takeovers = _episodes(anomalous, "account_takeover")
    known = [u for u, events in takeovers.items() if events[0].device_id in past.get(u, ())]
    assert 0 < len(known) < len(takeovers)
    viewed_first = 0
    for events in takeovers.values():
        views = {e.item_id for e in events if e.type == "view"}
        viewed_first += any(e.item_id in views for e in events if e.type == "purchase")
    assert viewed_first > len(takeovers) / 3
    amounts = _episodes(anomalous, "amount_anomaly").values()
    assert any(len(events) > 1 and events[0].type == "view" for events in amounts)
    assert all(events[-1].type == "purchase" for events in amounts)
    tests = [e for events in _episodes(anomalous, "card_testing").values() for e in events]
    assert all(e.price is not None and 0.5 <= e.price <= 9.99 for e in tests)
    assert max(e.price or 0 for e in tests) > 5
    for events in _episodes(anomalous, "bot").values():
        seconds = (events[-1].ts_ms - events[0].ts_ms) / 1000
        assert 0.4 < len(events) / seconds < 1.5
    assert EPISODE_STYLES["tuned"] == AnomalyConfig().style


def test_drawn_styles_are_seeded_and_within_their_ranges() -> None:
    styles = [episode_style(f"drawn:{seed}") for seed in range(20)]
    assert styles[3] == drawn_style(3) and len(set(styles)) == 20
    for style in styles:
        assert 0 <= style.ato_known_device <= 0.8 and 5 <= style.ato_delay_min <= 300
        assert 2 <= style.ato_amount[0] < style.ato_amount[1] <= 30
        assert 0.5 <= style.card_price[0] < 1 and 3 <= style.card_price[1] <= 15
        assert 200 <= style.bot_gap_ms <= 2_500
        assert all(low >= 1 and high >= low for _, low, high in style.sizes)
    with pytest.raises(ValueError, match="drawn"):
        episode_style("drawn:x")
    lines = generate_events(20_000, 400, seed=7, anomalies=AnomalyConfig(0.1, style=styles[0]))
    tests = [parse_event(e.line) for e in lines if e.anomaly == "card_testing"]
    low, high = styles[0].card_price
    assert tests and all(isinstance(e, Event) and low <= (e.price or 0) <= high for e in tests)


def test_legitimate_traffic_is_messy_with_anomalies_on(
    anomalous: list[tuple[GeneratedEvent, Event | DeadLetter]],
) -> None:
    legit = [e for g, e in anomalous if isinstance(e, Event) and g.anomaly is None]
    devices: dict[str, set[str]] = {}
    ips: dict[str, set[str]] = {}
    for event in legit:
        devices.setdefault(event.user_id, set()).add(event.device_id or "")
        ips.setdefault(event.device_id or "", set()).add(event.ip or "")
    assert sum(len(d) == 3 for d in devices.values()) > 50  # 2-3 devices are common
    assert sum(len(i) >= 4 for i in ips.values()) > 50  # phones move between addresses
    purchases = [e for e in legit if e.type == "purchase" and e.price is not None]
    assert 0 < sum(e.price < 5 for e in purchases if e.price) < len(purchases) / 10  # coupons
    refunds = sum(e.type == "refund" for e in legit)
    assert len(purchases) / 20 < refunds < len(purchases) / 2
    # ... and the plain stream stays as it was: one address per session, 1-2 devices.
    plain = [parse_event(e.line) for e in generate_events(5_000, 100, seed=7)]
    plain_devices: dict[str, set[str]] = {}
    for parsed in plain:
        if isinstance(parsed, Event):
            plain_devices.setdefault(parsed.user_id, set()).add(parsed.device_id or "")
    assert max(len(d) for d in plain_devices.values()) == 2


def test_anomaly_config_is_checked() -> None:
    assert not any(
        e.anomaly for e in generate_events(2_000, 50, seed=1, anomalies=AnomalyConfig(0))
    )
    with pytest.raises(ValueError, match="within"):
        AnomalyConfig(1.5)
    with pytest.raises(ValueError, match="kinds"):
        AnomalyConfig(0.1, ("phishing",))
    with pytest.raises(ValueError, match="lower the anomaly rate"):
        list(generate_events(2_000, 1_000, seed=1, anomalies=AnomalyConfig(0.5)))


def test_one_kind_only_and_the_history_victims_need() -> None:
    stats: dict[str, int] = {}
    config = AnomalyConfig(0.05, ("account_takeover",))
    events = list(generate_events(40_000, 400, seed=2, anomalies=config, stats=stats))
    assert {e.anomaly for e in events} == {None, "account_takeover"}
    assert stats == {"episodes": 20, "short_history": 0}
    stats.clear()  # a stream too thin for anyone to have an established history
    list(generate_events(2_000, 400, seed=2, anomalies=config, stats=stats))
    assert stats == {"episodes": 20, "short_history": 20}


def test_generate_command_writes_labels(tmp_path: Path) -> None:
    out, labels = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    argv = ["generate", "--events", "4000", "--users", "100", "--out", str(out)]
    done = profilestream(*argv, "--anomalies", "--anomaly-rate", "0.1", "--labels", str(labels))
    assert done.returncode == 0, done.stderr
    lines = out.read_bytes().splitlines()
    rows = [json.loads(line) for line in labels.read_bytes().splitlines()]
    assert len(lines) == 4000 and rows and set(rows[0]) == {"event_id", "kind"}
    ids = {e.event_id for e in map(parse_event, lines) if isinstance(e, Event)}
    assert {r["event_id"] for r in rows} <= ids and len({r["event_id"] for r in rows}) == len(rows)
    assert f"wrote {len(rows)} anomaly labels" in done.stdout
    charged = tmp_path / "chargebacks.jsonl"
    again = profilestream(
        *argv, "--anomalies", "--anomaly-rate", "0.1", "--labels", str(labels),
        "--chargebacks", str(charged),
    )  # fmt: skip
    verdicts = [parse_event(line) for line in charged.read_bytes().splitlines()]
    assert again.returncode == 0 and verdicts, again.stderr
    assert all(isinstance(v, Event) and v.ref_event_id in ids for v in verdicts)
    assert f"wrote {len(verdicts)} chargebacks" in again.stdout
    assert profilestream(*argv, "--chargebacks", str(charged)).returncode == 2
    assert "anomalies by kind" in done.stdout
    assert profilestream(*argv, "--anomalies").returncode == 2  # labels are required
    assert profilestream(*argv, "--labels", str(labels)).returncode == 2
    bad_kind = profilestream(*argv, "--anomalies", "--labels", str(labels), "--anomaly-kinds", "x")
    assert bad_kind.returncode == 2
