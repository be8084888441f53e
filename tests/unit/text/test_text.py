"""Normalisation, Chinese and English tokenisation, stop words and keyword ranking."""

from __future__ import annotations

import pytest

from operators.text import IdfTable, extract_keywords, idf_from_corpus, normalize_text, tokenize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ＡＢＣ１２３", "abc123"),  # full-width letters and digits from a Chinese IME
        ("质量很好！！", "质量很好!!"),  # full-width punctuation folds, and is kept
        ("\ufeff好评", "好评"),  # the stray byte-order mark of real CSV exports
        ("Love it 😍👍🏻 !", "love it !"),  # emoji and skin-tone modifiers go
        ("a\u3000b\t\nc  d", "a b c d"),  # ideographic space, tabs and newlines collapse
        ("zero\u200bwidth\x00", "zero width"),  # format and control characters
        ("", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("物流很快，手机很好用", ["物流", "很快", "手机", "很", "好", "用"]),
        ("苹果手机壳iPhone15", ["苹果", "手机", "壳", "iphone15"]),
        ("Doesn't fit, too SMALL!", ["doesn't", "fit", "too", "small"]),
        ("4K TV, 55-inch", ["4k", "tv", "55", "inch"]),
        ("!!! ... ？？", []),
    ],
)
def test_tokenize_chinese_english_and_mixed(text: str, words: list[str]) -> None:
    assert tokenize(text) == words


def test_stop_words_drop_function_words_but_keep_negations() -> None:
    assert tokenize("这个手机的电池不好 and it is not good", drop_stop_words=True) == [
        "手机",
        "电池",
        "不好",
        "not",
        "good",
    ]


def test_keywords_rank_rare_words_over_common_ones() -> None:
    table = idf_from_corpus(["red dress", "red shoes", "red bag", "silk dress"], min_df=1)
    words = [w for w, _ in extract_keywords("red silk dress", top_k=3, idf=table)]
    assert words == ["silk", "dress", "red"]


def test_keyword_weights_sum_to_one_and_respect_top_k() -> None:
    keywords = extract_keywords("降噪蓝牙耳机，续航时间长，音质清晰，佩戴舒适", top_k=4)
    assert len(keywords) == 4
    assert sum(w for _, w in keywords) == pytest.approx(1.0)
    assert all(len(w) >= 2 for w, _ in keywords)
    assert [w for w, _ in keywords] == sorted(
        (w for w, _ in keywords), key=lambda w: -dict(keywords)[w]
    )


def test_unseen_words_get_the_median_idf_and_english_uses_the_shipped_table() -> None:
    table = IdfTable({"dress": 1.0}, unseen=5.0)
    assert extract_keywords("dress zorblax", idf=table)[0][0] == "zorblax"
    # With the shipped table, a frequent clothing word ranks below a specific one.
    words = [w for w, _ in extract_keywords("this dress has a beautiful embroidered hem")]
    assert words.index("embroidered") < words.index("dress")


def test_text_without_content_words_has_no_keywords() -> None:
    assert extract_keywords("的了是 the and 😀") == []
