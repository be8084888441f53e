"""The sentiment model: training and scoring on made-up reviews, save/load, the CSV readers,
the CLI's JSON contract, and accuracy on the real review sets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from bytewax.testing import TestingSource
from sklearn.model_selection import train_test_split

from dataflow.config import Config
from dataflow.eval.sentiment import CHINESE_REVIEWS, ENGLISH_REVIEWS
from dataflow.flow import build_flow
from operators.ingest import Event
from operators.text import (
    LabelledTexts,
    SentimentModel,
    add_embedding_head,
    evaluate_sentiment,
    load_sentiment_model,
    read_sentiment_csv,
    read_text,
    train_sentiment,
)
from tests.support.cli import profilestream
from tests.support.fakes import HashEncoder

# Written for these tests: the real review sets may not be copied here.
POSITIVE = [
    "质量很好，很喜欢",
    "物流很快，包装完好，满意",
    "衣服很漂亮，尺码合适，好评",
    "水果新鲜，味道不错，还会再买",
    "酒店干净，服务热情，推荐",
    "手机很流畅，电池耐用，非常满意",
    "洗发水很好用，味道好闻",
    "性价比高，值得购买，喜欢",
    "Love this dress, great fit and soft fabric",
    "Great quality, fast delivery, very happy",
    "Beautiful colour and comfortable, highly recommend",
    "Perfect size, I love it",
    "Excellent value, works great",
    "Very happy with this purchase, recommend it",
]
NEGATIVE = [
    "质量太差了，很失望",
    "物流太慢，包装破损，不满意",
    "衣服起球，尺码不对，差评",
    "水果烂了好几个，不新鲜",
    "酒店很脏，服务态度差",
    "手机发烫，电池不耐用，退货",
    "洗发水是假货，头皮痒",
    "不值这个价，后悔购买",
    "Terrible quality, the seams fell apart",
    "Awful fit, returned it, very disappointed",
    "Cheap fabric and ugly colour, do not buy",
    "Too small and poorly made, I hate it",
    "Broke after one day, waste of money",
    "Very disappointed, would not recommend",
]


@pytest.fixture(scope="module")
def small_model() -> SentimentModel:
    texts = POSITIVE + NEGATIVE
    return train_sentiment(texts, [1] * len(POSITIVE) + [0] * len(NEGATIVE), bits=14)


def assert_same_arrays(model: SentimentModel, expected: SentimentModel) -> None:
    assert model.bits == expected.bits
    for name in ("scales", "coefs", "intercepts"):
        np.testing.assert_array_equal(getattr(model, name), getattr(expected, name))


def test_scores_are_probabilities_that_separate_made_up_reviews(
    small_model: SentimentModel,
) -> None:
    positive = ["很喜欢，满意", "质量好，好评", "love it, great quality"]
    negative = ["太差了，失望", "差评，退货", "terrible, disappointed"]
    scores = small_model.score([*positive, *negative, ""])
    assert scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (scores[:3] > 0.5).all() and (scores[3:6] < 0.5).all()
    assert small_model.score_one(positive[0]) == pytest.approx(float(scores[0]))
    assert small_model.score([]).shape == (0,)


def test_full_width_and_emoji_score_as_their_plain_form(small_model: SentimentModel) -> None:
    assert small_model.score_one("ＬＯＶＥ it 👍") == small_model.score_one("love it")


def test_save_and_load_round_trip(small_model: SentimentModel, tmp_path: Path) -> None:
    small_model.save(tmp_path)
    loaded = load_sentiment_model(tmp_path)
    assert_same_arrays(loaded, small_model)
    assert loaded.manifest["n_train"] == len(POSITIVE) + len(NEGATIVE)
    texts = [*POSITIVE, *NEGATIVE, "没见过的句子"]
    np.testing.assert_array_equal(loaded.score(texts), small_model.score(texts))


def test_an_embedding_head_reads_what_the_n_grams_cannot(
    small_model: SentimentModel, tmp_path: Path
) -> None:
    # The same words, told apart only by their vectors: the n-grams score them alike.
    rng = np.random.default_rng(0)
    labels = np.array([1, 0] * 40)
    vectors = rng.normal(size=(80, 8)).astype(np.float32)
    vectors[:, 0] = np.where(labels == 1, 2.0, -2.0)
    texts = ["还行 okay"] * 80
    model = add_embedding_head(small_model, vectors, labels, "hash-encoder+int8", weight=1.0)
    assert model.embedding is not None and model.embedding.model == "hash-encoder"
    with_vectors = model.score(texts, vectors)
    assert ((with_vectors > 0.5) == (labels == 1)).all()
    np.testing.assert_array_equal(model.score(texts), small_model.score(texts))  # no vectors
    assert model.score_one(texts[0], vectors[0]) == pytest.approx(float(with_vectors[0]))
    model.save(tmp_path)
    loaded = load_sentiment_model(tmp_path)
    assert loaded.embedding is not None and loaded.embedding.reads("hash-encoder")
    np.testing.assert_array_equal(loaded.score(texts, vectors), with_vectors)
    result = evaluate_sentiment(loaded, LabelledTexts(texts, labels), vectors)
    assert result.accuracy == 1.0


def test_read_text_hands_the_review_vector_to_the_sentiment_model(
    small_model: SentimentModel,
) -> None:
    head = add_embedding_head(
        small_model, np.array([[1.0], [-1.0]] * 5), [1, 0] * 5, "hash-encoder", weight=5.0
    )
    review = Event("e", "u", 1, "review", item_id="i", text="还行 okay")
    up = read_text(review, head, vector=np.array([1.0], np.float32))
    down = read_text(review, head, vector=np.array([-1.0], np.float32))
    plain = read_text(review, head)
    assert up is not None and down is not None and plain is not None
    assert up.polarity is not None and down.polarity is not None and plain.polarity is not None
    assert up.polarity > plain.polarity > down.polarity


def test_the_flow_refuses_a_head_trained_on_another_model(small_model: SentimentModel) -> None:
    head = add_embedding_head(small_model, np.eye(2), [1, 0], "another-model")
    with pytest.raises(ValueError, match="reads another-model vectors"):
        build_flow(Config(), encoder=HashEncoder(), sentiment=head, source=TestingSource([]))


def test_training_is_reproducible(small_model: SentimentModel) -> None:
    again = train_sentiment(POSITIVE + NEGATIVE, [1] * len(POSITIVE) + [0] * len(NEGATIVE), bits=14)
    assert_same_arrays(again, small_model)


def test_training_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        train_sentiment(POSITIVE, [1] * len(POSITIVE))


def test_labelled_csv_with_bom_stray_feff_and_empty_review(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text(
        '\ufeffcat,label,review\n水果,1,\ufeff很新鲜\n衣服,0,\n书籍,0,"差, 不推荐"\n',
        encoding="utf-8",
    )
    data = read_sentiment_csv(path)
    assert data.texts == ["\ufeff很新鲜", "", "差, 不推荐"]
    assert data.labels.tolist() == [1, 0, 0]
    train = read_sentiment_csv(path, "train")
    held_out = read_sentiment_csv(path, "held_out")
    assert sorted(train.texts + held_out.texts) == sorted(data.texts)


def test_rated_csv_maps_ratings_and_drops_threes_and_textless_rows(tmp_path: Path) -> None:
    path = tmp_path / "clothing.csv"
    path.write_text(
        "Clothing ID,Title,Review Text,Rating\n"
        "1,Love it,Soft and warm,5\n"
        "2,,Runs small,2\n"
        "3,Okay,Fine I guess,3\n"
        "4,,,1\n"
        "5,Nice,,4\n",
        encoding="utf-8",
    )
    data = read_sentiment_csv(path)
    assert data.texts == ["Love it Soft and warm", "Runs small", "Nice"]
    assert data.labels.tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("content", "message"),
    [("label,review\nyes,好\n", "label must be 1 or 0"), ("text,score\n好,1\n", "need columns")],
)
def test_csv_reader_rejects_bad_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_sentiment_csv(path)


def test_cli_trains_and_prints_one_json_line_last(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["cat", "label", "review"])
        writer.writerows(["x", 1, t] for t in POSITIVE)
        writer.writerows(["x", 0, t] for t in NEGATIVE)
    model_dir = tmp_path / "model"
    trained = profilestream(
        "train-sentiment", "--csv", str(path), "--out", str(model_dir), "--bits", "14"
    )
    assert trained.returncode == 0, trained.stderr
    scored = profilestream(
        "eval-sentiment", "--csv", str(path), "--model", str(model_dir), "--json"
    )
    assert scored.returncode == 0, scored.stderr
    last = scored.stdout.strip().splitlines()[-1]
    figures = json.loads(last)
    assert set(figures) == {"n", "accuracy", "macro_f1", "reviews_per_s"}
    assert figures["n"] == len(POSITIVE) + len(NEGATIVE) and figures["accuracy"] == 1.0
    assert figures["reviews_per_s"] > 0


@pytest.mark.slow
def test_cli_trains_an_embedding_head_with_the_flows_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "train.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "review"])
        writer.writerows([1, t] for t in POSITIVE)
        writer.writerows([0, t] for t in NEGATIVE)
    monkeypatch.setenv("PROFILESTREAM_EMBED_MODEL", "all-MiniLM-L6-v2")  # the small one
    model_dir = tmp_path / "model"
    command = ["--csv", str(path), "--out", str(model_dir), "--bits", "14", "--embedding-head"]
    assert profilestream("train-sentiment", *command).returncode == 0
    model = load_sentiment_model(model_dir)
    assert model.embedding is not None and model.embedding.model == "all-MiniLM-L6-v2"
    assert model.embedding.coef.shape == (384,)
    assert (
        profilestream("eval-sentiment", "--csv", str(path), "--model", str(model_dir)).returncode
        == 0
    )


def test_cli_rejects_default_with_csv(tmp_path: Path) -> None:
    rejected = profilestream("train-sentiment", "--default", "--csv", str(tmp_path / "x.csv"))
    assert rejected.returncode == 2


def test_chinese_reviews_held_out_fifth(shared_data: Path) -> None:
    """Train on a fixed stratified 80% of the Chinese dev reviews, score the rest.

    Measured 0.940 (5-fold CV mean, spread 0.002); character 1-3-gram TF-IDF + logistic
    regression scores 0.928 on the same folds.
    """
    data = read_sentiment_csv(shared_data / CHINESE_REVIEWS)
    train, test = train_test_split(
        np.arange(len(data.texts)), test_size=0.2, stratify=data.labels, random_state=0
    )
    model = train_sentiment([data.texts[i] for i in train], data.labels[train])
    result = evaluate_sentiment(
        model, LabelledTexts([data.texts[i] for i in test], data.labels[test])
    )
    assert result.accuracy >= 0.935


def test_shipped_model_on_english_held_out_fifth(shared_data: Path) -> None:
    """The shipped model never saw these rows; its manifest records what it scores on them."""
    model = load_sentiment_model()
    result = evaluate_sentiment(
        model, read_sentiment_csv(shared_data / ENGLISH_REVIEWS, part="held_out")
    )
    recorded = model.manifest["metrics"]["en_held_out"]
    assert result.n == recorded["n"]
    assert round(result.accuracy, 4) == recorded["accuracy"]
    assert result.accuracy >= 0.94
