"""The real embedders (multilingual E5 by default, MiniLM as an option): agreement with
sentence-transformers and between precisions on real reviews, prompts, thread settings, caching."""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from dataflow.config import Config
from dataflow.factories import model_threads, shared_embedder
from operators.text.embedding import MODEL_NAMES, Embedder, packaged_model_dir, usable_cores
from operators.text.embedding.encoder import cpu_quota_cores
from tests.support import ROOT

pytestmark = pytest.mark.slow
SAMPLE = ROOT / "operators" / "data" / "reviews_en_sample.csv"
# Written for these tests (the Chinese review set may not be copied here): queries and reviews.
CHINESE = [
    "蓝牙耳机 降噪 续航长",
    "这件衣服质量很好，尺码合适，颜色和图片一样，下次还会再买",
    "物流太慢了，等了一个星期才到，包装也破了，水果有好几个坏的",
    "手机用了两天就发烫，电池掉电很快，客服也不理人，非常失望",
    "酒店位置方便，房间干净，早餐种类少了点，总体还可以",
    "洗发水味道好闻，洗完头发很顺，就是价格有点贵",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return shared_embedder(Config())


def reviews(n: int) -> list[str]:
    with SAMPLE.open(newline="") as f:
        return [row["review"] for row in csv.DictReader(f)][:n]


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_vectors_match_sentence_transformers_on_real_reviews(model: str) -> None:
    from sentence_transformers import SentenceTransformer

    texts = [*reviews(60), *CHINESE]
    ours = Embedder(model=model, cache_size=0).encode(texts)
    reference = SentenceTransformer(str(packaged_model_dir(model)), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_numpy=True
    )
    cosine = np.sum(ours * reference, axis=1)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    assert cosine.min() >= 0.99, cosine.min()


def test_the_default_is_multilingual_e5_with_its_prompts(embedder: Embedder) -> None:
    assert embedder.name == "multilingual-e5-small"
    assert dict(embedder.prompts) == {"query": "query: ", "passage": "passage: "}
    minilm = Embedder(model="all-MiniLM-L6-v2", cache_size=0)
    assert minilm.name == "all-MiniLM-L6-v2" and dict(minilm.prompts) == {}
    # A Chinese complaint is closer to its English gist than to a Chinese text on something else.
    pair = ["query: 物流太慢了，包装也破了", "query: delivery was slow and the box was broken"]
    unrelated = "query: 洗发水味道好闻"
    e5 = embedder.encode([*pair, unrelated])
    assert float(e5[0] @ e5[1]) > float(e5[0] @ e5[2])


def test_unit_length_and_input_order(embedder: Embedder) -> None:
    texts = ["red running shoes", "a very long review " * 40, "蓝牙耳机"]
    together = embedder.encode(texts)
    alone = np.stack([Embedder(cache_size=0).encode([t])[0] for t in texts])
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together, alone, atol=1e-5)


def test_repeated_texts_are_computed_once_and_cached() -> None:
    model = Embedder(cache_size=2)
    assert model.lookup("shoes") is None
    first = model.encode(["shoes", "shoes", "bags"])
    assert np.array_equal(first[0], first[1])
    cached = model.lookup("shoes")
    assert cached is not None and np.array_equal(cached, first[0])
    model.encode(["hats"])  # evicts the oldest ("shoes": first in, first out)
    assert model.lookup("shoes") is None and model.lookup("bags") is not None
    assert model.lookup("hats") is not None


def test_int8_stays_within_cosine_0_99_of_fp32_on_real_reviews() -> None:
    texts = [*reviews(60), *CHINESE, "red running shoes", "a"]
    fp32 = Embedder(cache_size=0, precision="fp32").encode(texts)
    int8 = Embedder(cache_size=0, precision="int8")
    cosine = np.sum(int8.encode(texts) * fp32, axis=1)
    assert cosine.min() >= 0.99, (cosine.min(), texts[int(cosine.argmin())])
    assert int8.precision == "int8" and int8.name == "multilingual-e5-small+int8"


def test_thread_setting_is_honoured() -> None:
    import torch

    default, before = usable_cores(), torch.get_num_threads()
    try:
        assert Embedder(cache_size=0).threads == torch.get_num_threads() == default
        model = Embedder(cache_size=0, threads=default + 1)
        model.encode(["red running shoes"])
        assert model.threads == torch.get_num_threads() == default + 1
    finally:
        torch.set_num_threads(before)


def test_a_container_cpu_limit_caps_the_cores_counted(tmp_path: Path) -> None:
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota_cores(tmp_path / "v1") is None  # v1 without a quota
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    assert cpu_quota_cores(tmp_path / "v1") == 1  # half a core still gets one thread
    assert usable_cores(tmp_path / "v1") == 1
    assert cpu_quota_cores(tmp_path / "none") is None
    assert usable_cores(tmp_path / "none") == len(os.sched_getaffinity(0))


def test_the_model_thread_gets_the_cores_the_workers_leave() -> None:
    cores = usable_cores()
    assert model_threads(Config(workers=1)) == max(1, cores - 1)
    assert model_threads(Config(workers=cores + 3)) == 1
    assert model_threads(Config(embed_thread="off")) is None  # every core: the workers wait


@pytest.mark.parametrize(("device", "precision"), [("cuda", "int8"), ("cpu", "fp16")])
def test_precision_the_device_cannot_run_is_refused(device: str, precision: str) -> None:
    with pytest.raises(ValueError, match=f"precision '{precision}' runs on"):
        Embedder(device=device, precision=precision)


def test_worker_threads_sharing_the_model_get_the_same_vectors() -> None:
    model = Embedder(cache_size=0)
    batches = [[*reviews(40)[i::4], f"query {i}", "蓝牙耳机"] for i in range(4)]
    alone = [model.encode(batch) for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(model.encode, batches))
    for a, b in zip(alone, together, strict=True):
        assert np.allclose(a, b, atol=1e-5)


def test_a_lazy_embedder_loads_in_the_background_when_first_asked() -> None:
    model = Embedder(model="all-MiniLM-L6-v2", cache_size=0, lazy=True)
    # Name, size and prompts come from the folder's files, before any weights are read.
    assert (model.name, model.dim, dict(model.prompts)) == ("all-MiniLM-L6-v2", 384, {})
    assert not model._loaded.is_set() and model._loading is None
    model.ready()  # starts the load in a thread and returns at once
    assert model._loading is not None
    vectors = model.encode(["red running shoes"])  # waits for the load
    assert model.ready() and vectors.shape == (1, 384)
    eager = Embedder(model="all-MiniLM-L6-v2", cache_size=0)
    assert np.allclose(vectors, eager.encode(["red running shoes"]), atol=1e-6)


def test_a_model_that_fails_to_load_fails_the_first_encode(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')  # no weights, no tokenizer
    model = Embedder(tmp_path, lazy=True)
    with pytest.raises(RuntimeError, match="failed"):
        model.encode(["anything"])
