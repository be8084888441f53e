"""One configuration object: flag beats environment variable beats default."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, cast

import pytest

from dataflow.config import Config, add_config_arguments, config_reference, load_config
from tests.support import ROOT


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return parser.parse_args(list(argv))


def test_flag_beats_env_beats_default() -> None:
    env = {"PROFILESTREAM_WORKERS": "3", "PROFILESTREAM_EMBED_BATCH_SIZE": "16"}
    config = load_config(parse("--source", "kafka", "--workers", "2"), env)
    assert (config.source, config.workers, config.embed_batch_size) == ("kafka", 2, 16)
    assert config.full_every == Config().full_every


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--no-kafka-tail"], {}, False),
        ([], {"PROFILESTREAM_KAFKA_TAIL": "false"}, False),
        (["--kafka-tail"], {"PROFILESTREAM_KAFKA_TAIL": "0"}, True),
        ([], {}, True),
    ],
)
def test_boolean_flags(argv: list[str], env: dict[str, str], expected: bool) -> None:
    assert load_config(parse("--source", "kafka", *argv), env).kafka_tail is expected


def test_paths_and_floats() -> None:
    config = load_config(parse("--input-path", "e.jsonl", "--interest-half-life-days", "2.5"), {})
    assert (config.input_path, config.interest_half_life_days) == (Path("e.jsonl"), 2.5)


def test_bad_values_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse("--source", "carrier-pigeon")
    with pytest.raises(ValueError, match="source must be one of"):
        load_config(env={"PROFILESTREAM_SOURCE": "ftp"})
    with pytest.raises(ValueError, match="needs --input-path"):
        load_config(env={})


def test_kafka_properties_file(tmp_path: Path) -> None:
    path = tmp_path / "client.properties"
    path.write_text(
        "# SASL for the shared cluster\nsecurity.protocol = SASL_SSL\n\nsasl.mechanism=PLAIN\n"
    )
    config = Config(kafka_config_file=path)
    assert config.kafka_properties() == {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}
    path.write_text("no equals sign\n")
    with pytest.raises(ValueError, match=r"client\.properties:1"):
        config.kafka_properties()


@pytest.mark.parametrize(
    ("field", "value"), [("full_every", 0), ("max_seen_event_ids", 0), ("workers", 0)]
)
def test_out_of_range_settings_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"{field} must be at least"):
        Config(**cast(dict[str, Any], {field: value}))


def test_a_mistyped_boolean_is_an_error_not_false() -> None:
    with pytest.raises(ValueError, match="PROFILESTREAM_KAFKA_TAIL"):
        load_config(env={"PROFILESTREAM_SOURCE": "kafka", "PROFILESTREAM_KAFKA_TAIL": "flase"})


def test_the_kubernetes_configmap_sets_only_real_settings_with_valid_values() -> None:
    import re
    from dataclasses import fields

    configmap = ROOT / "deploy" / "k8s" / "configmap.yaml"
    text = configmap.read_text()
    env = dict(re.findall(r'^\s+#?\s*(PROFILESTREAM_\w+): "([^"]*)"', text, re.MULTILINE))
    names = {f"PROFILESTREAM_{f.name.upper()}" for f in fields(Config)}
    assert set(env) <= names, set(env) - names
    assert {"PROFILESTREAM_SEGMENTS_TOPIC", "PROFILESTREAM_ALERTS_TOPIC"} <= set(env)
    load_config(env=env)  # every value parses and is in range
    for manifest in ("serve.yaml", "statefulset.yaml"):
        text = (configmap.parent / manifest).read_text()
        env_names = set(re.findall(r"name: (PROFILESTREAM_\w+)", text))
        assert env_names and env_names <= names, (manifest, env_names - names)


def test_the_configuration_page_is_generated_from_config() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == config_reference(), (
        "docs/configuration.md is stale: run `profilestream config-docs > docs/configuration.md`"
    )
    for name in Config.__dataclass_fields__:
        assert f"`PROFILESTREAM_{name.upper()}`" in page
