"""The simulated shop: its catalog and categories, users and their habits, and the seeded
draws everything comes from."""

from __future__ import annotations

import bisect
import csv
import io
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from importlib import resources
from typing import Any, Final, Literal

import numpy as np

from operators.ingest.units import DAY_MS

Lang = Literal["en", "zh"]

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
CHANNELS: Final = ("web", "app", "mini_program")
_CHANNEL_CDF: Final[dict[Lang, tuple[float, ...]]] = {"en": (0.55, 1.0, 1.0),
                                                      "zh": (0.15, 0.6, 1.0)}  # fmt: skip
# Sessions start by local hour of day: quiet at night, busiest in the evening.
_HOUR_WEIGHTS: Final = (3, 2, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6, 6, 5, 5, 5, 6, 7, 8, 9, 9, 7, 5)
_TZ_HOURS: Final[dict[Lang, int]] = {"en": 0, "zh": 8}
_CHINA_TZ: Final = timezone(timedelta(hours=8))
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

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


class Draws:
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


def cdf(weights: Iterable[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _zipf_cdf(n: int, exponent: float) -> list[float]:
    return cdf(1.0 / (rank + 1) ** exponent for rank in range(n))


def build_catalog(n_items: int, rng: np.random.Generator) -> list[CatalogItem]:
    """A catalog of ``n_items`` products over :data:`CATEGORIES`, every category represented.

    Popular categories get more items; prices are log-normal around each category's median.

    >>> items = build_catalog(30, np.random.default_rng(0))
    >>> len(items), len({i.category for i in items}), items[0].item_id
    (30, 25, 'i000000')
    """
    draws = Draws(rng, block=1024)
    category_cdf = cdf(c.popularity for c in CATEGORIES)
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
class User:
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


class World:
    """Everything sessions are drawn from: catalog indexes, users, query pools, reviews."""

    def __init__(
        self,
        catalog: Sequence[CatalogItem],
        n_users: int,
        seed: int,
        draws: Draws,
        messy_span: tuple[int, int] | None = None,
    ) -> None:
        self.catalog = catalog
        self.draws = draws
        self.seed = seed
        # Messy legitimate traffic (anomalies on) draws from its own generator, so the plain
        # stream's draws are untouched when it is off.
        self.messy_span = messy_span
        self.extra = Draws(np.random.default_rng([seed, 3]), block=4096)
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

    def _user(self, n: int) -> User:
        d = self.draws
        lang: Lang = "zh" if d.chance(0.4) else "en"
        weights = [c.popularity * (1.0 if c.lang == lang else 0.2) for c in self.categories]
        favourites = {d.pick(cdf(weights)) for _ in range(1 + d.below(3))}
        # 85% of item activity in the favourite categories, the rest spread by popularity.
        mass = [0.85 / len(favourites) if i in favourites else 0.0 for i in range(len(weights))]
        total = sum(weights)
        favourite_cdf = cdf(m + 0.15 * w / total for m, w in zip(mass, weights, strict=True))
        channel = CHANNELS[d.pick(_CHANNEL_CDF[lang])]
        devices = tuple(f"d{self.seed}-{n}-{k}" for k in range(1 + d.below(2)))
        user = User(f"u{n:06d}", lang, favourite_cdf, channel, devices)
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

    def origin(self, user: User, ts: int) -> tuple[str, str]:
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

    def query(self, user: User, category: int) -> str:
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

    def review(self, user: User, item: int) -> tuple[int, str]:
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


def random_ip(d: Draws) -> str:
    """An IPv4 address as the generator writes them (opaque to the detectors)."""
    first = d.choice((24, 66, 73, 101, 112, 183, 203))
    return f"{first}.{d.below(256)}.{d.below(256)}.{1 + d.below(254)}"
