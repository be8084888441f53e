"""Score the risk alerts against the labelled anomalies of a generated stream.

profilestream generate --events 200000 --users 5000 --seed 11 --anomalies \\
    --labels labels.jsonl --out events.jsonl
profilestream eval-risk --events events.jsonl --labels labels.jsonl [--replay] [--json]

An *episode* is one user's labelled events of one kind, split where two of them are more
than ``episode_gap_ms`` apart. Per kind, :func:`score_alerts` reports:

- recall: episodes found, i.e. an alert of that kind cites one of the episode's events or
  fires for that user between the episode's first and last event;
- precision: alerts of the kind that cite or fall in an episode of the same kind;
- false alerts per 1,000 legitimate users per day: alerts on users without any label,
  divided by (legitimate users / 1000) and by the days the stream spans.

The alerts come from the real dataflow (:func:`flow_alerts`) or, with ``--replay``, from
folding the file through :func:`operators.apps.risk.assess` per user in file order
(:func:`replay_alerts`): fast, for tuning thresholds.

>>> from operators.apps import Alert
>>> events = [Event("e1", "u1", 0, "login"), Event("e2", "u1", 60_000, "login"),
...           Event("e3", "u2", 86_400_000, "view", item_id="i1")]
>>> alert = Alert("a1", "u1", "login_burst", 0.9, ("e2",), 60_000, {}, "risk-v1")
>>> report = score_alerts([alert], {"e1": "login_burst", "e2": "login_burst"}, events)
>>> row = report.row("login_burst")
>>> row.episodes, row.found, row.recall, row.precision, report.legit_users, report.days
(1, 1, 1.0, 1.0, 1, 1.0)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from operators.apps import KINDS, Alert, RiskParams, RiskState, assess, takeover_scorer
from operators.apps.learned_risk import from_user_event
from operators.apps.risk import PurchaseScorer
from operators.ingest import Event, parse_event
from operators.ingest.units import DAY_MS, HOUR_MS

#: Labelled events of a user and kind further apart than this belong to separate episodes.
DEFAULT_EPISODE_GAP_MS = 12 * HOUR_MS


class _Label(msgspec.Struct):
    event_id: str
    kind: str


def read_labels(path: str | Path) -> dict[str, str]:
    """The generator's labels file as ``{event_id: kind}``."""
    decoder = msgspec.json.Decoder(_Label)
    with Path(path).open("rb") as f:
        labels = [decoder.decode(line) for line in f if line.strip()]
    return {label.event_id: label.kind for label in labels}


def read_events(path: str | Path) -> Iterator[Event]:
    """The file's valid events in file order, each event id once (as the flow applies them)."""
    seen: set[str] = set()
    with Path(path).open("rb") as f:
        for offset, line in enumerate(f):
            if not line.strip():
                continue
            event = parse_event(line.rstrip(b"\r\n"), source=f"file:{offset}")
            if isinstance(event, Event) and event.event_id not in seen:
                seen.add(event.event_id)
                yield event


def replay_alerts(
    events_path: str | Path, params: RiskParams | None = None, takeover: Path | None = None
) -> list[Alert]:
    """Fold the file through :func:`~operators.apps.risk.assess`, per user, in file order,
    as the user step does (``takeover``: its takeover score, default the shipped one).

    Invalid lines and repeated event ids are dropped; ``delete_user`` resets the user.
    """
    params = RiskParams() if params is None else params
    scorer = takeover_scorer(params, takeover)
    return [a for _, _, fired in fold_risk(read_events(events_path), params, scorer) for a in fired]


def fold_risk(
    events: Iterable[Event], params: RiskParams, takeover: PurchaseScorer | None
) -> Iterator[tuple[Event, RiskState, list[Alert]]]:
    """Each event with its user's risk state after it and the alerts it raised: the user
    step's risk part (:func:`~operators.apps.after_event`), in-process."""
    states: dict[str, RiskState] = {}
    for event in events:
        state, fired = assess(states.get(event.user_id), event, params, takeover)
        from_user_event(state, event, 7 * DAY_MS)  # the spend history the scores read
        states[event.user_id] = state
        yield event, state, fired


def read_alerts(path: str | Path) -> list[Alert]:
    """Alerts written one JSON object per line (the flow's ``alerts.jsonl``)."""
    decoder = msgspec.json.Decoder(Alert)
    with Path(path).open("rb") as f:
        return [decoder.decode(line) for line in f if line.strip()]


def flow_alerts(
    events_path: str | Path,
    out_dir: str | Path,
    *,
    rules: Path | None = None,
    encoder: Any = None,
) -> list[Alert]:
    """Run the real dataflow over the file (file source and sinks in ``out_dir``, one worker)
    and read the alerts it wrote; ``rules`` is its ``--risk-rules-file``, ``encoder``
    replaces the embedding model (tests)."""
    from bytewax.testing import run_main

    from dataflow.config import Config
    from dataflow.flow import build_flow

    config = Config(
        source="file",
        sink="file",
        input_path=Path(events_path),
        output_dir=Path(out_dir),
        risk_rules_file=rules,
    )
    run_main(build_flow(config, encoder=encoder))
    return read_alerts(Path(out_dir) / "alerts.jsonl")


@dataclass(frozen=True)
class Episode:
    """One user's labelled events of one kind, close together in time."""

    user_id: str
    kind: str
    start_ms: int
    end_ms: int
    event_ids: frozenset[str]

    def covers(self, alert: Alert) -> bool:
        """Whether ``alert`` (of any kind, for this user) cites or falls in this episode."""
        return alert.user_id == self.user_id and (
            self.start_ms <= alert.event_time_ms <= self.end_ms
            or not self.event_ids.isdisjoint(alert.event_ids)
        )


def episodes_of(
    labels: Mapping[str, str],
    events: Iterable[Event],
    gap_ms: int = DEFAULT_EPISODE_GAP_MS,
) -> list[Episode]:
    """Group the labelled events into episodes (labels of events not in ``events`` are ignored).

    >>> events = [Event(f"e{n}", "u1", n * HOUR_MS, "login") for n in range(4)]
    >>> [(e.start_ms, e.end_ms) for e in episodes_of(
    ...     {"e0": "login_burst", "e1": "login_burst", "e3": "login_burst"}, events, HOUR_MS)]
    [(0, 3600000), (10800000, 10800000)]
    """
    marks: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for event in events:
        kind = labels.get(event.event_id)
        if kind is not None:
            marks[event.user_id, kind].append((event.ts_ms, event.event_id))
    episodes = []
    for (user, kind), found in sorted(marks.items()):
        found.sort()
        group = [found[0]]
        for mark in found[1:]:
            if mark[0] - group[-1][0] > gap_ms:
                episodes.append(_episode(user, kind, group))
                group = []
            group.append(mark)
        episodes.append(_episode(user, kind, group))
    return episodes


def _episode(user: str, kind: str, group: list[tuple[int, str]]) -> Episode:
    return Episode(user, kind, group[0][0], group[-1][0], frozenset(i for _, i in group))


@dataclass
class KindScore:
    """How one kind of alert did (or all kinds together, as ``kind="all"``)."""

    kind: str
    episodes: int = 0
    found: int = 0
    alerts: int = 0
    correct: int = 0  # alerts that cite or fall in an episode of their kind
    on_legit_users: int = 0  # alerts on users without any label
    false_per_1000_users_per_day: float = 0.0

    @property
    def recall(self) -> float | None:
        return self.found / self.episodes if self.episodes else None

    @property
    def precision(self) -> float | None:
        return self.correct / self.alerts if self.alerts else None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "recall": self.recall, "precision": self.precision}


@dataclass
class RiskReport:
    """Per-kind recall, precision and false-alert rate, and what they were measured on."""

    kinds: list[KindScore]
    total: KindScore
    users: int
    legit_users: int
    days: float
    events: int
    labelled_events: int
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the replay's cost per event

    def row(self, kind: str) -> KindScore:
        return next(k for k in [*self.kinds, self.total] if k.kind == kind)

    def as_json(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "legit_users": self.legit_users,
            "days": round(self.days, 3),
            "events": self.events,
            "labelled_events": self.labelled_events,
            **self.extra,
            "kinds": {k.kind: k.as_json() for k in self.kinds},
            "all": self.total.as_json(),
        }

    def lines(self) -> list[str]:
        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        out = [
            f"{self.events} events, {self.users} users ({self.legit_users} without labels), "
            f"{self.days:.1f} days, {self.labelled_events} labelled events",
            f"{'kind':<18}{'episodes':>9}{'found':>7}{'recall':>8}{'alerts':>8}{'correct':>8}"
            f"{'precision':>10}{'on legit':>9}{'per 1k users/day':>17}",
        ]
        for k in [*self.kinds, self.total]:
            out.append(
                f"{k.kind:<18}{k.episodes:>9}{k.found:>7}{num(k.recall):>8}{k.alerts:>8}"
                f"{k.correct:>8}{num(k.precision):>10}{k.on_legit_users:>9}"
                f"{k.false_per_1000_users_per_day:>17.3f}"
            )
        return out


def score_alerts(
    alerts: Iterable[Alert],
    labels: Mapping[str, str],
    events: Iterable[Event],
    *,
    episode_gap_ms: int = DEFAULT_EPISODE_GAP_MS,
) -> RiskReport:
    """Recall per episode, precision per alert and false alerts on legitimate users, by kind."""
    events = list(events)
    alerts = list(alerts)
    episodes = episodes_of(labels, events, episode_gap_ms)
    by_user: dict[str, list[Episode]] = defaultdict(list)
    for episode in episodes:
        by_user[episode.user_id].append(episode)
    users = {e.user_id for e in events}
    legit = len(users - by_user.keys())
    days = (max(e.ts_ms for e in events) - min(e.ts_ms for e in events)) / DAY_MS if events else 0
    user_days = legit / 1000 * days

    kinds = list(KINDS) + sorted({e.kind for e in episodes} | {a.kind for a in alerts} - set(KINDS))
    scores = {kind: KindScore(kind) for kind in kinds}
    found: set[Episode] = set()
    for alert in alerts:
        score = scores[alert.kind]
        score.alerts += 1
        if alert.user_id not in by_user:
            score.on_legit_users += 1
            continue
        hits = [e for e in by_user[alert.user_id] if e.kind == alert.kind and e.covers(alert)]
        score.correct += bool(hits)
        found.update(hits)
    for episode in episodes:
        scores[episode.kind].episodes += 1
        scores[episode.kind].found += episode in found
    total = KindScore("all")
    for score in scores.values():
        score.false_per_1000_users_per_day = score.on_legit_users / user_days if user_days else 0
        for name in ("episodes", "found", "alerts", "correct", "on_legit_users"):
            setattr(total, name, getattr(total, name) + getattr(score, name))
    total.false_per_1000_users_per_day = total.on_legit_users / user_days if user_days else 0
    return RiskReport(
        kinds=list(scores.values()),
        total=total,
        users=len(users),
        legit_users=legit,
        days=days,
        events=len(events),
        labelled_events=sum(e.event_id in labels for e in events),
    )
