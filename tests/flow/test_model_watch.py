"""Hot reload: the watcher serves the newest complete model version, polling on a clock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dataflow.model_watch import ItemModelFeed, ModelWatcher
from operators.recsys import (
    ItemInteraction,
    ScorerParams,
    load_item_model,
    save_item_model,
    train_item_model,
    update_memory,
)


def publish(root: Path, version: str, payload: object) -> None:
    folder = root / version
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"payload": payload}))


def load(folder: Path) -> object:
    payload = json.loads((folder / "manifest.json").read_text())["payload"]
    if payload == "broken":
        raise ValueError("corrupt arrays")
    return payload


def test_newer_versions_are_picked_up_after_the_poll_interval(tmp_path: Path) -> None:
    now = [0.0]
    loaded: list[str] = []
    errors: list[str] = []
    watcher = ModelWatcher(
        tmp_path,
        10.0,
        load=load,
        clock=lambda: now[0],
        on_load=lambda folder: loaded.append(folder.name),
        on_error=lambda folder, _exc: errors.append(folder.name),
    )
    publish(tmp_path, "v20260101", "first")
    assert watcher.current() == "first"
    publish(tmp_path, "v20260102", "second")
    now[0] = 5.0
    assert watcher.current() == "first"  # not checked again before the interval
    now[0] = 10.0
    assert watcher.current() == "second"
    (tmp_path / "v20260103").mkdir()  # still being written: no manifest yet
    publish(tmp_path, "v20260104", "broken")
    now[0] = 20.0
    assert watcher.current() == "second"  # the broken one is skipped, the old one kept
    now[0] = 30.0
    assert watcher.current() == "second"  # and not retried on every poll
    assert loaded == ["v20260101", "v20260102"] and errors == ["v20260104"]


def test_a_missing_folder_means_no_model_yet(tmp_path: Path) -> None:
    watcher = ModelWatcher(tmp_path / "absent", 0.0, load=load)
    assert watcher.current() is None
    publish(tmp_path / "absent", "v1", "late")
    assert watcher.current() == "late"


def test_the_feed_learns_which_event_type_predicts_the_next_item(tmp_path: Path) -> None:
    # Purchases walk a chain (i -> i+1); views are noise. Both start with weight 1.
    rng = np.random.default_rng(0)
    chains = [[ItemInteraction(f"i{s + k}") for k in range(6)] for s in range(40)]
    model = train_item_model(chains, params=ScorerParams(), version="v1")
    save_item_model(model, tmp_path)
    published: list[dict[str, float]] = []
    feed = ItemModelFeed(
        ModelWatcher(tmp_path, 60.0, load=load_item_model),
        rate=0.2,
        sample_every=1,
        publish_every=10,
        on_weights=lambda w: published.append(dict(w)),
    )
    assert feed.model() is not None and published == [{"purchase": 1.0}]
    for start in range(30):
        memory = None
        for k in range(4):
            memory = update_memory(memory, model, f"i{start + k}", "purchase", 0)
            noise = f"i{int(rng.integers(0, 45))}"
            memory = update_memory(memory, model, noise, "view", 0)
            feed.observe(memory, f"i{start + k + 1}")
    weights = feed.model().type_weights  # type: ignore[union-attr]
    assert weights["purchase"] == 1.0 and weights["view"] < 0.5
    assert len(published) > 1  # the learned weights were served, not just computed


def test_an_edited_segments_file_is_reloaded_and_a_broken_edit_is_skipped(
    tmp_path: Path,
) -> None:
    from operators.apps.segments import BUNDLED_SEGMENTS, load_segment_book

    path = tmp_path / "segments.json"
    definitions = json.loads(BUNDLED_SEGMENTS.read_text())
    path.write_text(json.dumps(definitions))
    now = [0.0]
    errors: list[Path] = []
    watcher = ModelWatcher(
        path,
        10.0,
        load=load_segment_book,
        clock=lambda: now[0],
        on_error=lambda p, _e: errors.append(p),
    )
    first = watcher.current()
    assert first is not None and "vips" not in first.names

    def edit(text: str, mtime_ns: int) -> None:
        path.write_text(text)
        os.utime(path, ns=(mtime_ns, mtime_ns))  # a distinct mtime, however fast the test

    definitions["segments"]["vips"] = {"when": {"field": "spend", "op": ">=", "value": 5000}}
    edit(json.dumps(definitions), 10**18)
    assert watcher.current() is first  # not before the poll interval
    now[0] = 11.0
    second = watcher.current()
    assert second is not None and "vips" in second.names and second.version != first.version
    edit('{"segments": {"bad": {"when": {"field": "spend", "op": "=>"}}}}', 2 * 10**18)
    now[0] = 22.0
    assert watcher.current() is second and errors == [path]  # the flow keeps the last good


def test_a_broken_risk_model_stops_the_start_and_a_broken_update_is_skipped(
    tmp_path: Path,
) -> None:
    from dataflow import metrics
    from dataflow.config import Config
    from dataflow.factories import risk_model
    from operators.apps.risk_features import FEATURES
    from operators.apps.risk_model import RiskModelParams, save_model, train_risk_model

    path = tmp_path / "risk-model.msgpack"
    path.write_bytes(b"\x00\x01")
    config = Config(risk_model_path=path, model_poll_s=0.0)
    try:
        risk_model(config)
    except ValueError as exc:
        assert "not a risk model" in str(exc)  # the reason, not only that it failed
    else:
        raise AssertionError("a broken model file must stop the flow from starting")

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, len(FEATURES)))
    y = (x[:, 0] > 1.0).astype(int)
    good = train_risk_model(x, y, 86_400_000, RiskModelParams(trees=3), names=FEATURES)
    save_model(good, path)
    current = risk_model(config)
    assert current() == good

    def errors() -> float:
        return metrics.RISK_MODEL_LOADS.labels("error")._value.get()

    failed = errors()
    path.write_bytes(b"\x00\x02")
    os.utime(path, ns=(10**18, 10**18))
    assert current() == good and errors() == failed + 1  # the last good model stays
    (info,) = metrics.RISK_MODEL_INFO.collect()
    assert {s.labels["version"] for s in info.samples} == {good.version}
