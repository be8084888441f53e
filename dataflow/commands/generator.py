"""Generate realistic synthetic behaviour events, and the catalog they refer to, as JSON lines.

The demo, the benchmarks and the tests need a stream that stresses the dataflow the way
production does, without shipping anyone's real data:

* Users, items and queries are Zipf-distributed: a few users send a large share of the events,
  a few items get most views and popular queries repeat heavily (which is what makes the
  embedding cache pay off).
* Users act in sessions (login, searches, views and clicks in one category, cart, purchase,
  logout) interleaved in global time order; some review or refund earlier purchases, and a very
  few delete their account and may come back later.
* English and Chinese: users have a language, queries and reviews are written in it (English
  reviews come from the bundled CC0 sample, Chinese ones from templates), and a few timestamps
  are RFC 3339 strings, in UTC or in China's +08:00.
* A small share of bad messages, each labelled with the reason code
  :func:`operators.ingest.events.parse_event` gives it, plus exact re-sends that the profile step
  rejects as ``duplicate_event``.
* Optionally (``anomalies=AnomalyConfig()``, ``generate --anomalies``), labelled fraud and
  abuse for :mod:`operators.apps.risk` to find, on top of legitimate traffic made messier so that
  the detectors meet their false positives: see :class:`AnomalyConfig`.

Everything is drawn from one seeded :class:`numpy.random.Generator`, so a seed is a data set.

>>> events = list(generate_events(1_000, 50, seed=1, malformed_rate=0.02))
>>> len(events), sum(e.expected_reason is not None for e in events)
(1000, 20)
>>> bad = [e for e in events if e.expected_reason not in (None, "duplicate_event")]
>>> all(parse_event(e.line).reason == e.expected_reason for e in bad)
True
"""

from __future__ import annotations

import argparse
import bisect
import csv
import io
import itertools
import math
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import numpy as np

from operators.apps import KINDS as ANOMALY_KINDS
from operators.ingest import DeadLetter, RejectReason, parse_event

Lang = Literal["en", "zh"]

DAY_MS: Final = 86_400_000
#: The generated span ends here by default (a fixed date, so a seed is reproducible forever).
DEFAULT_END_MS: Final = 1_717_200_000_000  # 2024-06-01T00:00:00Z
DEFAULT_SPAN_DAYS: Final = 14
DEFAULT_CATALOG_ITEMS: Final = 2_000
#: About one event in this many is a ``delete_user`` (the GDPR path must be exercised).
DELETE_EVERY: Final = 20_000
#: Share of valid events whose ``ts`` is an RFC 3339 string instead of epoch milliseconds.
RFC3339_RATE: Final = 0.003
#: How far back (in lines) a duplicate re-sends an earlier event: a producer retry is prompt,
#: and the profile step only remembers a user's last ``max_seen_event_ids`` ids.
DUPLICATE_LOOKBACK: Final = 64

USER_ZIPF: Final = 0.8  # the top 1% of users send about a quarter of the events
ITEM_ZIPF: Final = 1.0
QUERY_ZIPF: Final = 1.2


@dataclass(frozen=True)
class CatalogItem:
    """One product; ``lang`` is the language of its title and category name."""

    item_id: str
    title: str
    category: str
    brand: str
    price: float
    lang: Lang


@dataclass(frozen=True)
class GeneratedEvent:
    """One generated message: the JSON line (no newline), whose it is, and why it is bad.

    ``expected_reason`` is ``None`` for a valid event, else the reason code the dataflow will
    dead-letter it with (``duplicate_event`` parses fine; the profile step rejects it).
    ``anomaly`` is the kind of fraud or abuse an injected valid event belongs to (its label).
    """

    line: bytes
    user_id: str
    expected_reason: str | None = None
    anomaly: str | None = None


@dataclass(frozen=True)
class _Category:
    name: str
    lang: Lang
    noun: str  # what a title calls one item
    median_price: float
    brands: tuple[str, ...]
    queries_en: tuple[str, ...]
    queries_zh: tuple[str, ...]
    popularity: float

    def queries(self, lang: Lang) -> tuple[str, ...]:
        return self.queries_en if lang == "en" else self.queries_zh


_CLOTHING_BRANDS = ("Maeve Row", "Sunday Linen", "Juniper Lane", "Harbor & Pine", "Eloise & Co")

# English clothing classes are the `category` values of the bundled review sample, so their
# English reviews can come from the same class.
CATEGORIES: Final[tuple[_Category, ...]] = (
    _Category("Dresses", "en", "Dress", 98, _CLOTHING_BRANDS,
              ("summer dress", "maxi dress", "floral midi dress", "little black dress",
               "wrap dress"), ("连衣裙", "碎花连衣裙 夏", "长裙"), 10),
    _Category("Knits", "en", "Knit Top", 58, _CLOTHING_BRANDS,
              ("knit top", "lightweight sweater top", "cotton knit tee"),
              ("针织衫", "针织上衣 女"), 8),
    _Category("Blouses", "en", "Blouse", 68, _CLOTHING_BRANDS[:4],
              ("silk blouse", "white blouse", "button down shirt women"),
              ("衬衫 女", "雪纺衬衫"), 6),
    _Category("Pants", "en", "Pants", 78, _CLOTHING_BRANDS[1:],
              ("wide leg pants", "linen pants", "work trousers women"),
              ("阔腿裤", "休闲裤 女"), 4),
    _Category("Jeans", "en", "Jeans", 88, ("Indigo Union", "Maeve Row", "Rivet & Co"),
              ("skinny jeans", "high waisted jeans", "boyfriend jeans"),
              ("牛仔裤", "高腰牛仔裤"), 4),
    _Category("Sweaters", "en", "Sweater", 110, _CLOTHING_BRANDS[::2],
              ("cashmere sweater", "cardigan", "oversized sweater"),
              ("毛衣", "羊绒衫", "开衫"), 4),
    _Category("Skirts", "en", "Skirt", 72, _CLOTHING_BRANDS[:3],
              ("pleated skirt", "denim skirt", "midi skirt"), ("半身裙", "百褶裙"), 3),
    _Category("Jackets", "en", "Jacket", 138, ("Harbor & Pine", "Northfield", "Rivet & Co"),
              ("denim jacket", "rain jacket", "leather jacket women"),
              ("夹克", "外套 女 春秋"), 3),
    _Category("Headphones", "en", "Headphones", 129,
              ("Sonance", "Auralis", "Beatline", "Northwave"),
              ("wireless earbuds", "noise cancelling headphones", "bluetooth headphones",
               "over ear headphones", "earbuds for running"),
              ("蓝牙耳机 降噪", "头戴式耳机", "无线耳机"), 8),
    _Category("Smartphones", "en", "Smartphone", 699, ("Pixelon", "Nova Mobile", "Orbit", "Apex"),
              ("smartphone", "android phone", "5g phone unlocked", "phone with best camera"),
              ("智能手机", "5G手机"), 7),
    _Category("Laptops", "en", "Laptop", 1099, ("Voltbook", "Lumen", "Northwave", "Kestrel"),
              ("laptop", "gaming laptop", "ultrabook 16gb ram", "laptop for students"),
              ("笔记本电脑", "轻薄本"), 5),
    _Category("Smartwatches", "en", "Smartwatch", 249, ("Pulse", "Orbit", "Kestrel"),
              ("smartwatch", "fitness tracker", "smart watch heart rate"),
              ("智能手表", "运动手环"), 4),
    _Category("Cookware", "en", "Nonstick Pan", 59, ("Hearth & Co", "Copperline", "Ironwood"),
              ("nonstick pan", "cast iron skillet", "cookware set"), ("不粘锅", "炒锅"), 4),
    _Category("Bedding", "en", "Duvet Cover", 79, ("Slumberly", "Linen House", "Cloudnest"),
              ("duvet cover queen", "linen sheets", "weighted blanket"),
              ("四件套", "被套", "床单 纯棉"), 3),
    _Category("Skincare", "en", "Moisturizer", 32, ("Glowbar", "Dermavera", "Pure Petal"),
              ("moisturizer for dry skin", "vitamin c serum", "sunscreen spf 50",
               "retinol cream"), ("面霜 保湿", "精华液", "防晒霜"), 5),
    _Category("Makeup", "en", "Lipstick", 24, ("Velvetine", "Rouge Atelier", "Glowbar"),
              ("matte lipstick", "foundation", "waterproof mascara"), ("口红", "粉底液"), 4),
    _Category("Running Shoes", "en", "Running Shoes", 119, ("Stride", "Aerorun", "Peakline"),
              ("running shoes", "trail running shoes", "running shoes women"),
              ("跑步鞋", "跑鞋 缓震"), 4),
    _Category("手机", "zh", "手机", 2999, ("华为", "小米", "OPPO", "vivo", "荣耀"),
              ("xiaomi phone", "huawei phone"),
              ("手机", "华为手机", "小米手机 新款", "拍照手机", "5G手机 大电池"), 8),
    _Category("耳机", "zh", "蓝牙耳机", 199, ("漫步者", "小米", "华为", "QCY"),
              ("earphones", "budget earbuds"),
              ("蓝牙耳机 降噪", "无线耳机", "耳机", "运动耳机 防水", "降噪耳机"), 7),
    _Category("零食", "zh", "零食大礼包", 59, ("三只松鼠", "良品铺子", "百草味", "卫龙"),
              ("chinese snacks", "spicy snacks"),
              ("零食大礼包", "坚果", "辣条", "牛肉干", "休闲零食"), 8),
    _Category("护肤品", "zh", "护肤套装", 299, ("百雀羚", "珀莱雅", "自然堂", "薇诺娜"),
              ("skincare set", "chinese skincare"),
              ("护肤品套装", "补水保湿", "面霜", "敏感肌 修护"), 6),
    _Category("图书", "zh", "畅销书", 45,
              ("人民文学出版社", "中信出版社", "商务印书馆", "三联书店"),
              ("chinese novels", "books"),
              ("小说", "三体", "历史书籍", "儿童绘本", "考研资料"), 5),
    _Category("运动鞋", "zh", "运动鞋", 399, ("李宁", "安踏", "特步", "361度"),
              ("sneakers", "basketball shoes"), ("运动鞋 男", "跑步鞋", "篮球鞋", "板鞋 女"), 6),
    _Category("茶叶", "zh", "茶叶", 168, ("天福茗茶", "八马", "大益"),
              ("green tea", "oolong tea"), ("茶叶", "龙井", "普洱茶", "铁观音 礼盒"), 3),
    _Category("收纳用品", "zh", "收纳盒", 39, ("天马", "禧天龙", "百露"),
              ("storage boxes", "closet organizer"), ("收纳盒", "衣柜收纳", "桌面收纳"), 3),
)  # fmt: skip

_ADJECTIVES: Final[dict[Lang, tuple[str, ...]]] = {
    "en": ("Classic", "Everyday", "Premium", "Lightweight", "Slim", "Essential", "Pro", "Soft",
           "Vintage", "Modern"),
    "zh": ("新款", "经典", "轻薄", "加厚", "旗舰", "便携", "网红", "高端", "简约", "升级版"),
}  # fmt: skip
# Appended to a query now and then: the long tail of distinct queries behind the popular ones.
_QUERY_MODIFIERS: Final[dict[Lang, tuple[str, ...]]] = {
    "en": ("cheap", "sale", "2024", "for women", "for men", "best", "black", "gift"),
    "zh": ("便宜", "2024新款", "正品", "包邮", "女款", "男款", "黑色", "送礼"),
}
# Chinese reviews by rating band; only the noun is filled in, never the brand.
_ZH_REVIEWS: Final[dict[str, tuple[str, ...]]] = {
    "positive": (
        "质量很好，和描述一致，物流也很快，会回购。",
        "{noun}很好用，性价比高，推荐！",
        "包装完好，{noun}做工精致，五星好评。",
        "用了一周，效果不错，{noun}比想象中好。",
        "第二次购买了，一如既往的好。",
        "颜值高，手感好，家人都说喜欢。",
    ),
    "neutral": (
        "{noun}还可以，就是价格有点贵。",
        "一般般，和图片有点色差。",
        "中规中矩，物流有点慢。",
    ),
    "negative": (
        "质量太差了，和图片严重不符，已申请退货。",
        "{noun}用了两天就坏了，客服也不理人。",
        "物流太慢，包装破损，非常失望。",
        "做工粗糙，有异味，不推荐购买。",
    ),
}
_ZH_RATING_CDF: Final = (0.03, 0.10, 0.22, 0.43, 1.0)  # like the English sample's ratings
_CHANNELS: Final = ("web", "app", "mini_program")
_CHANNEL_CDF: Final[dict[Lang, tuple[float, ...]]] = {"en": (0.55, 1.0, 1.0),
                                                      "zh": (0.15, 0.6, 1.0)}  # fmt: skip
# Sessions start by local hour of day: quiet at night, busiest in the evening.
_HOUR_WEIGHTS: Final = (3, 2, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6, 6, 5, 5, 5, 6, 7, 8, 9, 9, 7, 5)
_TZ_HOURS: Final[dict[Lang, int]] = {"en": 0, "zh": 8}
_CHINA_TZ: Final = timezone(timedelta(hours=8))
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# What a user does next, given what they just did (the middle of a session).
_NEXT: Final[dict[str, tuple[tuple[str, float], ...]]] = {
    "start": (("search", 0.45), ("view", 0.45), ("ad_click", 0.05), ("click", 0.05)),
    "search": (("click", 0.6), ("view", 0.2), ("search", 0.2)),
    "click": (("view", 0.75), ("add_to_cart", 0.1), ("search", 0.1), ("favorite", 0.05)),
    "view": (("view", 0.33), ("click", 0.2), ("add_to_cart", 0.13), ("favorite", 0.06),
             ("share", 0.03), ("search", 0.13), ("ad_click", 0.04), ("purchase", 0.04),
             ("remove_from_cart", 0.04)),
    "add_to_cart": (("purchase", 0.35), ("view", 0.35), ("remove_from_cart", 0.08),
                    ("search", 0.12), ("add_to_cart", 0.1)),
    "remove_from_cart": (("view", 0.6), ("search", 0.3), ("purchase", 0.1)),
    "purchase": (("view", 0.45), ("search", 0.35), ("share", 0.1), ("favorite", 0.1)),
    "favorite": (("view", 0.5), ("add_to_cart", 0.3), ("search", 0.2)),
    "share": (("view", 0.6), ("search", 0.4)),
    "ad_click": (("view", 0.7), ("add_to_cart", 0.15), ("search", 0.15)),
}  # fmt: skip
# Median seconds until the next event, by what was just done.
_GAP_S: Final[dict[str, float]] = {
    "login": 4, "search": 6, "click": 2, "view": 25, "add_to_cart": 15, "remove_from_cart": 8,
    "purchase": 40, "favorite": 6, "share": 20, "ad_click": 5, "review": 60, "refund": 30,
}  # fmt: skip

_BAD_KINDS: Final[tuple[tuple[RejectReason, float], ...]] = (
    (RejectReason.INVALID_JSON, 0.16),
    (RejectReason.NOT_AN_OBJECT, 0.08),
    (RejectReason.MISSING_FIELD, 0.18),
    (RejectReason.UNKNOWN_TYPE, 0.10),
    (RejectReason.INVALID_FIELD, 0.18),
    (RejectReason.BAD_TIMESTAMP, 0.12),
    (RejectReason.DUPLICATE_EVENT, 0.18),
)
_UNKNOWN_TYPES: Final = ("page_view", "checkout", "VIEW", "addToCart", "wishlist", "impression")


class _Draws:
    """Random numbers from a numpy Generator, fetched in blocks.

    The generator makes one decision at a time, and a scalar numpy call per decision would
    dominate its run time; a block of uniforms turned into Python floats is ~20x cheaper.
    """

    def __init__(self, rng: np.random.Generator, block: int = 1 << 15) -> None:
        self.rng = rng
        self.block = block
        self._uniform: list[float] = []
        self._normal: list[float] = []

    def uniform(self) -> float:
        if not self._uniform:
            self._uniform = self.rng.random(self.block).tolist()
        return self._uniform.pop()

    def normal(self) -> float:
        if not self._normal:
            self._normal = self.rng.standard_normal(self.block).tolist()
        return self._normal.pop()

    def below(self, n: int) -> int:
        return min(int(self.uniform() * n), n - 1)

    def chance(self, p: float) -> bool:
        return self.uniform() < p

    def pick(self, cdf: Sequence[float]) -> int:
        """Index drawn with the weights whose running sum is ``cdf``."""
        return min(bisect.bisect_right(cdf, self.uniform() * cdf[-1]), len(cdf) - 1)

    def choice(self, options: Sequence[Any]) -> Any:
        return options[self.below(len(options))]

    def lognormal(self, median: float, sigma: float) -> float:
        return median * math.exp(sigma * self.normal())


def _cdf(weights: Iterable[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _zipf_cdf(n: int, exponent: float) -> list[float]:
    return _cdf(1.0 / (rank + 1) ** exponent for rank in range(n))


def build_catalog(n_items: int, rng: np.random.Generator) -> list[CatalogItem]:
    """A catalog of ``n_items`` products over :data:`CATEGORIES`, every category represented.

    Popular categories get more items; prices are log-normal around each category's median.

    >>> items = build_catalog(30, np.random.default_rng(0))
    >>> len(items), len({i.category for i in items}), items[0].item_id
    (30, 25, 'i000000')
    """
    draws = _Draws(rng, block=1024)
    category_cdf = _cdf(c.popularity for c in CATEGORIES)
    items = []
    for n in range(n_items):
        cat = CATEGORIES[n] if n < len(CATEGORIES) else CATEGORIES[draws.pick(category_cdf)]
        brand = draws.choice(cat.brands)
        adjective = draws.choice(_ADJECTIVES[cat.lang])
        sep = " " if cat.lang == "en" else ""
        price = round(max(draws.lognormal(cat.median_price, 0.45), 0.5), 2)
        title = sep.join((brand, adjective, cat.noun))
        items.append(CatalogItem(f"i{n:06d}", title, cat.name, brand, price, cat.lang))
    return items


@dataclass(frozen=True)
class _EnReview:
    category: str
    rating: int
    text: str


@lru_cache(maxsize=1)
def _english_reviews() -> tuple[_EnReview, ...]:
    """The bundled CC0 review sample (see ``operators/data/README.md``)."""
    source = resources.files("operators") / "data" / "reviews_en_sample.csv"
    reader = csv.DictReader(io.StringIO(source.read_text(encoding="utf-8"), newline=""))
    rows = [r for r in reader if r["review"].strip() and r["rating"]]
    return tuple(_EnReview(r["category"], int(r["rating"]), r["review"].strip()) for r in rows)


@dataclass
class _Habits:
    """What makes a user's legitimate traffic messy (only with anomalies on).

    Devices[0] is the phone: on the home wifi or the carrier's network, whose address changes;
    the others stay on the home or work line. Some users travel (hotel and roaming addresses
    on known devices), get a new phone mid-span, return much of what they buy, hunt
    bargains (purchases under $5) or browse fast.
    """

    home_ip: str
    work_ip: str | None
    carrier_ips: list[str]
    usual_price: float  # the median price of the user's favourite categories
    returner: bool
    bargain_hunter: bool
    fast: bool
    trip: tuple[int, int] | None  # [start, end) in ms
    new_device: str | None
    new_device_ms: int
    trip_ips: dict[int, str] = field(default_factory=dict)  # day -> hotel address
    to_return: int = 0  # purchases a returner will send back at their next visit


@dataclass
class _User:
    user_id: str
    lang: Lang
    favourite_cdf: list[float]  # over all categories, mass on the favourites
    channel: str
    devices: tuple[str, ...]
    next_free_ms: int = 0
    purchases: list[tuple[int, float, int]] = field(default_factory=list)  # item, price, qty
    cart: list[int] = field(default_factory=list)
    habits: _Habits | None = None


@dataclass(frozen=True)
class _Session:
    start_ms: int
    user: int
    length: int
    deletes: bool


class _World:
    """Everything sessions are drawn from: catalog indexes, users, query pools, reviews."""

    def __init__(
        self,
        catalog: Sequence[CatalogItem],
        n_users: int,
        seed: int,
        draws: _Draws,
        messy_span: tuple[int, int] | None = None,
    ) -> None:
        self.catalog = catalog
        self.draws = draws
        self.seed = seed
        # Messy legitimate traffic (anomalies on) draws from its own generator, so the plain
        # stream's draws are untouched when it is off.
        self.messy_span = messy_span
        self.extra = _Draws(np.random.default_rng([seed, 3]), block=4096)
        by_name = {c.name: c for c in CATEGORIES}
        unknown = {i.category for i in catalog} - by_name.keys()
        if unknown:
            raise ValueError(f"catalog categories not in CATEGORIES: {sorted(unknown)}")
        self.categories = [by_name[name] for name in sorted({i.category for i in catalog})]
        cat_index = {c.name: n for n, c in enumerate(self.categories)}
        self.items_of: list[list[int]] = [[] for _ in self.categories]
        for n, item in enumerate(catalog):
            self.items_of[cat_index[item.category]].append(n)
        for items in self.items_of:  # popularity rank within a category is random
            draws.rng.shuffle(items)
        self.item_cdfs = [_zipf_cdf(len(items), ITEM_ZIPF) for items in self.items_of]
        self.all_items = list(range(len(catalog)))
        draws.rng.shuffle(self.all_items)
        self.all_item_cdf = _zipf_cdf(len(catalog), ITEM_ZIPF)
        self.item_category = [cat_index[item.category] for item in catalog]
        self.query_cdfs = {
            lang: [_zipf_cdf(len(c.queries(lang)), QUERY_ZIPF) for c in self.categories]
            for lang in ("en", "zh")
        }
        self.users = [self._user(n) for n in range(n_users)]
        # Activity rank is random, so user ids say nothing about how busy a user is.
        self.user_rank = list(range(n_users))
        draws.rng.shuffle(self.user_rank)
        self.user_cdf = _zipf_cdf(n_users, USER_ZIPF)
        reviews = _english_reviews()
        self.en_reviews = {
            c.name: [r for r in reviews if r.category == c.name] or list(reviews)
            for c in self.categories
        }

    def _user(self, n: int) -> _User:
        d = self.draws
        lang: Lang = "zh" if d.chance(0.4) else "en"
        weights = [c.popularity * (1.0 if c.lang == lang else 0.2) for c in self.categories]
        favourites = {d.pick(_cdf(weights)) for _ in range(1 + d.below(3))}
        # 85% of item activity in the favourite categories, the rest spread by popularity.
        mass = [0.85 / len(favourites) if i in favourites else 0.0 for i in range(len(weights))]
        total = sum(weights)
        favourite_cdf = _cdf(m + 0.15 * w / total for m, w in zip(mass, weights, strict=True))
        channel = _CHANNELS[d.pick(_CHANNEL_CDF[lang])]
        devices = tuple(f"d{self.seed}-{n}-{k}" for k in range(1 + d.below(2)))
        user = _User(f"u{n:06d}", lang, favourite_cdf, channel, devices)
        if self.messy_span is not None:
            x = self.extra
            user.devices = tuple(f"d{self.seed}-{n}-{k}" for k in range(1 + x.pick((3, 7.5, 10))))
            user.habits = self._habits(n, len(user.devices), favourite_cdf, *self.messy_span)
        return user

    def _habits(
        self, n: int, n_devices: int, favourite_cdf: list[float], start_ms: int, span_ms: int
    ) -> _Habits:
        x = self.extra
        favourites = [self.categories[c] for c in favourite_categories(favourite_cdf)]
        usual = sorted(c.median_price for c in favourites or self.categories)
        trip = None
        if x.chance(0.05):
            begin = start_ms + x.below(span_ms)
            trip = (begin, begin + (2 + x.below(5)) * DAY_MS)
        new_phone = x.chance(0.06)
        return _Habits(
            home_ip=random_ip(x),
            work_ip=random_ip(x) if x.chance(0.4) else None,
            carrier_ips=[],
            usual_price=usual[len(usual) // 2],
            returner=x.chance(0.06),
            bargain_hunter=x.chance(0.03),
            fast=x.chance(0.08),
            trip=trip,
            new_device=f"d{self.seed}-{n}-{n_devices}" if new_phone else None,
            new_device_ms=start_ms + x.below(span_ms),
        )

    def origin(self, user: _User, ts: int) -> tuple[str, str]:
        """The device and IP of a messy user's session starting at ``ts``."""
        h, x = user.habits, self.extra
        assert h is not None
        devices = user.devices
        if h.new_device is not None and ts >= h.new_device_ms and x.chance(0.6):
            device = h.new_device
        else:
            device = x.choice(devices)
        phone = device in (devices[0], h.new_device)
        if h.trip is not None and h.trip[0] <= ts < h.trip[1]:
            if phone and x.chance(0.5):  # roaming: a new address every session
                return device, random_ip(x)
            return device, h.trip_ips.setdefault(ts // DAY_MS, random_ip(x))  # the hotel
        if x.chance(0.02):  # a cafe, a friend's wifi
            return device, random_ip(x)
        if phone and x.chance(0.45):
            if not h.carrier_ips or x.chance(0.3):
                h.carrier_ips = [*h.carrier_ips[-5:], random_ip(x)]
                return device, h.carrier_ips[-1]
            return device, str(x.choice(h.carrier_ips))
        if h.work_ip is not None and x.chance(0.25):
            return device, h.work_ip
        if x.chance(0.01):  # the provider moved the home line
            h.home_ip = random_ip(x)
        return device, h.home_ip

    def item_in(self, category: int) -> int:
        items = self.items_of[category]
        return items[self.draws.pick(self.item_cdfs[category])]

    def query(self, user: _User, category: int) -> str:
        d = self.draws
        cat = self.categories[category]
        roll = d.uniform()
        if roll < 0.08:  # a brand search
            brand = d.choice(cat.brands)
            return f"{brand} {cat.noun}" if user.lang == "en" else f"{brand}{cat.noun}"
        queries = cat.queries(user.lang)
        text = queries[d.pick(self.query_cdfs[user.lang][category])]
        if roll > 0.88:
            text = f"{text} {d.choice(_QUERY_MODIFIERS[user.lang])}"
        return str(text)

    def review(self, user: _User, item: int) -> tuple[int, str]:
        d = self.draws
        if user.lang == "en":
            category = self.categories[self.item_category[item]].name
            sample: _EnReview = d.choice(self.en_reviews[category])
            return sample.rating, sample.text
        rating = 1 + d.pick(_ZH_RATING_CDF)
        band = "positive" if rating >= 4 else "neutral" if rating == 3 else "negative"
        noun = self.categories[self.item_category[item]].noun
        return rating, str(d.choice(_ZH_REVIEWS[band])).format(noun=noun)


def favourite_categories(favourite_cdf: list[float]) -> list[int]:
    """The indexes of a user's favourite categories (those with a tenth of their activity)."""
    shares = [b - a for a, b in itertools.pairwise([0.0, *favourite_cdf])]
    return [c for c, share in enumerate(shares) if share > 0.1]


def random_ip(d: _Draws) -> str:
    """An IPv4 address as the generator writes them (opaque to the detectors)."""
    first = d.choice((24, 66, 73, 101, 112, 183, 203))
    return f"{first}.{d.below(256)}.{d.below(256)}.{1 + d.below(254)}"


def _sessions(world: _World, n_valid: int, start_ms: int, span_ms: int) -> list[_Session]:
    """Session skeletons whose lengths add up to exactly ``n_valid``, in start order."""
    d = world.draws
    hour_cdf = _cdf(_HOUR_WEIGHTS)
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
        local = d.below(days) * DAY_MS + d.pick(hour_cdf) * 3_600_000 + d.below(3_600_000)
        offset = local - _TZ_HOURS[world.users[user].lang] * 3_600_000
        # Wrap into the span, leaving an hour at its end for the session to play out.
        start = start_ms + offset % max(span_ms - 3_600_000, 1)
        sessions.append((start, user, length))
        total += length
    deletes = set()
    if sessions:
        for _ in range(int(d.rng.binomial(n_valid, 1 / DELETE_EVERY))):
            deletes.add(d.below(len(sessions)))
    sessions.sort()
    return [_Session(s, u, n, k in deletes) for k, (s, u, n) in enumerate(sessions)]


def _rfc3339(ts_ms: int, lang: Lang) -> str:
    moment = _EPOCH + timedelta(milliseconds=ts_ms)
    if lang == "zh":
        return moment.astimezone(_CHINA_TZ).isoformat(timespec="milliseconds")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Writer:
    """Turn one session skeleton into event dicts, keeping each user's cart and purchases."""

    def __init__(self, world: _World) -> None:
        self.world = world
        self.seq = 0
        self.session_seq = 0
        self.next_type = {k: ([t for t, _ in v], _cdf(w for _, w in v)) for k, v in _NEXT.items()}

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
            "channel": user.channel if d.chance(0.85) else d.choice(_CHANNELS),
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

    def _plan(self, s: _Session, user: _User) -> list[str]:
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

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"the anomaly rate must be within [0, 1], got {self.rate}")
        unknown = set(self.kinds) - set(ANOMALY_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"anomaly kinds must be some of {ANOMALY_KINDS}, got {self.kinds}")


def _plan_anomalies(d: _Draws, n_users: int, config: AnomalyConfig) -> list[tuple[str, int]]:
    """(kind, number of events) of each episode to inject."""
    kinds = list(config.kinds)
    first = d.below(len(kinds))
    plan = []
    for n in range(round(config.rate * n_users)):
        kind = kinds[(first + n) % len(kinds)]
        low, high = EPISODE_SIZES[kind]
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


class _Injector:
    """Choose a victim and a time for each planned episode, and write its events."""

    def __init__(
        self,
        world: _World,
        writer: _Writer,
        timeline: Timeline,
        deleted: set[int],
        start_ms: int,
        span_ms: int,
        draws: _Draws,
    ) -> None:
        self.world, self.writer, self.d = world, writer, draws
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
        return user, self._uniform(self.start_ms + 3_600_000, self.end_ms - 8 * 3_600_000)

    def _uniform(self, low: int, high: int) -> int:
        return low + self.d.below(max(high - low, 1))

    def _fits(self, kind: str, user: int, size: int) -> int | None:
        past = self.pasts[user]
        hour = 3_600_000
        if kind == "account_takeover":
            if past.established_ms is None:
                return None
            for _ in range(8):
                at = self._uniform(past.established_ms + hour, self.end_ms - 8 * hour)
                if at > self.end_ms - 8 * hour:
                    return None
                if not any(at - _QUIET_MS < first <= at for first in past.device_first):
                    return at
            return None
        if kind == "amount_anomaly":
            if len(past.purchases) < _PURCHASES:
                return None
            earliest = past.purchases[_PURCHASES - 1][0] + hour
            if earliest >= self.end_ms - hour:
                return None
            return self._uniform(earliest, self.end_ms - hour)
        at = self._uniform(self.start_ms + hour, self.end_ms - 8 * hour)
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
            "channel": channel or self.d.choice(_CHANNELS),
        }

    def _usual_origin(self, user: int, at: int) -> dict[str, str]:
        """The device and IP of the user's last event before ``at`` (or their first device)."""
        past = self.pasts[user]
        k = bisect.bisect_left(past.times, at)
        if k:
            return self._origin(*past.origins[k - 1])
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

    def _gaps(self, at: int, n: int, median_ms: float, sigma: float, least: int) -> list[int]:
        times = [at]
        for _ in range(n - 1):
            times.append(times[-1] + max(round(self.d.lognormal(median_ms, sigma)), least))
        return times

    def _account_takeover(self, user: int, at: int, size: int) -> _Events:
        d = self.d
        origin = self._new_origin("web")
        median, _ = self._median_and_max(user, at)
        n_buys = 1 + (size >= 5) + (size >= 7)
        events = [self._event(user, at, "login", origin)]
        ts = at
        for _ in range(size - 1 - n_buys):
            ts += max(round(d.lognormal(20_000, 0.7)), 1_000)
            events.append(self._event(user, ts, "view", origin, d.choice(self.resellable)[1]))
        ts += min(max(round(d.lognormal(20 * 60_000, 1.0)), 60_000), 4 * 3_600_000)
        for _ in range(n_buys):
            item, price, qty = self._priced(median * (5 + 25 * d.uniform()), self.resellable)
            events.append(
                self._event(user, ts, "purchase", origin, item, price=price, quantity=qty)
            )
            ts += max(round(d.lognormal(4 * 60_000, 0.8)), 20_000)
        return events

    def _amount_anomaly(self, user: int, at: int, size: int) -> _Events:
        median, largest = self._median_and_max(user, at)
        target = max(median * (20 + 80 * self.d.uniform()), 4 * largest)
        item, price, qty = self._priced(target, self.by_price)
        origin = self._usual_origin(user, at)
        return [self._event(user, at, "purchase", origin, item, price=price, quantity=qty)]

    def _card_testing(self, user: int, at: int, size: int) -> _Events:
        d = self.d
        origin = self._new_origin()
        return [
            self._event(
                user,
                ts,
                "purchase",
                origin,
                d.below(len(self.world.catalog)),
                price=round(0.99 + 4 * d.uniform(), 2),
                quantity=1,
            )
            for ts in self._gaps(at, size, 40_000, 0.6, 5_000)
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
        for ts in self._gaps(at, size, 25 * 60_000, 0.7, 60_000):
            if bought and d.chance(0.5):
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
        for ts in self._gaps(at, size, 350, 0.5, 50):
            roll = d.uniform()
            if roll < 0.15:
                queries = w.categories[d.below(len(w.categories))].queries(lang)
                events.append(self._event(user, ts, "search", origin, text=d.choice(queries)))
            else:
                kind = "view" if roll < 0.7 else "click"
                events.append(self._event(user, ts, kind, origin, d.below(len(w.catalog))))
        return events


def _bad_line(reason: RejectReason, base: dict[str, Any], event_id: str, d: _Draws) -> bytes | None:
    """A message ``parse_event`` rejects with ``reason``, derived from the valid ``base``."""
    event = dict(base, event_id=event_id)
    if isinstance(base["ts"], int):  # another event of the session, a moment earlier
        event["ts"] = base["ts"] - d.below(3_000)
    encode = msgspec.json.encode
    if reason is RejectReason.INVALID_JSON:
        text = encode(event).decode()
        variants = (
            lambda: text[: len(text) // 4 + d.below(len(text) * 3 // 4)],  # cut off mid-write
            lambda: repr(event),  # a Python dict printed instead of serialised
            lambda: text + encode(dict(base, event_id=event_id + "x")).decode(),  # no newline
            lambda: "<html><body><h1>502 Bad Gateway</h1></body></html>",
            lambda: text.replace('"ts":', '"ts": NaN, "ts_ms":', 1),
        )
        return str(d.choice(variants)()).encode()
    if reason is RejectReason.NOT_AN_OBJECT:
        shapes = (b"[" + encode(event) + b"]", encode(event["type"]), b"null", encode(event["ts"]))
        return bytes(d.choice(shapes))
    if reason is RejectReason.MISSING_FIELD:
        required = {"refund": "price", "search": "text", "review": "text"}
        name = required.get(event["type"], "item_id" if "item_id" in event else "")
        if name and d.chance(0.6):
            if name == "text" and d.chance(0.5):
                event["text"] = "   "  # blank counts as missing
            else:
                del event[name]
        else:
            del event[d.choice(("event_id", "user_id", "ts", "type"))]
        return encode(event)
    if reason is RejectReason.UNKNOWN_TYPE:
        event["type"] = d.choice(_UNKNOWN_TYPES)
        return encode(event)
    if reason is RejectReason.INVALID_FIELD:
        options: list[tuple[str, Any]] = [("user_id", ""), ("event_id", "")]
        if "price" in event:
            options += [("price", -event["price"]), ("price", "NaN"), ("quantity", 0)]
        if "rating" in event:
            options += [("rating", 7), ("rating", 0)]
        if "text" in event:
            options += [("text", (event["text"] + " ") * (2001 // (len(event["text"]) + 1) + 1))]
        if "item_id" in event:
            options += [("item_id", "")]
        name, value = d.choice(options)
        event[name] = value
        return encode(event)
    if reason is RejectReason.BAD_TIMESTAMP:
        ms = event["ts"]
        if not isinstance(ms, int):
            return None
        moment = _EPOCH + timedelta(milliseconds=ms)
        stamps = (
            ms // 1000,  # seconds sent as milliseconds
            ms * 1000,  # microseconds
            ms + 0.5,
            moment.strftime("%Y-%m-%d %H:%M:%S"),  # no time zone
            moment.strftime("%m/%d/%Y %H:%M"),
            0,
        )
        event["ts"] = d.choice(stamps)
        return encode(event)
    return None


def generate_events(
    n_events: int,
    n_users: int,
    *,
    seed: int = 0,
    malformed_rate: float = 0.01,
    catalog: Sequence[CatalogItem] | None = None,
    start_ms: int = DEFAULT_END_MS - DEFAULT_SPAN_DAYS * DAY_MS,
    span_days: float = DEFAULT_SPAN_DAYS,
    anomalies: AnomalyConfig | None = None,
    stats: dict[str, int] | None = None,
) -> Iterator[GeneratedEvent]:
    """Yield exactly ``n_events`` JSON lines in event-time order, ``malformed_rate`` of them bad.

    ``catalog=None`` uses ``build_catalog(DEFAULT_CATALOG_ITEMS, np.random.default_rng(seed))``,
    so passing that catalog explicitly gives the same events. A duplicate re-sends one of the
    last :data:`DUPLICATE_LOOKBACK` valid events, of a user who is never deleted.

    ``anomalies`` injects labelled episodes of fraud and abuse (see :class:`AnomalyConfig`);
    ``stats``, if given, receives ``episodes`` and ``short_history`` (episodes whose victim
    lacks the history its detector needs) once the stream is planned.

    >>> events = list(generate_events(20_000, 400, seed=1, anomalies=AnomalyConfig(0.05)))
    >>> len(events), len({(e.anomaly, e.user_id) for e in events if e.anomaly})  # 5% of users
    (20000, 20)
    """
    if n_events < 0 or n_users < 1:
        raise ValueError(f"need n_events >= 0 and n_users >= 1, got {n_events} and {n_users}")
    if not 0.0 <= malformed_rate <= 1.0:
        raise ValueError(f"malformed_rate must be within [0, 1], got {malformed_rate}")
    if catalog is None:
        catalog = build_catalog(DEFAULT_CATALOG_ITEMS, np.random.default_rng(seed))
    if not catalog:
        raise ValueError("the catalog is empty")
    draws = _Draws(np.random.default_rng([seed, 1]))
    n_bad = round(n_events * malformed_rate)
    n_valid = n_events - n_bad
    span_ms = round(span_days * DAY_MS)
    messy_span = None if anomalies is None else (start_ms, span_ms)
    world = _World(catalog, n_users, seed, draws, messy_span)
    anomaly_draws = _Draws(np.random.default_rng([seed, 2]), block=4096)
    plan = [] if anomalies is None else _plan_anomalies(anomaly_draws, n_users, anomalies)
    n_injected = sum(size for _, size in plan)
    if n_injected > n_valid // 2:
        raise ValueError(
            f"{len(plan)} anomalous episodes need {n_injected} of the {n_valid} valid events: "
            "lower the anomaly rate or generate more events"
        )
    sessions = _sessions(world, n_valid - n_injected, start_ms, span_ms)
    deleted = {s.user for s in sessions if s.deletes}

    writer = _Writer(world)
    timeline = [e for s in sessions for e in writer.session(s)]
    timeline.sort(key=lambda e: e[0])  # stable: a user's events keep their order
    labels: dict[str, str] = {}
    if plan:
        injector = _Injector(world, writer, timeline, deleted, start_ms, span_ms, anomaly_draws)
        injected, labels = injector.inject(plan)
        timeline += injected
        timeline.sort(key=lambda e: e[0])
        if stats is not None:
            stats["short_history"] = injector.short_history
    if stats is not None:
        stats["episodes"] = len(plan)

    bad_at = set(draws.rng.choice(n_events, size=n_bad, replace=False).tolist()) if n_bad else set()
    bad_cdf = _cdf(w for _, w in _BAD_KINDS)
    # The last valid lines and their user (-1: a user who gets deleted, not to be duplicated).
    recent: deque[tuple[bytes, int]] = deque(maxlen=DUPLICATE_LOOKBACK)
    encoder = msgspec.json.Encoder()
    users = world.users
    valid = iter(timeline)
    pending = next(valid, None)
    last = pending
    for position in range(n_events):
        if position not in bad_at and pending is not None:
            _, user, event = pending
            line = encoder.encode(event)
            recent.append((line, user if user not in deleted else -1))
            yield GeneratedEvent(line, users[user].user_id, None, labels.get(event["event_id"]))
            last = pending
            pending = next(valid, None)
            continue
        yield _malformed(draws, bad_cdf, pending or last, recent, writer, users)


def _malformed(
    d: _Draws,
    bad_cdf: list[float],
    near: tuple[int, int, dict[str, Any]] | None,
    recent: deque[tuple[bytes, int]],
    writer: _Writer,
    users: list[_User],
) -> GeneratedEvent:
    """One bad message based on the valid event ``near`` it (or a re-send from ``recent``)."""
    reason = _BAD_KINDS[d.pick(bad_cdf)][0]
    # Re-send a recent event; never one of a user who gets deleted, whose profile (and memory
    # of event ids) may be gone by the time the re-send arrives.
    candidates = [(line, user) for line, user in recent if user >= 0]
    if reason is RejectReason.DUPLICATE_EVENT and candidates:
        line, user = candidates[d.below(len(candidates))]
        return GeneratedEvent(line, users[user].user_id, reason.value)
    if near is None:  # no valid event at all: nothing to corrupt
        return GeneratedEvent(b"<html></html>", "", RejectReason.INVALID_JSON.value)
    _, user, base = near
    for candidate in (reason, RejectReason.UNKNOWN_TYPE):
        if candidate is RejectReason.DUPLICATE_EVENT:
            continue
        line_or_none = _bad_line(candidate, base, writer.event_id(), d)
        if line_or_none is not None:
            return GeneratedEvent(line_or_none, users[user].user_id, candidate.value)
    raise AssertionError("unknown_type always produces a line")


def write_events(path: str | Path, events: Iterable[GeneratedEvent]) -> int:
    """Write one JSON line per event to ``path``; return how many were written."""
    count = 0
    with Path(path).open("wb") as f:
        for event in events:
            f.write(event.line + b"\n")
            count += 1
    return count


class _EventId(msgspec.Struct):
    event_id: str


def write_labels(path: str | Path, events: Iterable[GeneratedEvent]) -> int:
    """Write ``{"event_id": ..., "kind": ...}`` lines for the anomalous events; return how many."""
    decoder = msgspec.json.Decoder(_EventId)
    encoder = msgspec.json.Encoder()
    count = 0
    with Path(path).open("wb") as f:
        for event in events:
            if event.anomaly is not None:
                event_id = decoder.decode(event.line).event_id
                f.write(encoder.encode({"event_id": event_id, "kind": event.anomaly}) + b"\n")
                count += 1
    return count


def write_catalog(path: str | Path, catalog: Iterable[CatalogItem]) -> int:
    """Write the catalog as JSON lines (one :class:`CatalogItem` object each)."""
    encoder = msgspec.json.Encoder()
    count = 0
    with Path(path).open("wb") as f:
        for item in catalog:
            f.write(encoder.encode(item) + b"\n")
            count += 1
    return count


def read_catalog(path: str | Path) -> list[CatalogItem]:
    """Inverse of :func:`write_catalog`."""
    decoder = msgspec.json.Decoder(CatalogItem)
    with Path(path).open("rb") as f:
        return [decoder.decode(line) for line in f if line.strip()]


@dataclass
class GenerationSummary:
    """What a generated stream contains, for the CLI and the demo to print."""

    lines: int = 0
    users: set[str] = field(default_factory=set)
    valid_by_type: Counter[str] = field(default_factory=Counter)
    malformed_by_reason: Counter[str] = field(default_factory=Counter)
    anomalies_by_kind: Counter[str] = field(default_factory=Counter)  # events
    victims: set[tuple[str, str]] = field(default_factory=set)  # (kind, user)
    stats: dict[str, int] = field(default_factory=dict)  # filled by generate_events

    def add(self, event: GeneratedEvent) -> GeneratedEvent:
        self.lines += 1
        if event.expected_reason is not None:
            self.malformed_by_reason[event.expected_reason] += 1
            return event
        if event.anomaly is not None:
            self.anomalies_by_kind[event.anomaly] += 1
            self.victims.add((event.anomaly, event.user_id))
        self.users.add(event.user_id)
        parsed = parse_event(event.line)
        self.valid_by_type["?" if isinstance(parsed, DeadLetter) else parsed.type] += 1
        return event

    def lines_out(self) -> list[str]:
        bad = sum(self.malformed_by_reason.values())
        out = [f"valid events by type ({self.lines - bad} from {len(self.users)} users):"]
        out += [f"  {name:<18}{count:>9}" for name, count in self.valid_by_type.most_common()]
        out.append(f"malformed by reason ({bad}):")
        out += [f"  {name:<18}{count:>9}" for name, count in self.malformed_by_reason.most_common()]
        if self.anomalies_by_kind:
            episodes, short = self.stats.get("episodes", 0), self.stats.get("short_history", 0)
            out.append(
                f"anomalies by kind ({self.anomalies_by_kind.total()} events, {episodes} "
                f"episodes, {short} on users without the history their detector needs):"
            )
            users = Counter(kind for kind, _ in self.victims)
            out += [
                f"  {name:<18}{count:>9} events {users[name]:>6} users"
                for name, count in sorted(self.anomalies_by_kind.items())
            ]
        return out


def add_command(subparsers: Any) -> None:
    """Register ``profilestream generate``."""
    parser = subparsers.add_parser(
        "generate",
        help="write synthetic behaviour events (JSON lines)",
        description="Write realistic synthetic behaviour events as JSON lines, deterministic "
        "for a seed, including a share of bad messages for the dead-letter path.",
    )
    parser.add_argument("--events", type=int, default=100_000, help="lines to write")
    parser.add_argument("--users", type=int, default=5_000, help="size of the user population")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--malformed-rate", type=float, default=0.01, help="share of bad lines")
    parser.add_argument("--span-days", type=float, default=DEFAULT_SPAN_DAYS,
                        help="event-time span, ending 2024-06-01T00:00:00Z")  # fmt: skip
    parser.add_argument("--catalog-items", type=int, default=DEFAULT_CATALOG_ITEMS)
    parser.add_argument("--out", type=Path, required=True, help="events JSONL file")
    parser.add_argument("--catalog", type=Path, default=None, help="also write the catalog here")
    parser.add_argument("--anomalies", action="store_true",
                        help="inject labelled fraud and abuse episodes (and messier legitimate "
                        "traffic); needs --labels and ~40 events per user")  # fmt: skip
    parser.add_argument("--anomaly-rate", type=float, default=AnomalyConfig.rate,
                        help="share of users given one anomalous episode")  # fmt: skip
    parser.add_argument("--anomaly-kinds", default=",".join(ANOMALY_KINDS),
                        help="comma-separated kinds to inject, in turn")  # fmt: skip
    parser.add_argument("--labels", type=Path, default=None,
                        help="write the anomalous events' ids and kinds (JSONL)")  # fmt: skip
    parser.set_defaults(handler=_generate_command)


def _generate_command(args: argparse.Namespace) -> None:
    if args.catalog_items < 1:
        raise ValueError("--catalog-items must be at least 1")
    if args.anomalies != (args.labels is not None):
        raise ValueError("--anomalies and --labels go together")
    anomalies = None
    if args.anomalies:
        kinds = tuple(k.strip() for k in args.anomaly_kinds.split(",") if k.strip())
        anomalies = AnomalyConfig(args.anomaly_rate, kinds)
    started = time.perf_counter()
    catalog = build_catalog(args.catalog_items, np.random.default_rng(args.seed))
    if args.catalog is not None:
        args.catalog.parent.mkdir(parents=True, exist_ok=True)
        write_catalog(args.catalog, catalog)
    summary = GenerationSummary()
    events = generate_events(
        args.events,
        args.users,
        seed=args.seed,
        malformed_rate=args.malformed_rate,
        catalog=catalog,
        start_ms=DEFAULT_END_MS - round(args.span_days * DAY_MS),
        span_days=args.span_days,
        anomalies=anomalies,
        stats=summary.stats,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    anomalous: list[GeneratedEvent] = []

    def tally(event: GeneratedEvent) -> GeneratedEvent:
        if event.anomaly is not None:
            anomalous.append(event)
        return summary.add(event)

    count = write_events(args.out, (tally(e) for e in events))
    seconds = time.perf_counter() - started
    print(f"wrote {count} events to {args.out} in {seconds:.1f} s (seed {args.seed})")
    if args.labels is not None:
        args.labels.parent.mkdir(parents=True, exist_ok=True)
        print(f"wrote {write_labels(args.labels, anomalous)} anomaly labels to {args.labels}")
    if args.catalog is not None:
        print(f"wrote {len(catalog)} catalog items to {args.catalog}")
    print("\n".join(summary.lines_out()))
