"""Users' sessions (login, searches, views, carts, purchases, reviews, logout) and the JSON
lines they write, in English and Chinese."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from dataflow.sim.world import (
    _CHINA_TZ,
    _GAP_S,
    _HOUR_WEIGHTS,
    _NEXT,
    _TZ_HOURS,
    CHANNELS,
    DELETE_EVERY,
    EPOCH,
    RFC3339_RATE,
    User,
    World,
    _Session,
    cdf,
)
from operators.ingest.units import DAY_MS, HOUR_MS

Lang = Literal["en", "zh"]


def plan_sessions(world: World, n_valid: int, start_ms: int, span_ms: int) -> list[_Session]:
    """Session skeletons whose lengths add up to exactly ``n_valid``, in start order."""
    d = world.draws
    hour_cdf = cdf(_HOUR_WEIGHTS)
    days = max(span_ms // DAY_MS, 1)
    sessions: list[tuple[int, int, int]] = []
    total = 0
    # Every user of the population shows up at least once, in a short visit, unless that would
    # take more than 30% of the traffic; the rest follows the Zipf activity ranks.
    first_visits = iter(world.user_rank)
    while total < n_valid:
        visitor = next(first_visits, None) if total < 0.3 * n_valid else None
        user = world.user_rank[d.pick(world.user_cdf)] if visitor is None else visitor
        median = 6.0 if visitor is None else 3.0
        length = min(max(round(d.lognormal(median, 0.8)), 1), 80, n_valid - total)
        local = d.below(days) * DAY_MS + d.pick(hour_cdf) * HOUR_MS + d.below(HOUR_MS)
        offset = local - _TZ_HOURS[world.users[user].lang] * HOUR_MS
        # Wrap into the span, leaving an hour at its end for the session to play out.
        start = start_ms + offset % max(span_ms - HOUR_MS, 1)
        sessions.append((start, user, length))
        total += length
    deletes = set()
    if sessions:
        for _ in range(int(d.rng.binomial(n_valid, 1 / DELETE_EVERY))):
            deletes.add(d.below(len(sessions)))
    sessions.sort()
    return [_Session(s, u, n, k in deletes) for k, (s, u, n) in enumerate(sessions)]


def _rfc3339(ts_ms: int, lang: Lang) -> str:
    moment = EPOCH + timedelta(milliseconds=ts_ms)
    if lang == "zh":
        return moment.astimezone(_CHINA_TZ).isoformat(timespec="milliseconds")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Writer:
    """Turn one session skeleton into event dicts, keeping each user's cart and purchases."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.seq = 0
        self.session_seq = 0
        self.next_type = {k: ([t for t, _ in v], cdf(w for _, w in v)) for k, v in _NEXT.items()}

    def event_id(self) -> str:
        self.seq += 1
        return f"e{self.world.seed}-{self.seq:08d}"

    def session(self, s: _Session) -> list[tuple[int, int, dict[str, Any]]]:
        """The session's events as ``(ts_ms, user index, event dict)``."""
        w, d = self.world, self.world.draws
        user = w.users[s.user]
        self.session_seq += 1
        common = {
            "session_id": f"s{w.seed}-{self.session_seq}",
            "device_id": d.choice(user.devices),
            "ip": f"{d.choice((24, 66, 73, 101, 112, 183, 203))}.{d.below(256)}."
            f"{d.below(256)}.{1 + d.below(254)}",
            "channel": user.channel if d.chance(0.85) else d.choice(CHANNELS),
        }
        ts = max(s.start_ms, user.next_free_ms)
        speed = 1.0  # multiplies the gaps between events
        habits, x = user.habits, w.extra
        if habits is not None:
            common["device_id"], common["ip"] = w.origin(user, ts)
            speed = 0.3 if habits.fast or x.chance(0.03) else 1.0
        types = self._plan(s, user)
        category = d.pick(user.favourite_cdf)
        current: int | None = None
        out: list[tuple[int, int, dict[str, Any]]] = []
        for previous, kind in zip(["start", *types], types, strict=False):
            event: dict[str, Any] = {"event_id": self.event_id(), "user_id": user.user_id,
                                     "ts": ts, "type": kind}  # fmt: skip
            item: int | None = None
            if kind == "search":
                if d.chance(0.25):  # wander to another category
                    category = d.pick(user.favourite_cdf)
                event["text"] = w.query(user, category)
            elif kind in ("view", "click"):
                # A view usually opens the item just clicked; otherwise browse the category.
                keep = kind == "view" and d.chance(0.85 if previous == "click" else 0.25)
                item = current if keep and current is not None else w.item_in(category)
            elif kind in ("add_to_cart", "favorite", "share"):
                item = current if current is not None else w.item_in(category)
                if kind == "add_to_cart":
                    user.cart.append(item)
            elif kind == "ad_click":
                item = w.all_items[d.pick(w.all_item_cdf)]
            elif kind == "remove_from_cart":
                item = user.cart.pop(d.below(len(user.cart)))
            elif kind == "purchase":
                item = user.cart.pop() if user.cart else current
                item = item if item is not None else w.item_in(category)
                if (
                    habits is not None
                    and w.catalog[item].price > 6 * habits.usual_price
                    and x.chance(0.8)
                ):  # too dear: most settle for something in their favourite categories
                    item = w.item_in(d.pick(user.favourite_cdf))
                price = round(w.catalog[item].price * (1.0 - 0.2 * d.uniform() ** 3), 2)
                qty = 1 if d.chance(0.85) else 2 if d.chance(0.7) else 3 + d.below(3)
                if habits is not None and x.chance(0.3 if habits.bargain_hunter else 0.008):
                    price, qty = round(0.99 + 3.5 * x.uniform(), 2), 1  # a coupon, a sample
                if habits is not None and habits.returner and x.chance(0.35):
                    habits.to_return += 1
                event |= {"price": price, "quantity": qty}
                user.purchases.append((item, price, qty))
            elif kind == "refund":
                item, price, qty = user.purchases.pop(d.below(len(user.purchases)))
                event |= {"price": price, "quantity": qty}
            elif kind == "review":
                item = d.choice(user.purchases)[0]
                event["rating"], event["text"] = w.review(user, item)
            elif kind == "delete_user":
                user.purchases.clear()
                user.cart.clear()
            if item is not None:
                catalog_item = w.catalog[item]
                event |= {"item_id": catalog_item.item_id, "category": catalog_item.category,
                          "brand": catalog_item.brand}  # fmt: skip
                current = item
                category = w.item_category[item]
            if d.chance(RFC3339_RATE):
                event["ts"] = _rfc3339(ts, user.lang)
            out.append((ts, s.user, event | common))
            ts += max(round(d.lognormal(_GAP_S.get(kind, 10) * 1000 * speed, 0.9)), 200)
        user.next_free_ms = ts + 60_000
        return out

    def _plan(self, s: _Session, user: User) -> list[str]:
        """The session's event types, exactly ``s.length`` of them."""
        d, x = self.world.draws, self.world.extra
        habits = user.habits
        head: list[str] = []
        tail: list[str] = ["delete_user"] if s.deletes else []
        room = s.length - len(tail)
        if room >= 3 and d.chance(0.35):
            head.append("login")
            if habits is not None and x.chance(0.04):  # an expired session, a mistyped code
                head += ["login"] * min(1 + x.below(3), room - 3)
        if room >= 3 and not tail and d.chance(0.3):
            tail.append("logout")
        # After-sales first: refunds and reviews of earlier purchases. Rates are shop-like (a
        # few percent of purchases refunded, one in seven reviewed), and they matter: long
        # review texts are what the embedding model spends most of its time on.
        if room - len(head) - len(tail) >= 2 and user.purchases:
            returns = 0 if habits is None else habits.to_return
            if returns and habits is not None:  # a returner sends back what they set aside
                returns = min(returns, len(user.purchases), room - len(head) - len(tail) - 1)
                head += ["refund"] * returns
                habits.to_return -= returns
            elif d.chance(0.04):
                head.append("refund")
            elif d.chance(0.1):
                head.append("review")
        middle: list[str] = []
        state = "start"
        cart = len(user.cart)
        while len(head) + len(middle) + len(tail) < s.length:
            names, cdf = self.next_type[state]
            kind = names[d.pick(cdf)]
            if habits is not None and state == "purchase" and cart > 0 and x.chance(0.35):
                kind = "purchase"  # check out the rest of the cart
            if kind == "remove_from_cart" and cart == 0:
                kind = "view"
            if kind == "add_to_cart":
                cart += 1
            elif kind in ("remove_from_cart", "purchase") and cart > 0:
                cart -= 1
            middle.append(kind)
            state = kind
        return (head + middle + tail)[: s.length]
