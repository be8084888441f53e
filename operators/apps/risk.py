"""Score each user's events for fraud and abuse; raise one alert per episode.

:func:`assess` is the whole stateful logic, pure and Bytewax-free: the flow calls it for
every applied event of a user, in arrival order, and publishes the :class:`Alert` list it
returns. Seven detectors share one bounded :class:`RiskState`:

- ``account_takeover``: an event (typically the login) from a device *and* an IP the user
  never used, after an established history (``ato_grace_logins`` logins from known devices)
  with no other new device for ``ato_quiet_ms``, opens a suspicion. A *login* from a new IP
  on a known device (a copied fingerprint, a shared tablet) opens one too, for users with
  ``ato_new_ip_history`` amounts; a later login from another new IP replaces it while it
  has found nothing (phones change addresses all the time). A purchase from the suspected
  device or IP within ``ato_window_ms`` escalates the suspicion to an alert when the
  learned takeover score (``risk-v5``; :data:`TAKEOVER_FEATURES`: the buyer's spend, how
  new and how used the device and IP are, the amount against the user's median and
  largest, a new category, a blind purchase) reaches its threshold. Without it
  (``ato_learned`` off) the ratio rules decide: ``ato_unusual_ratio`` times the user's
  median after a new device; after a known one ``ato_known_device_ratio`` times in a
  category new to the user (first seen within ``category_new_ms``) or
  ``ato_known_device_any_ratio`` times in any. Purchases from the suspected origin stay out
  of the amount history (an intruder's spending is not the owner's habit), and only new
  evidence (the opening event, an escalating purchase) triggers. The score is
  ``1 - 0.5 ** (1 + escalating purchases)``: 0.5 for the new device and IP alone, which
  alerts only if ``ato_min_score`` is lowered to 0.5.
- ``amount_anomaly``: a purchase far above the user's *own* amounts --
  ``amount_over_median`` times the median of their last ``amount_history`` purchases,
  ``amount_over_max`` times the largest (remembered beyond the ring, slowly decaying), and a
  robust z-score (median and MAD of log amounts) of at least ``amount_z``, so users whose
  amounts vary widely need more -- that comes out of the blue: either *blind* (see below)
  and opening a visit (the first event of its session, or ``amount_idle_ms`` after the
  user's latest event), or looked at first but the only item its session looked at
  (straight to the item) for a user with ``amount_browsed_history`` amounts. Amounts up
  to ``card_small_amount`` (samples, coupons) and blind ones up to ``card_test_amount``
  (possible card tests) stay out of the history. Silent until ``amount_grace`` purchases
  are known. A big purchase in the middle of an ordinary visit is left alone: amounts
  alone cannot tell those from fraud.
- ``card_testing``: ``card_count`` blind purchases of at most ``card_test_amount`` within
  ``card_window_ms``.
- ``purchase_burst``: ``purchase_burst_count`` blind purchases within
  ``purchase_burst_window_ms``. ``login_burst``: that many logins within a short window.
- ``refund_abuse``: ``refund_count`` refunds within ``refund_window_ms`` while refunds are at
  least ``refund_min_ratio`` of the user's (decayed) purchases, and either one of them is
  of an item not among the user's last ``item_memory`` purchases or the ratio reaches
  ``refund_sure_ratio``: returners send back what they bought.
- ``bot``: ``bot_count`` browsing events (views, clicks, searches, ...) within
  ``bot_window_ms``, or ``bot_run_count`` in a row without a pause of ``bot_run_gap_ms``:
  a rate, or a stamina, no person browses at.

A purchase is *blind* when its item is neither among those of the user's last
``item_memory`` browsing events (views, clicks, adds to the cart, ...) nor among the last
``cart_memory`` items they put in their cart and have not removed or bought since.
Shoppers look before they buy: a whole-cart check-out (even of things carted weeks ago) or
a big purchase they thought about is of items they browsed, while a scripted run of
purchases or a one-off outlier bought straight away is not. Items are remembered as 32-bit
hashes of their ids.

A burst or bot detector is silent until its ring holds its count of events (its warm-up);
the windows are judged on the spread of the ring's timestamps, so slightly out-of-order
events count the same. The more specific explanation wins: purchases in a suspected takeover
session raise no ``amount_anomaly`` or ``purchase_burst``, and card testing no
``purchase_burst``.

An alert fires once per episode: when a detector triggers and the same kind has not
triggered for ``episode_quiet_ms``; later triggers only extend the episode. ``alert_id``
hashes the user, the kind and the event that opened the episode, so a replay re-sends the
same id. Device ids and IPs are opaque strings (they may be keyed hashes); the state keeps
at most ``max_devices`` and ``max_ips`` of them, evicting the least used first.

>>> params = RiskParams(bot_count=20)
>>> t0, state, alerts = 1_717_000_000_000, None, []
>>> for n in range(60):  # a scraper: 60 views, 250 ms apart
...     view = Event(f"e{n}", "u1", t0 + 250 * n, "view", item_id=f"i{n}")
...     state, fired = assess(state, view, params)
...     alerts += fired
>>> [(a.kind, a.event_ids[-1], a.score, a.evidence["rate_per_s"]) for a in alerts]
[('bot', 'e19', 0.9266, 4.0)]
>>> len(msgspec.msgpack.encode(state)) < 500
True
"""

from __future__ import annotations

import hashlib
import itertools
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from operators.apps.risk_features import USER_FEATURES, SpendHistory, user_features
from operators.apps.risk_model import RiskModel, load_model
from operators.ingest import Event
from operators.ingest.units import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS

KINDS: Final = (
    "account_takeover",
    "amount_anomaly",
    "card_testing",
    "purchase_burst",
    "login_burst",
    "refund_abuse",
    "bot",
)
#: Event types that count as browsing for the bot detector.
BROWSE_TYPES: Final = frozenset(
    {"view", "click", "search", "ad_click", "favorite", "add_to_cart", "share"}
)

Evidence = dict[str, float | int | str]


@dataclass(frozen=True)
class RiskParams:
    """Thresholds and memory sizes of the detectors; changing any is a new ``model_version``."""

    model_version: str = "risk-v5"
    #: An episode of a kind ends after this long without a trigger of that kind.
    episode_quiet_ms: int = 6 * HOUR_MS
    #: Most event ids an alert cites (the most recent of its window; the trigger last).
    max_cited: int = 10
    max_devices: int = 8
    max_ips: int = 16
    #: Browsed items and items in the cart remembered; a purchase of any other item is blind.
    item_memory: int = 32
    cart_memory: int = 16
    #: Categories the user has browsed or bought (hashed), and how long one stays "new to
    #: them" after it was first seen.
    category_memory: int = 16
    category_new_ms: int = 6 * HOUR_MS
    # Account takeover.
    ato_grace_logins: int = 3
    ato_quiet_ms: int = DAY_MS
    ato_window_ms: int = 12 * HOUR_MS
    ato_unusual_ratio: float = 3.0
    ato_fallback_amount: float = 1_000.0  # "unusual" before amount_grace purchases are known
    ato_min_score: float = 0.7
    #: A login from a new IP on a *known* device opens a suspicion only for users with
    #: this many amounts, and escalates only on purchases in categories new to them, at
    #: least this many times their median: phones change addresses all the time.
    ato_new_ip_history: int = 6
    ato_known_device_ratio: float = 4.0
    ato_known_device_any_ratio: float = 8.0  # ... or in any category at this many times
    #: ... and alerts at most once this long per user: for a user whose new-address logins
    #: keep coming with big purchases, that is their normal.
    ato_known_device_repeat_ms: int = 30 * DAY_MS
    #: Inside a suspicion, the learned takeover score (:data:`TAKEOVER_FEATURES`) decides
    #: which purchases escalate, in place of the ratio thresholds above.
    ato_learned: bool = True
    # Purchase amounts.
    amount_history: int = 32
    amount_grace: int = 4
    #: A browsed outlier counts only if its session went straight to it, for a user with
    #: this many amounts.
    amount_browsed_history: int = 6
    amount_over_median: float = 8.0
    amount_over_max: float = 2.0
    amount_z: float = 1.0  # robust z of the log amount: users whose amounts vary widely need more
    amount_mad_floor: float = 0.25  # in natural-log units: amounts within ~25% look alike
    amount_min: float = 20.0
    #: An outlier counts only when it opens a visit: the first event of its session, or one
    #: after this long without any event of the user.
    amount_idle_ms: int = 30 * MINUTE_MS
    #: The largest amount is also remembered beyond the ring, halving at this pace.
    amount_peak_half_life_ms: int = 90 * DAY_MS
    # Card testing and bursts.
    card_small_amount: float = 5.0  # amounts up to this stay out of the amount history
    card_test_amount: float = 20.0  # blind purchases up to this count as card tests
    card_count: int = 4
    card_window_ms: int = HOUR_MS
    purchase_burst_count: int = 6  # blind purchases
    purchase_burst_window_ms: int = 15 * MINUTE_MS
    login_burst_count: int = 6
    login_burst_window_ms: int = 10 * MINUTE_MS
    # Refund abuse.
    refund_count: int = 4
    refund_window_ms: int = DAY_MS
    refund_min_ratio: float = 0.6
    refund_half_life_ms: int = 30 * DAY_MS
    #: Refunds out of proportion alert only with a refund of an item the user did not buy
    #: (among their last ``item_memory`` purchases) or at this ratio: returners send back
    #: what they bought.
    refund_sure_ratio: float = 1.0
    # Bots.
    bot_count: int = 40
    bot_window_ms: int = MINUTE_MS
    #: ... or this many browsing events in a row without a pause of bot_run_gap_ms.
    bot_run_count: int = 100
    bot_run_gap_ms: int = 10 * SECOND_MS

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if f.name == "model_version":
                if not value:
                    raise ValueError("model_version must not be empty")
            elif f.name.endswith("_count") and value < 2:
                raise ValueError(f"{f.name} must be at least 2, got {value}")
            elif f.name in ("ato_grace_logins", "amount_grace") and value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")
            elif f.name not in ("ato_grace_logins", "amount_grace") and value <= 0:
                raise ValueError(f"{f.name} must be positive, got {value}")
        if self.amount_history < max(self.amount_grace, 1):
            raise ValueError("amount_history must hold at least amount_grace purchases")


def load_risk_params(path: str | Path | None) -> RiskParams:
    """The defaults, overridden by the JSON object in ``path`` (``None``: the defaults).

    >>> load_risk_params(None).model_version
    'risk-v5'
    """
    if path is None:
        return RiskParams()
    data = Path(path).read_bytes()
    try:
        names = msgspec.json.decode(data, type=dict[str, Any])
        unknown = sorted(set(names) - {f.name for f in fields(RiskParams)})
        if unknown:
            raise ValueError(f"unknown risk parameters {unknown}")
        return msgspec.json.decode(data, type=RiskParams)
    except (msgspec.DecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


class Seen(msgspec.Struct, array_like=True, gc=False):
    """How often and when a device or IP was seen."""

    count: int
    first_ms: int
    last_ms: int


class Suspect(msgspec.Struct, array_like=True):
    """An open account-takeover suspicion: the new device and IP, and what followed."""

    event_id: str
    ts_ms: int
    device_id: str
    ip: str
    unusual: int = 0
    top_amount: float = 0.0
    top_ratio: float = 0.0
    cited: list[str] = []
    new_device: bool = True  # False: a known device from a new IP (needs new categories)


class AmountScore(msgspec.Struct, frozen=True):
    """How a purchase amount compares with the user's own: ``excess`` >= 1 is an outlier.

    ``excess`` is the smallest of amount / (``amount_over_median`` x median), amount /
    (``amount_over_max`` x largest) and z / ``amount_z``: every test passes when it is >= 1.
    """

    excess: float
    median: float
    mad_log: float
    largest: float
    z: float
    history: int


class AmountModel(msgspec.Struct, array_like=True):
    """A user's purchase amounts, River-style: ``score_one`` before ``learn_one``.

    Keeps the last ``amount_history`` amounts (median and MAD of their logs) and the
    largest amount ever, halving every ``amount_peak_half_life_ms``, so a big purchase that
    left the ring is still known.

    >>> model, params = AmountModel(), RiskParams()
    >>> for amount in (40.0, 55.0, 48.0, 60.0, 52.0):
    ...     model.learn_one(amount, 0, params)
    >>> score = model.score_one(600.0, 0, params)
    >>> round(score.median, 2), score.largest, round(score.excess, 2)
    (52.0, 60.0, 1.44)
    >>> model.score_one(100.0, 0, params).excess < 1
    True
    """

    amounts: list[float] = []
    peak: float = 0.0  # the largest amount as of peak_ms
    peak_ms: int = 0

    def largest(self, ts_ms: int, params: RiskParams) -> float:
        """The largest amount of the ring, or the decayed all-time largest if that is more."""
        elapsed = max(ts_ms - self.peak_ms, 0)
        decayed = self.peak * 0.5 ** (elapsed / params.amount_peak_half_life_ms)
        return max(max(self.amounts, default=0.0), decayed)

    def median(self) -> float:
        return math.exp(robust_log_stats(self.amounts)[0])

    def score_one(self, amount: float, ts_ms: int, params: RiskParams) -> AmountScore | None:
        """How far ``amount`` stands above this user's amounts; ``None`` during the warm-up."""
        if len(self.amounts) < max(params.amount_grace, 1):
            return None
        median_log, mad = robust_log_stats(self.amounts)
        median = math.exp(median_log)
        z = (math.log(max(amount, 0.01)) - median_log) / max(1.4826 * mad, params.amount_mad_floor)
        largest = self.largest(ts_ms, params)
        excess = min(
            amount / (params.amount_over_median * median),
            amount / (params.amount_over_max * largest),
            z / params.amount_z,
        )
        return AmountScore(excess, median, mad, largest, z, len(self.amounts))

    def learn_one(self, amount: float, ts_ms: int, params: RiskParams) -> None:
        if amount >= self.largest(ts_ms, params):
            self.peak, self.peak_ms = amount, ts_ms
        _push(self.amounts, amount, params.amount_history)


class RiskState(msgspec.Struct, array_like=True):
    """A user's risk memory; every collection is capped (typically 0.6 KB, at most ~3 KB).

    ``version`` counts the events assessed. Rings hold ``(ts_ms, event_id[, amount])``,
    oldest first (``purchases``: the blind ones only); ``episodes`` maps a kind to the
    (start, last trigger) of its open episode; ``items`` holds the hashes (:func:`item_key`)
    of the latest browsed items, oldest first, and ``cart`` those of the items in the cart,
    least recently added first; ``session`` the hash of the latest event's session id (0:
    none). Encoded as a MessagePack array: new fields go at the end, with defaults.
    """

    version: int = 0
    last_ms: int = 0
    devices: dict[str, Seen] = {}
    ips: dict[str, Seen] = {}
    known_logins: int = 0
    last_new_device_ms: int = 0
    suspect: Suspect | None = None
    amount: AmountModel = msgspec.field(default_factory=AmountModel)
    purchases: list[tuple[int, str, float]] = []
    small_purchases: list[tuple[int, str, float]] = []
    logins: list[tuple[int, str]] = []
    refunds: list[tuple[int, str, float]] = []
    browse_ms: list[int] = []
    browse_ids: list[str] = []
    purchase_weight: float = 0.0  # decayed counts as of refund_anchor_ms
    refund_weight: float = 0.0
    refund_anchor_ms: int = 0
    episodes: dict[str, tuple[int, int]] = {}
    items: list[int] = []
    session: int = 0
    cart: list[int] = []
    #: The learned score's view of the user (operators.apps.learned_risk): per-day spend and
    #: the times of the fraud verdicts on their purchases.
    spend: SpendHistory | None = None
    #: (hash, first seen, last seen) of the user's latest categories, in minutes since the
    #: epoch: "new to the user" means first seen within ``category_new_ms``, whatever
    #: sessions came between.
    categories: list[tuple[int, int, int]] = []
    #: The first two distinct items browsed in the current session: a purchase of the only
    #: item the session looked at went "straight to the item".
    session_items: list[int] = []
    #: Hashes of the items of the user's latest purchases, and when refunds of items not
    #: among them came (at most ``refund_count``).
    bought: list[int] = []
    unbought_refunds: list[int] = []
    #: Browsing events in a row without a pause of ``bot_run_gap_ms``, and the latest one.
    bot_run: int = 0
    bot_run_ms: int = 0
    #: When a takeover suspicion from a known device last alerted.
    known_device_alert_ms: int = 0


class Alert(msgspec.Struct, frozen=True):
    """A risk alert: who, what kind, how sure (0-1), which events, and why."""

    alert_id: str
    user_id: str
    kind: str
    score: float
    event_ids: tuple[str, ...]
    event_time_ms: int
    evidence: Evidence
    model_version: str


def alert_id(user_id: str, kind: str, event_id: str) -> str:
    """A stable id from the user, the kind and the event that opened the episode.

    >>> alert_id("u1", "bot", "e19")
    'ra-5bf31c6e7d01049c'
    """
    key = f"{user_id}\x1f{kind}\x1f{event_id}".encode()
    return "ra-" + hashlib.blake2b(key, digest_size=8).hexdigest()


def robust_log_stats(amounts: list[float]) -> tuple[float, float]:
    """Median and MAD of the natural logs of ``amounts`` (amounts below a cent count as one).

    >>> median, mad = robust_log_stats([10.0, 20.0, 40.0])
    >>> round(math.exp(median), 6), round(mad, 6)
    (20.0, 0.693147)
    """
    logs = sorted(math.log(max(a, 0.01)) for a in amounts)
    median = _median(logs)
    return median, _median(sorted(abs(x - median) for x in logs))


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _push(ring: list[Any], item: object, capacity: int) -> None:
    ring.append(item)
    if len(ring) > capacity:
        del ring[: len(ring) - capacity]


def _remember(seen: dict[str, Seen], key: str, ts_ms: int, capacity: int) -> None:
    """Count a sighting of ``key``; when full, forget the least seen (the oldest of those)."""
    entry = seen.get(key)
    if entry is not None:
        entry.count += 1
        entry.last_ms = max(entry.last_ms, ts_ms)
        return
    while len(seen) >= capacity:
        del seen[min(seen, key=lambda k: (seen[k].count, seen[k].last_ms))]
    seen[key] = Seen(1, ts_ms, ts_ms)


def _rate_score(span_ms: int, window_ms: int) -> float:
    """0.5 when ``count`` events took the whole window, towards 1 the faster they came."""
    return window_ms / (window_ms + max(span_ms, 0))


def _spread(times: list[int]) -> int:
    return max(times) - min(times)


def item_key(item_id: str) -> int:
    """The 32-bit hash the state remembers an item (or a session) by, stable across processes.

    >>> item_key("i000042")
    2175063589
    """
    return zlib.crc32(item_id.encode())


def _browsed(state: RiskState, kind: str, item_id: str | None, params: RiskParams) -> None:
    """Remember a browsed item; the cart's items also in the cart (until removed or bought).

    ``items`` is a plain ring of the latest browsing, cheap to keep: an item browsed twice in
    a row (a click, then its view) takes one place, but one browsed again later takes
    another. ``cart`` holds each item once.
    """
    if item_id is None:
        return
    key = zlib.crc32(item_id.encode())  # item_key, inlined: this runs for most events
    if len(state.session_items) < 2 and key not in state.session_items:
        state.session_items.append(key)
    items = state.items
    if not items or items[-1] != key:
        _push(items, key, params.item_memory)
    if kind == "add_to_cart":
        cart = state.cart
        if key in cart:
            cart.remove(key)
        _push(cart, key, params.cart_memory)


def _blind(state: RiskState, key: int | None) -> bool:
    """Whether a purchase of the item ``key`` comes without the user having browsed it."""
    return key is None or (key not in state.items and key not in state.cart)


def _amount(event: Event) -> float | None:
    return None if event.price is None else event.price * event.quantity


@dataclass
class _Finding:
    kind: str
    score: float
    event_ids: list[str]
    evidence: Evidence


def _unusual(state: RiskState, amount: float, params: RiskParams) -> tuple[bool, float]:
    """Whether a purchase in a suspected takeover is unusual; (unusual, ratio to the median)."""
    if len(state.amount.amounts) >= max(params.amount_grace, 1):
        ratio = amount / state.amount.median()
        return ratio >= params.ato_unusual_ratio, ratio
    return amount >= params.ato_fallback_amount, 0.0


#: What the learned takeover score sees of a purchase from a suspected origin: the buyer's
#: spend (the learned purchase score's user part), then the suspicion and the origin.
TAKEOVER_FEATURES: Final = (
    *USER_FEATURES,
    "new_device_suspicion",
    "minutes_since_suspicion",
    "device_age_days",
    "device_uses",
    "ip_uses",
    "known_devices",
    "known_logins",
    "amount_history",
    "ratio_to_median",
    "ratio_to_largest",
    "new_category",
    "blind",
)
#: The takeover score shipped with the package (``profilestream train-takeover``).
SHIPPED_TAKEOVER_MODEL: Final = Path(__file__).parents[1] / "data" / "takeover-model.msgpack"


class PurchaseScorer(Protocol):
    """What decides a suspected purchase: a :class:`~operators.apps.risk_model.RiskModel`
    (or anything that scores a feature row and says the score an alert needs)."""

    @property
    def version(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    def score_one(self, row: Sequence[float]) -> float: ...


def load_takeover_model(path: str | Path | None = None) -> RiskModel:
    """The takeover score in ``path``, or the shipped one (read once per process)."""
    return _load_takeover(str(path or SHIPPED_TAKEOVER_MODEL))


def takeover_scorer(params: RiskParams, path: str | Path | None = None) -> RiskModel | None:
    """What decides a suspected takeover's purchases under ``params``: the takeover score in
    ``path`` (default: the shipped one), or ``None`` (the ratio thresholds) when
    ``params.ato_learned`` is off."""
    return load_takeover_model(path) if params.ato_learned else None


@lru_cache(maxsize=4)
def _load_takeover(path: str) -> RiskModel:
    return load_model(path, TAKEOVER_FEATURES)


def takeover_features(
    state: RiskState,
    event: Event,
    amount: float,
    new_category: bool,
    ratio: float,
    params: RiskParams,
) -> tuple[float, ...]:
    """:data:`TAKEOVER_FEATURES` of a purchase from the open suspicion's origin, after its
    device and IP were remembered and before the purchase is learned."""
    suspect = state.suspect
    assert suspect is not None
    t = event.ts_ms
    device = state.devices.get(event.device_id) if event.device_id is not None else None
    ip = state.ips.get(event.ip) if event.ip is not None else None
    largest = state.amount.largest(t, params)
    item = None if event.item_id is None else item_key(event.item_id)
    return (
        *user_features(state.spend, t, amount),
        float(suspect.new_device),
        min((t - suspect.ts_ms) / MINUTE_MS, 24 * 60.0),
        min((t - device.first_ms) / DAY_MS, 60.0) if device is not None else 0.0,
        math.log1p(device.count) if device is not None else 0.0,
        math.log1p(ip.count) if ip is not None else 0.0,
        float(len(state.devices)),
        math.log1p(state.known_logins),
        float(len(state.amount.amounts)),
        ratio,
        amount / largest if largest > 0 else 0.0,
        float(new_category),
        float(_blind(state, item)),
    )


def _from_suspect(state: RiskState, event: Event) -> bool:
    """Whether the event comes from the origin of the open takeover suspicion: its IP, or
    its device when that device is new to the user."""
    suspect = state.suspect
    return suspect is not None and (
        event.ip == suspect.ip or (event.device_id == suspect.device_id and suspect.new_device)
    )


def _takeover(
    state: RiskState,
    event: Event,
    amount: float | None,
    new_category: bool,
    params: RiskParams,
    scorer: PurchaseScorer | None,
) -> tuple[_Finding | None, bool]:
    """Score and learn the event's device and IP; (finding, event is in the suspect session).

    A new device with a new IP opens a suspicion; so does a login from a new IP on a known
    device (a copied fingerprint, a shared tablet), but that one hides no other kind until
    it escalates: phones change addresses all the time. A purchase from the suspected
    origin escalates when ``scorer`` scores it at its threshold or more; without one, when
    it is far above the user's median (further for a known device, further still in a
    category they know).
    """
    t = event.ts_ms
    suspect = state.suspect
    if suspect is not None and max(state.last_ms, t) - suspect.ts_ms > params.ato_window_ms:
        state.suspect = suspect = None
    device, ip = event.device_id, event.ip
    if device is not None and ip is not None:
        new_device = device not in state.devices
        # A newer suspicion replaces a known device's that found nothing yet.
        weak = suspect is not None and not suspect.new_device and not suspect.unusual
        if ip not in state.ips and state.known_logins >= params.ato_grace_logins:
            if (
                (suspect is None or weak)
                and new_device
                and t - state.last_new_device_ms >= params.ato_quiet_ms
            ):
                state.suspect = suspect = Suspect(event.event_id, t, device, ip)
            elif (
                (suspect is None or weak)
                and not new_device
                and event.type == "login"
                and len(state.amount.amounts) >= params.ato_new_ip_history
                and t - state.known_device_alert_ms >= params.ato_known_device_repeat_ms
            ):
                state.suspect = suspect = Suspect(event.event_id, t, device, ip, new_device=False)
        if new_device:
            state.last_new_device_ms = max(state.last_new_device_ms, t)
        elif event.type == "login":
            state.known_logins += 1
        _remember(state.devices, device, t, params.max_devices)
        _remember(state.ips, ip, t, params.max_ips)
    if not _from_suspect(state, event):
        return None, False
    assert suspect is not None
    raised = event.event_id == suspect.event_id  # the new origin itself is evidence
    learned = None
    if event.type == "purchase" and amount is not None:
        unusual, ratio = _unusual(state, amount, params)
        if scorer is not None:
            row = takeover_features(state, event, amount, new_category, ratio, params)
            learned = scorer.score_one(row)
            escalate = learned >= scorer.threshold
        else:
            escalate = unusual and (
                suspect.new_device
                or (new_category and ratio >= params.ato_known_device_ratio)
                or ratio >= params.ato_known_device_any_ratio
            )
        if escalate:
            suspect.unusual += 1
            raised = True
            suspect.top_amount = max(suspect.top_amount, amount)
            suspect.top_ratio = max(suspect.top_ratio, ratio)
            _push(suspect.cited, event.event_id, params.max_cited - 1)
    score = 1.0 - 0.5 ** (1 + suspect.unusual)
    if score < params.ato_min_score:
        return None, suspect.new_device
    if not raised:
        # Only new evidence triggers: the intruder's (or the owner's) later browsing from
        # the origin would re-open the episode after a quiet spell, a second alert for one
        # suspicion.
        return None, True
    if not suspect.new_device:
        state.known_device_alert_ms = max(state.known_device_alert_ms, t)
    evidence: Evidence = {
        "device_id": suspect.device_id,
        "ip": suspect.ip,
        "new_device": int(suspect.new_device),
        "known_devices": len(state.devices) - 1,
        "known_logins": state.known_logins,
        "unusual_purchases": suspect.unusual,
        "top_amount": round(suspect.top_amount, 2),
        "top_ratio": round(suspect.top_ratio, 2),
        "minutes_since_new_device": round((t - suspect.ts_ms) / MINUTE_MS, 1),
    }
    if learned is not None and scorer is not None:
        evidence["takeover_score"] = round(learned, 4)
        evidence["takeover_model"] = scorer.version
    cited = [suspect.event_id, *suspect.cited]
    if cited[-1] != event.event_id:
        cited.append(event.event_id)
    return _Finding("account_takeover", score, cited, evidence), True


def _amount_anomaly(
    state: RiskState,
    event: Event,
    amount: float,
    blind: bool,
    straight: bool,
    opens: bool,
    idle_ms: int,
    params: RiskParams,
) -> _Finding | None:
    """An outlier among the user's own amounts (scored before it is learned): bought
    ``blind`` in a purchase that ``opens`` a visit (or ``idle_ms`` after the user's latest
    event), or browsed first but ``straight`` (the only item the session looked at) for a
    user with a longer history."""
    if amount < params.amount_min:
        return None
    if blind and not (opens or idle_ms >= params.amount_idle_ms):
        return None
    if not blind and not (straight and len(state.amount.amounts) >= params.amount_browsed_history):
        return None
    score = state.amount.score_one(amount, event.ts_ms, params)
    if score is None or score.excess < 1.0:
        return None
    evidence: Evidence = {
        "amount": round(amount, 2),
        "median": round(score.median, 2),
        "mad_log": round(score.mad_log, 4),
        "max": round(score.largest, 2),
        "z": round(score.z, 2),
        "history": score.history,
        "blind": int(blind),
        "straight": int(straight),
        "new_session": int(opens),
        "idle_min": round(idle_ms / MINUTE_MS, 1),
    }
    return _Finding("amount_anomaly", score.excess / (score.excess + 1), [event.event_id], evidence)


def _burst(
    kind: str,
    ring: list[tuple[int, str]] | list[tuple[int, str, float]],
    count: int,
    window_ms: int,
    max_cited: int,
) -> _Finding | None:
    """A finding when the ring's last ``count`` events span at most ``window_ms``."""
    if len(ring) < count:
        return None
    span = _spread([entry[0] for entry in ring])
    if span > window_ms:
        return None
    evidence: Evidence = {"count": count, "span_s": round(span / SECOND_MS, 1)}
    if len(ring[0]) == 3:
        evidence["total"] = round(sum(entry[2] for entry in ring), 2)
    cited = [entry[1] for entry in ring[-max_cited:]]
    return _Finding(kind, _rate_score(span, window_ms), cited, evidence)


def _decayed_counts(state: RiskState, t: int, params: RiskParams) -> None:
    if t > state.refund_anchor_ms:
        factor = 0.5 ** ((t - state.refund_anchor_ms) / params.refund_half_life_ms)
        state.purchase_weight *= factor
        state.refund_weight *= factor
        state.refund_anchor_ms = t


def _bot(state: RiskState, event: Event, params: RiskParams) -> _Finding | None:
    """``bot_count`` browsing events within ``bot_window_ms``, or ``bot_run_count`` in a row
    without a pause of ``bot_run_gap_ms`` (no person browses that long without stopping)."""
    t = event.ts_ms
    _push(state.browse_ms, t, params.bot_count)
    _push(state.browse_ids, event.event_id, params.max_cited)
    state.bot_run = state.bot_run + 1 if abs(t - state.bot_run_ms) <= params.bot_run_gap_ms else 1
    state.bot_run_ms = max(state.bot_run_ms, t)
    times = state.browse_ms
    if len(times) < params.bot_count:
        return None
    span = _spread(times)
    fast = span <= params.bot_window_ms
    if not fast and state.bot_run < params.bot_run_count:
        return None
    ordered = sorted(times)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    mean = sum(gaps) / len(gaps)
    cv = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps)) / mean if mean else 0.0
    evidence: Evidence = {
        "count": len(times),
        "span_s": round(span / SECOND_MS, 1),
        "rate_per_s": round((len(times) - 1) * SECOND_MS / max(span, 1), 2),
        "gap_cv": round(cv, 3),
        "run": state.bot_run,
    }
    if fast:
        score = _rate_score(span, params.bot_window_ms)
    else:
        score = state.bot_run / (state.bot_run + params.bot_run_count)
    return _Finding("bot", score, list(state.browse_ids), evidence)


def _new_category(state: RiskState, event: Event, params: RiskParams) -> bool:
    """Whether the event's category is new to the user (first seen within
    ``category_new_ms``, this event included); remembers it, forgetting the least recent."""
    assert event.category is not None
    key, t = zlib.crc32(event.category.encode()), event.ts_ms // MINUTE_MS  # minutes: compact
    known = state.categories
    for n, (other, first, last) in enumerate(known):
        if other == key:
            known[n] = (key, min(first, t), max(last, t))
            return (t - first) * MINUTE_MS < params.category_new_ms
    if len(known) >= params.category_memory:
        known.remove(min(known, key=lambda entry: entry[2]))
    known.append((key, t, t))
    return True


def _episode_open(state: RiskState, kind: str, t: int, params: RiskParams) -> bool:
    episode = state.episodes.get(kind)
    return episode is not None and t - episode[1] <= params.episode_quiet_ms


def _fire(
    state: RiskState, finding: _Finding, event: Event, params: RiskParams, alerts: list[Alert]
) -> None:
    """Open an episode and alert, or extend the open one silently."""
    t = event.ts_ms
    episode = state.episodes.get(finding.kind)
    if episode is not None and t - episode[1] <= params.episode_quiet_ms:
        state.episodes[finding.kind] = (episode[0], max(episode[1], t))
        return
    state.episodes[finding.kind] = (t, t)
    alerts.append(
        Alert(
            alert_id=alert_id(event.user_id, finding.kind, event.event_id),
            user_id=event.user_id,
            kind=finding.kind,
            score=round(finding.score, 4),
            event_ids=tuple(finding.event_ids[-params.max_cited :]),
            event_time_ms=t,
            evidence=finding.evidence,
            model_version=params.model_version,
        )
    )


def assess(
    state: RiskState | None,
    event: Event,
    params: RiskParams,
    takeover: PurchaseScorer | None = None,
) -> tuple[RiskState, list[Alert]]:
    """Fold one event of a user into their risk state (in place); return the alerts it raises.

    Call it for every applied event of the user, in arrival order (duplicates already
    dropped). ``delete_user`` forgets everything. Each detector scores the event against
    what it knew before (``score_one``), then learns it (``learn_one``). ``takeover``
    decides the purchases of a suspected takeover (see :func:`takeover_scorer`); without
    it the ratio thresholds do.
    """
    if event.type == "delete_user":
        return RiskState(), []
    state = RiskState() if state is None else state
    t = event.ts_ms
    idle_ms = t - state.last_ms  # since the user's latest event
    session = 0 if event.session_id is None else zlib.crc32(event.session_id.encode())
    opens = session != 0 and session != state.session  # the first event of its session
    state.session = session
    if opens:
        state.session_items.clear()
    new_category = event.category is not None and _new_category(state, event, params)
    kind = event.type
    amount = _amount(event) if kind in ("purchase", "refund") else None
    findings: list[_Finding] = []

    suspected, in_suspect = _takeover(state, event, amount, new_category, params, takeover)
    if suspected is not None:
        findings.append(suspected)
    if kind in BROWSE_TYPES:
        _browsed(state, kind, event.item_id, params)
        bot = _bot(state, event, params)
        if bot is not None:
            findings.append(bot)
    elif kind == "login":
        _push(state.logins, (t, event.event_id), params.login_burst_count)
        found = _burst(
            "login_burst",
            state.logins,
            params.login_burst_count,
            params.login_burst_window_ms,
            params.max_cited,
        )
        if found is not None:
            findings.append(found)
    elif kind == "remove_from_cart" and event.item_id is not None:
        key = item_key(event.item_id)
        if key in state.cart:
            state.cart.remove(key)
    elif kind == "purchase":
        _decayed_counts(state, t, params)
        state.purchase_weight += 1.0
        bought = None if event.item_id is None else item_key(event.item_id)
        blind = _blind(state, bought)
        # Possible card tests: counted by their detector, kept out of the amount history.
        testing = blind and amount is not None and amount <= params.card_test_amount
        card = None
        if testing:
            _push(state.small_purchases, (t, event.event_id, amount), params.card_count)
            card = _burst(
                "card_testing",
                state.small_purchases,
                params.card_count,
                params.card_window_ms,
                params.max_cited,
            )
            if card is not None:
                findings.append(card)
        if bought in state.cart:
            state.cart.remove(bought)
        if bought is not None and bought not in state.bought:
            _push(state.bought, bought, params.item_memory)
        burst = None
        if blind:
            ring = state.purchases
            _push(ring, (t, event.event_id, amount or 0.0), params.purchase_burst_count)
            burst = _burst(
                "purchase_burst",
                ring,
                params.purchase_burst_count,
                params.purchase_burst_window_ms,
                params.max_cited,
            )
        card_episode = card is not None or _episode_open(state, "card_testing", t, params)
        if burst is not None and not in_suspect and not card_episode:
            findings.append(burst)
        # Samples and coupons (and possible card tests) stay out of the amount history.
        if amount is not None and amount > params.card_small_amount and not testing:
            outlier = None
            if not in_suspect:
                # Browsed first, but nothing else this session: straight to the item.
                straight = session != 0 and state.session_items == [bought]
                outlier = _amount_anomaly(
                    state, event, amount, blind, straight, opens, idle_ms, params
                )
            if outlier is not None:
                findings.append(outlier)
            # What a suspected intruder spends is not the owner's habit: learnt, it would
            # make their next purchase look usual (the median doubled within three buys).
            if not _from_suspect(state, event):
                state.amount.learn_one(amount, t, params)
    elif kind == "refund":
        _decayed_counts(state, t, params)
        state.refund_weight += 1.0
        _push(state.refunds, (t, event.event_id, amount or 0.0), params.refund_count)
        if event.item_id is not None and item_key(event.item_id) not in state.bought:
            _push(state.unbought_refunds, t, params.refund_count)
        found = _burst(
            "refund_abuse",
            state.refunds,
            params.refund_count,
            params.refund_window_ms,
            params.max_cited,
        )
        ratio = state.refund_weight / max(state.purchase_weight, 1.0)
        since = state.refunds[0][0]
        unbought = sum(ts >= since for ts in state.unbought_refunds)
        sure = unbought > 0 or ratio >= params.refund_sure_ratio
        if found is not None and ratio >= params.refund_min_ratio and sure:
            found.evidence["refund_ratio"] = round(ratio, 3)
            found.evidence["unbought"] = unbought
            findings.append(found)

    alerts: list[Alert] = []
    for finding in findings:
        _fire(state, finding, event, params, alerts)
    state.last_ms = max(state.last_ms, t)
    state.version += 1
    if state.episodes:
        quiet = state.last_ms - params.episode_quiet_ms
        for gone in [k for k, (_, last) in state.episodes.items() if last < quiet]:
            del state.episodes[gone]
    return state, alerts


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(RiskState)


def encode_state(state: RiskState) -> bytes:
    """The state as MessagePack bytes (it rests inside the user's state)."""
    return _state_encoder.encode(state)


def decode_state(data: bytes) -> RiskState:
    """Inverse of :func:`encode_state`."""
    return _state_decoder.decode(data)
