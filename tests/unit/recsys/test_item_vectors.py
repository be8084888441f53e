"""Catalog item vectors: embedded once, saved as versions, looked up by id in the flow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dataflow.model_watch import ModelWatcher
from operators.profile import materialize
from operators.recsys import (
    CatalogEntry,
    embed_catalog,
    load_item_vectors,
    loader_for,
    newest_version,
    read_catalog,
    save_item_vectors,
)
from tests.flow.test_flow import COALESCING, PARAMS, run_flow, stream
from tests.support.cli import profilestream
from tests.support.fakes import HashEncoder, WordListSentiment
from tests.support.reference import assert_profiles_match, reference_states

CATALOG = [
    CatalogEntry("i1", "Aurora Red Dress", "Dresses", "Aurora"),
    CatalogEntry("i2", "华为 轻薄 手机", "手机", "华为"),
    CatalogEntry("i3", "", "Skirts", None),
]


def test_an_entry_is_embedded_as_a_passage_of_its_title_category_and_brand() -> None:
    encoder = HashEncoder()
    vectors = embed_catalog(CATALOG, encoder, batch_size=2)
    assert encoder.calls == [
        ["passage: Aurora Red Dress Dresses", "passage: 华为 轻薄 手机"],
        ["passage: Skirts"],
    ]
    assert vectors.model_name == "hash-encoder" and vectors.vectors.dtype == np.float16
    expected = encoder.encode(["passage: 华为 轻薄 手机"])[0]
    have = vectors.get("i2")
    assert have is not None and have.dtype == np.float32
    assert np.abs(have - expected).max() < 1e-3  # float16 storage
    assert vectors.get("unknown") is None and vectors.get(None) is None


def test_versions_round_trip_and_other_models_are_refused(tmp_path: Path) -> None:
    first = save_item_vectors(embed_catalog(CATALOG, HashEncoder(), version="v1"), tmp_path)
    save_item_vectors(embed_catalog(CATALOG[:1], HashEncoder(), version="v2"), tmp_path)
    assert newest_version(tmp_path) == tmp_path / "v2"
    loaded = load_item_vectors(first)
    assert loaded.item_ids == ["i1", "i2", "i3"]
    assert np.array_equal(loaded.vectors, embed_catalog(CATALOG, HashEncoder()).vectors)
    assert loader_for(HashEncoder())(first).version == "v1"

    class OtherModel(HashEncoder):
        name = "another-model"

    with pytest.raises(ValueError, match="holds vectors of 'hash-encoder'"):
        loader_for(OtherModel())(first)


def test_a_bad_catalog_line_names_its_place(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_text('{"item_id": "i1", "title": "ok"}\n\n{"title": "no id"}\n')
    with pytest.raises(ValueError, match=r"catalog.jsonl:3: not a catalog entry"):
        list(read_catalog(path))


def test_the_flow_takes_catalog_vectors_for_item_events_and_matches_the_reference(
    tmp_path: Path,
) -> None:
    lines = stream(240, late_every=7)
    known = {f"i{n}" for n in range(0, 13, 2)}  # the stream's items are i0..i12: half of them
    vectors = embed_catalog([CatalogEntry(i, f"item {i}") for i in sorted(known)], HashEncoder())
    save_item_vectors(vectors, tmp_path / "vectors")
    config = COALESCING.replace(item_vectors_dir=tmp_path / "vectors")
    deltas, _ = run_flow(lines, config=config)
    expected = reference_states(lines, HashEncoder(), PARAMS, WordListSentiment(), items=vectors)
    assert_profiles_match(materialize(deltas), expected, PARAMS, atol=0)
    # The flow equals the reference with catalog vectors, which differs from embedding each
    # item event's category and brand: the flow looked the vectors up.
    plain = reference_states(lines, HashEncoder(), PARAMS, WordListSentiment())
    assert any(
        not np.array_equal(plain[u].profile.interest, expected[u].profile.interest) for u in plain
    )


def test_the_watcher_serves_the_newest_version(tmp_path: Path) -> None:
    save_item_vectors(embed_catalog(CATALOG, HashEncoder(), version="v1"), tmp_path)
    watcher = ModelWatcher(tmp_path, 0.0, load=loader_for(HashEncoder()))
    current = watcher.current()
    assert current is not None and current.version == "v1"
    save_item_vectors(embed_catalog(CATALOG[:2], HashEncoder(), version="v2"), tmp_path)
    newer = watcher.current()
    assert newer is not None and newer.version == "v2" and newer.item_ids == ["i1", "i2"]


@pytest.mark.slow
def test_embed_items_command_writes_a_version_the_flow_loads(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(msgspec_entry(e)) + "\n" for e in CATALOG))
    out = tmp_path / "vectors"
    done = profilestream("embed-items", "--catalog", str(catalog), "--out", str(out),
                         "--embed-model", "all-MiniLM-L6-v2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = newest_version(out)
    assert folder is not None
    vectors = load_item_vectors(folder)
    assert vectors.model_name == "all-MiniLM-L6-v2" and vectors.vectors.shape == (3, 384)
    norms = np.linalg.norm(vectors.vectors.astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3)


def msgspec_entry(entry: CatalogEntry) -> dict:
    return {"item_id": entry.item_id, "title": entry.title, "category": entry.category,
            "brand": entry.brand}  # fmt: skip
