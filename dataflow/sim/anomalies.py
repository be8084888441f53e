"""Labelled fraud and abuse episodes injected on top of legitimate traffic, for the risk
detectors to find (``generate --anomalies``)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np

from dataflow.sim.sessions import Writer
from dataflow.sim.world import CHANNELS, Draws, World, favourite_categories, random_ip
from operators.apps import KINDS as ANOMALY_KINDS
from operators.ingest.units import DAY_MS, HOUR_MS, MINUTE_MS

Lang = Literal["en", "zh"]

# --- Labelled anomalies -------------------------------------------------------------------

#: Events per injected episode, by kind (inclusive bounds).
EPISODE_SIZES: Final[dict[str, tuple[int, int]]] = {
    "account_takeover": (3, 8),
    "amount_anomaly": (1, 1),
    "card_testing": (5, 15),
    "purchase_burst": (9, 20),
    "login_burst": (8, 30),
    "refund_abuse": (5, 10),
    "bot": (120, 400),
}
# What a takeover buys: things that resell.
_RESELLABLE: Final = frozenset(
    {"Smartphones", "Laptops", "Smartwatches", "Headphones", "手机", "耳机"}
)
# Victims need this much history before the episode (margins over the detectors' warm-ups).
_KNOWN_LOGINS: Final = 5
_PURCHASES: Final = 6
_QUIET_MS: Final = 2 * DAY_MS  # no new device this long before a takeover


@dataclass(frozen=True)
class EpisodeStyle:
    """The numbers an episode is drawn with: what a detector must not depend on.

    ``TUNED`` is what ``risk-v2`` was tuned on. The other styles change its numbers the
    way fraud elsewhere differs: other amounts, fraud that browses the item before buying,
    takeovers from a device the victim used (a copied fingerprint, a shared tablet), slower
    card testing and refunds, bots at human-looking rates. Ranges are inclusive; shares are
    of episodes (or of purchases, for ``*_browse_first``). Choices a style adds come from
    their own random draws, so ``TUNED`` streams stay what they were.
    """

    name: str
    sizes: tuple[tuple[str, int, int], ...] = ()  # (kind, low, high) overriding EPISODE_SIZES
    ato_known_device: float = 0.0  # takeovers from one of the victim's devices (new IP)
    ato_browse_first: float = 0.0  # takeover purchases of an item viewed first
    ato_amount: tuple[float, float] = (5.0, 30.0)  # x the victim's median amount
    ato_delay_min: float = 20.0  # median minutes from the login to the first purchase
    amount_ratio: tuple[float, float] = (20.0, 100.0)  # x the victim's median amount
    amount_over_max: float = 4.0  # and at least this times their largest
    card_gap_s: float = 40.0  # median seconds between card tests
    card_price: tuple[float, float] = (0.99, 4.99)
    card_new_origin: float = 1.0  # share of card testing from a new device and IP
    refund_gap_min: float = 25.0  # median minutes between abusive refunds
    refund_unbought: float = 0.5  # share of refunds of items never bought
    bot_gap_ms: float = 350.0  # median milliseconds between a bot's requests

    def size_range(self, kind: str) -> tuple[int, int]:
        return next(((lo, hi) for k, lo, hi in self.sizes if k == kind), EPISODE_SIZES[kind])


TUNED: Final = EpisodeStyle("tuned")
#: ``risk-v3`` and ``risk-v4`` were tuned on it and ``TUNED`` (and on ``drawn_style``'s
#: seeds 101-103; v4 also on 201-206).
SHIFTED: Final = EpisodeStyle(
    "shifted",
    sizes=(("amount_anomaly", 1, 3),),  # 0-2 views of the item before the purchase
    ato_known_device=0.5,
    ato_browse_first=0.7,
    ato_amount=(3.0, 12.0),
    ato_delay_min=60.0,
    amount_ratio=(8.0, 30.0),
    amount_over_max=2.0,
    card_gap_s=180.0,
    card_price=(0.5, 9.99),
    card_new_origin=0.5,
    refund_gap_min=120.0,
    refund_unbought=0.3,
    bot_gap_ms=1_200.0,
)
EPISODE_STYLES: Final = {s.name: s for s in (TUNED, SHIFTED)}


def drawn_style(seed: int) -> EpisodeStyle:
    """A style whose every number is drawn at random from wide ranges around (and beyond)
    ``TUNED`` and ``SHIFTED``: held-out streams (``benchmarks/risk_bench.py`` judges the
    rules on seeds 104-109; 101-103 and 201-206 became tuning data). A held-out seed's values
    are not to be looked at while tuning; the ranges are the whole design.

    >>> style = drawn_style(101)
    >>> style.name, style == drawn_style(101), 0.0 <= style.ato_known_device <= 0.8
    ('drawn-101', True, True)
    """
    rng = np.random.default_rng([seed, 77])

    def between(low: float, high: float) -> float:
        return float(rng.uniform(low, high))

    def log_between(low: float, high: float) -> float:
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))

    ato_low, amount_low = between(2.0, 6.0), between(5.0, 20.0)
    return EpisodeStyle(
        f"drawn-{seed}",
        sizes=(
            ("amount_anomaly", 1, int(rng.integers(1, 5))),
            ("card_testing", 4, int(rng.integers(8, 16))),
            ("refund_abuse", 4, int(rng.integers(7, 11))),
        ),
        ato_known_device=between(0.0, 0.8),
        ato_browse_first=between(0.0, 1.0),
        ato_amount=(ato_low, ato_low * between(2.0, 5.0)),
        ato_delay_min=log_between(5.0, 300.0),
        amount_ratio=(amount_low, amount_low * between(2.0, 5.0)),
        amount_over_max=between(1.5, 4.0),
        card_gap_s=log_between(20.0, 400.0),
        card_price=(between(0.5, 1.0), between(3.0, 15.0)),
        card_new_origin=between(0.2, 1.0),
        refund_gap_min=log_between(10.0, 240.0),
        refund_unbought=between(0.1, 0.6),
        bot_gap_ms=log_between(200.0, 2_500.0),
    )


def episode_style(name: str) -> EpisodeStyle:
    """``tuned``, ``shifted`` or ``drawn:<seed>`` (see :func:`drawn_style`)."""
    if name.startswith("drawn:") and name[6:].isdigit():
        return drawn_style(int(name[6:]))
    if name not in EPISODE_STYLES:
        raise ValueError(f"anomaly style must be one of {sorted(EPISODE_STYLES)} or drawn:<seed>")
    return EPISODE_STYLES[name]


@dataclass(frozen=True)
class AnomalyConfig:
    """Which labelled anomalies to inject into a generated stream, and how many.

    ``rate`` is the share of users given one anomalous episode, the kinds taken in turn from
    ``kinds``; every event of an episode is labelled with its kind
    (:attr:`GeneratedEvent.anomaly`) and counts towards ``n_events``. The episodes:

    - ``account_takeover``: a login from a new device and a new IP, some browsing, then 1-3
      purchases of 5-30x the user's median amount, minutes to a few hours later. Victims
      have 5 logins from known devices, 6 purchases and no new device for two days.
    - ``amount_anomaly``: one purchase of 20-100x the user's median amount and at least 4x
      their largest, from their usual device and IP; victims have 6 purchases.
    - ``card_testing``: 5-15 purchases of $0.99-4.99, ~40 s apart, from a new device and IP.
    - ``purchase_burst``: 9-20 purchases of ordinary items (the user's favourite categories,
      at most 3x their median amount), ~1 min apart, from their usual device.
    - ``login_burst``: 8-30 logins ~8 s apart, each from a new IP (credential stuffing).
    - ``refund_abuse``: 5-10 refunds ~25 min apart, of what the user bought and of items they
      never bought; victims return at least as many items as they bought.
    - ``bot``: 120-400 views, clicks and searches ~0.35 s apart, from a new device and IP.

    Legitimate users get messier at the same time: 1-3 devices (the phone on changing
    carrier addresses), trips (hotel and roaming IPs), new phones mid-span, re-logins,
    returners who send back a third of what they buy, several items at a time, bargain
    hunters buying under $5, budget-aware buying (an item over 6x the user's usual price is
    bought one time in five, else something in their favourite categories), check-outs of a
    whole cart, fast browsers -- and, as without anomalies, occasional purchases far above a
    user's usual amounts.

    Victims of takeovers and amount anomalies need history, and history comes from events
    per user, not from the span: with 200k events and 5k users (14 days) about 140 users are
    established enough for a takeover and 250 have 6 purchases, enough for the default rate;
    with the command's default 100k events, 19 of the 250 episodes fall on users without
    that history (``stats["short_history"]``; ``generate`` prints it). Use about 40 events
    per user or more.
    """

    rate: float = 0.05
    kinds: tuple[str, ...] = ANOMALY_KINDS
    #: How the episodes behave; ``TUNED`` is what the rules were tuned on (the list above).
    style: EpisodeStyle = TUNED

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"the anomaly rate must be within [0, 1], got {self.rate}")
        unknown = set(self.kinds) - set(ANOMALY_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"anomaly kinds must be some of {ANOMALY_KINDS}, got {self.kinds}")


def plan_anomalies(d: Draws, n_users: int, config: AnomalyConfig) -> list[tuple[str, int]]:
    """(kind, number of events) of each episode to inject."""
    kinds = list(config.kinds)
    first = d.below(len(kinds))
    plan = []
    for n in range(round(config.rate * n_users)):
        kind = kinds[(first + n) % len(kinds)]
        low, high = config.style.size_range(kind)
        plan.append((kind, low + d.below(high - low + 1)))
    return plan


@dataclass
class _Past:
    """One user's legitimate history, for choosing victims and making episodes fit them."""

    times: list[int] = field(default_factory=list)
    origins: list[tuple[str, str]] = field(default_factory=list)  # device, ip of each event
    purchases: list[tuple[int, float]] = field(default_factory=list)  # ts, amount
    bought: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # purchase events
    device_first: list[int] = field(default_factory=list)  # when each device was first seen
    established_ms: int | None = None  # _KNOWN_LOGINS logins from known devices, _PURCHASES


Timeline = list[tuple[int, int, dict[str, Any]]]  # ts, user index, event
_Events = list[tuple[int, dict[str, Any]]]  # one episode: ts, event


class Injector:
    """Choose a victim and a time for each planned episode, and write its events."""

    def __init__(
        self,
        world: World,
        writer: Writer,
        timeline: Timeline,
        deleted: set[int],
        start_ms: int,
        span_ms: int,
        draws: Draws,
        style: EpisodeStyle = TUNED,
    ) -> None:
        self.world, self.writer, self.d, self.style = world, writer, draws, style
        # The style's own choices draw from here, so TUNED streams keep their draws.
        self.x = Draws(np.random.default_rng([world.seed, 4]), block=4096)
        self.start_ms, self.end_ms = start_ms, start_ms + span_ms
        self.pasts = [_Past() for _ in world.users]
        seen: list[set[str]] = [set() for _ in world.users]
        known_logins = [0] * len(world.users)
        for ts, user, event in timeline:
            past, device = self.pasts[user], event.get("device_id", "")
            past.times.append(ts)
            past.origins.append((device, event.get("ip", "")))
            if device not in seen[user]:
                seen[user].add(device)
                past.device_first.append(ts)
            elif event["type"] == "login":
                known_logins[user] += 1
            if event["type"] == "purchase":
                past.purchases.append((ts, event["price"] * event["quantity"]))
                past.bought.append((ts, event))
            if (
                past.established_ms is None
                and known_logins[user] >= _KNOWN_LOGINS
                and len(past.purchases) >= _PURCHASES
            ):
                past.established_ms = ts
        self.free = [u for u in range(len(world.users)) if u not in deleted]
        self.short_history = 0  # episodes whose victim lacks the history its detector needs
        catalog = world.catalog
        self.by_price = sorted((item.price, n) for n, item in enumerate(catalog))
        resellable = [(p, n) for p, n in self.by_price if catalog[n].category in _RESELLABLE]
        self.resellable = resellable or self.by_price

    def inject(self, plan: list[tuple[str, int]]) -> tuple[Timeline, dict[str, str]]:
        """The episodes' events (in no particular order) and their labels by event id."""
        order = list(ANOMALY_KINDS)  # the kinds that need the most history choose first
        out: Timeline = []
        labels: dict[str, str] = {}
        for kind, size in sorted(plan, key=lambda p: order.index(p[0])):
            user, at = self._victim(kind, size)
            events = getattr(self, f"_{kind}")(user, at, size)
            assert len(events) == size, (kind, size, len(events))
            for ts, event in events:
                out.append((ts, user, event))
                labels[event["event_id"]] = kind
        return out, labels

    # Victims -----------------------------------------------------------------------------

    def _victim(self, kind: str, size: int) -> tuple[int, int]:
        """A user not yet a victim and a time the episode starts at that suits the kind."""
        d = self.d
        for _ in range(200):
            if not self.free:
                break
            k = d.below(len(self.free))
            at = self._fits(kind, self.free[k], size)
            if at is not None:
                return self.free.pop(k), at
        # Nobody suits: take anyone; the detector may lack the history to find this one.
        self.short_history += 1
        free = self.free
        user = free.pop(d.below(len(free))) if free else d.below(len(self.world.users))
        return user, self._uniform(self.start_ms + HOUR_MS, self.end_ms - 8 * HOUR_MS)

    def _uniform(self, low: int, high: int) -> int:
        return low + self.d.below(max(high - low, 1))

    def _fits(self, kind: str, user: int, size: int) -> int | None:
        past = self.pasts[user]
        if kind == "account_takeover":
            if past.established_ms is None:
                return None
            for _ in range(8):
                at = self._uniform(past.established_ms + HOUR_MS, self.end_ms - 8 * HOUR_MS)
                if at > self.end_ms - 8 * HOUR_MS:
                    return None
                if not any(at - _QUIET_MS < first <= at for first in past.device_first):
                    return at
            return None
        if kind == "amount_anomaly":
            if len(past.purchases) < _PURCHASES:
                return None
            earliest = past.purchases[_PURCHASES - 1][0] + HOUR_MS
            if earliest >= self.end_ms - HOUR_MS:
                return None
            return self._uniform(earliest, self.end_ms - HOUR_MS)
        at = self._uniform(self.start_ms + HOUR_MS, self.end_ms - 8 * HOUR_MS)
        if kind == "refund_abuse":
            bought = sum(ts < at for ts, _ in past.purchases)
            return at if 1 <= bought <= size else None
        if kind == "purchase_burst":
            return at if past.times else None
        return at

    # Episode events ----------------------------------------------------------------------

    def _event(
        self,
        user: int,
        ts: int,
        kind: str,
        origin: dict[str, str],
        item: int | None = None,
        **fields: Any,
    ) -> tuple[int, dict[str, Any]]:
        event: dict[str, Any] = {
            "event_id": self.writer.event_id(),
            "user_id": self.world.users[user].user_id,
            "ts": ts,
            "type": kind,
        }
        if item is not None:
            catalog_item = self.world.catalog[item]
            event |= {
                "item_id": catalog_item.item_id,
                "category": catalog_item.category,
                "brand": catalog_item.brand,
            }
        return ts, event | fields | origin

    def _origin(self, device: str, ip: str, channel: str | None = None) -> dict[str, str]:
        self.writer.session_seq += 1
        return {
            "session_id": f"s{self.world.seed}-{self.writer.session_seq}",
            "device_id": device,
            "ip": ip,
            "channel": channel or self.d.choice(CHANNELS),
        }

    def _usual_origin(self, user: int, at: int) -> dict[str, str]:
        """The device and IP of the user's last event before ``at`` (or their first device)."""
        origins = self._origins_before(user, at)
        if origins:
            return self._origin(*origins[-1])
        habits = self.world.users[user].habits
        ip = habits.home_ip if habits is not None else random_ip(self.d)
        return self._origin(self.world.users[user].devices[0], ip)

    def _new_origin(self, channel: str | None = None) -> dict[str, str]:
        device = f"d{self.world.seed}-{len(self.world.users) + self.d.below(10**6)}-0"
        return self._origin(device, random_ip(self.d), channel)

    def _median_and_max(self, user: int, at: int) -> tuple[float, float]:
        """The median of the user's last 32 purchase amounts before ``at``, and the largest."""
        amounts = [a for ts, a in self.pasts[user].purchases if ts < at]
        if not amounts:
            return 60.0, 60.0
        return float(np.median(amounts[-32:])), max(amounts)

    def _priced(self, target: float, items: list[tuple[float, int]]) -> tuple[int, float, int]:
        """An item near ``target`` in price, and the quantity that brings it close."""
        k = bisect.bisect_right(items, (target * 1.2, len(self.world.catalog)))
        pool = items[max(k - 5, 0) : k] or items[:1]
        price, item = pool[self.d.below(len(pool))]
        qty = max(1, min(round(target / price), 10))
        return item, round(price, 2), qty

    def _gaps(
        self,
        at: int,
        n: int,
        median_ms: float,
        sigma: float,
        least: int,
        draws: Draws | None = None,
    ) -> list[int]:
        """``n`` times from ``at``, lognormal gaps of at least ``least`` (from ``draws``, by
        default the episodes' own)."""
        d = self.d if draws is None else draws
        times = [at]
        for _ in range(n - 1):
            times.append(times[-1] + max(round(d.lognormal(median_ms, sigma)), least))
        return times

    def _account_takeover(self, user: int, at: int, size: int) -> _Events:
        d, x, style = self.d, self.x, self.style
        if x.chance(style.ato_known_device):  # the victim's device, from a new address
            devices = sorted({device for device, _ in self._origins_before(user, at)})
            device = x.choice(devices) if devices else self.world.users[user].devices[0]
            origin = self._origin(device, random_ip(d), "web")
        else:
            origin = self._new_origin("web")
        median, _ = self._median_and_max(user, at)
        low, high = style.ato_amount
        n_buys = 1 + (size >= 5) + (size >= 7)
        events = [self._event(user, at, "login", origin)]
        ts = at
        for _ in range(size - 1 - n_buys):
            ts += max(round(d.lognormal(20_000, 0.7)), 1_000)
            events.append(self._event(user, ts, "view", origin, d.choice(self.resellable)[1]))
        delay_ms = style.ato_delay_min * MINUTE_MS
        longest = round(min(12 * delay_ms, 10 * HOUR_MS))
        ts += min(max(round(d.lognormal(delay_ms, 1.0)), 60_000), longest)
        views = len(events) - 1
        for k in range(n_buys):
            item, price, qty = self._priced(
                median * (low + (high - low) * d.uniform()), self.resellable
            )
            events.append(
                self._event(user, ts, "purchase", origin, item, price=price, quantity=qty)
            )
            if x.chance(style.ato_browse_first):  # one of the views was of this item
                _, view = events[views - k]
                view |= {f: events[-1][1][f] for f in ("item_id", "category", "brand")}
            ts += max(round(d.lognormal(4 * 60_000, 0.8)), 20_000)
        return events

    def _origins_before(self, user: int, at: int) -> list[tuple[str, str]]:
        past = self.pasts[user]
        return past.origins[: bisect.bisect_left(past.times, at)]

    def _amount_anomaly(self, user: int, at: int, size: int) -> _Events:
        """One purchase, after ``size - 1`` views of its item (a style may browse first)."""
        style = self.style
        median, largest = self._median_and_max(user, at)
        low, high = style.amount_ratio
        target = max(
            median * (low + (high - low) * self.d.uniform()), style.amount_over_max * largest
        )
        item, price, qty = self._priced(target, self.by_price)
        origin = self._usual_origin(user, at)
        *views, bought = self._gaps(at, size, 60_000, 0.8, 5_000, self.x)
        events = [self._event(user, ts, "view", origin, item) for ts in views]
        events.append(
            self._event(user, bought, "purchase", origin, item, price=price, quantity=qty)
        )
        return events

    def _card_testing(self, user: int, at: int, size: int) -> _Events:
        d, style = self.d, self.style
        new = self.x.chance(style.card_new_origin)
        origin = self._new_origin() if new else self._usual_origin(user, at)
        low, high = style.card_price
        return [
            self._event(
                user,
                ts,
                "purchase",
                origin,
                d.below(len(self.world.catalog)),
                price=round(low + (high - low) * d.uniform(), 2),
                quantity=1,
            )
            for ts in self._gaps(at, size, style.card_gap_s * 1_000, 0.6, 5_000)
        ]

    def _purchase_burst(self, user: int, at: int, size: int) -> _Events:
        w, d = self.world, self.d
        origin = self._usual_origin(user, at)
        median, _ = self._median_and_max(user, at)
        # Ordinary items: the user's favourite categories, at most thrice their median amount.
        items = [
            n for c in favourite_categories(w.users[user].favourite_cdf) for n in w.items_of[c]
        ]
        ordinary = [n for n in items if w.catalog[n].price <= 3 * median] or items
        ordinary = ordinary or list(range(len(w.catalog)))
        events = []
        for ts in self._gaps(at, size, 60_000, 0.5, 10_000):
            item = ordinary[d.below(len(ordinary))]
            price = round(w.catalog[item].price * (1.0 - 0.2 * d.uniform() ** 3), 2)
            events.append(self._event(user, ts, "purchase", origin, item, price=price, quantity=1))
        return events

    def _login_burst(self, user: int, at: int, size: int) -> _Events:
        origin = self._new_origin("web")
        return [
            self._event(user, ts, "login", origin | {"ip": random_ip(self.d)})
            for ts in self._gaps(at, size, 8_000, 0.8, 1_000)
        ]

    def _refund_abuse(self, user: int, at: int, size: int) -> _Events:
        d, catalog = self.d, self.world.catalog
        bought = [event for ts, event in self.pasts[user].bought if ts < at]
        origin = self._usual_origin(user, at)
        events = []
        gap_ms = self.style.refund_gap_min * 60_000
        for ts in self._gaps(at, size, gap_ms, 0.7, 60_000):
            if bought and d.chance(1.0 - self.style.refund_unbought):
                purchase = bought.pop(d.below(len(bought)))
                fields = {
                    k: purchase[k] for k in ("item_id", "category", "brand", "price", "quantity")
                }
                events.append(self._event(user, ts, "refund", origin, **fields))
            else:  # "it never arrived": an item the user never bought here
                item = d.below(len(catalog))
                events.append(
                    self._event(
                        user, ts, "refund", origin, item, price=catalog[item].price, quantity=1
                    )
                )
        return events

    def _bot(self, user: int, at: int, size: int) -> _Events:
        d, w = self.d, self.world
        origin = self._new_origin("web")
        lang = w.users[user].lang
        events = []
        for ts in self._gaps(at, size, self.style.bot_gap_ms, 0.5, 50):
            roll = d.uniform()
            if roll < 0.15:
                queries = w.categories[d.below(len(w.categories))].queries(lang)
                events.append(self._event(user, ts, "search", origin, text=d.choice(queries)))
            else:
                kind = "view" if roll < 0.7 else "click"
                events.append(self._event(user, ts, kind, origin, d.below(len(w.catalog))))
        return events
