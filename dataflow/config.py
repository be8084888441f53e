"""The one configuration object of a profilestream run, from CLI flags and environment variables.

Every field of :class:`Config` is a flag (``--embed-max-wait-ms 20``) and an environment
variable (``PROFILESTREAM_EMBED_MAX_WAIT_MS=20``); a flag wins over the variable, the variable
over the default. ``python -m bytewax.run dataflow.flow:flow_from_env`` reads only the
variables, which is how a cluster deployment configures it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache, partial
from pathlib import Path
from typing import Any, Final, Literal, get_args, get_origin, get_type_hints

from operators.profile import DEFAULT_WINDOWS, parse_windows

ENV_PREFIX = "PROFILESTREAM_"


def _opt(help_text: str, **extra: Any) -> Any:
    return {"help": help_text, **extra}


@dataclass(frozen=True)
class Config:
    """Where events come from, where deltas go, and how the operators are tuned."""

    source: Literal["kafka", "file"] = field(
        default="file", metadata=_opt("read events from Kafka or from a JSONL file")
    )
    sink: Literal["kafka", "file"] = field(
        default="file", metadata=_opt("write deltas and dead letters to Kafka or to JSONL files")
    )
    input_path: Path | None = field(
        default=None, metadata=_opt("JSONL file of events (source=file)")
    )
    output_dir: Path = field(
        default=Path("out"),
        metadata=_opt(
            "folder for deltas, dead_letters, segments, alerts, demand and risk_scores .jsonl "
            "(sink=file)"
        ),
    )
    brokers: str = field(default="localhost:9092", metadata=_opt("Kafka bootstrap servers"))
    events_topic: str = field(default="profile-events", metadata=_opt("input topic"))
    deltas_topic: str = field(default="profile-deltas", metadata=_opt("profile delta topic"))
    dlq_topic: str = field(default="profile-dead-letters", metadata=_opt("dead-letter topic"))
    segments_topic: str = field(
        default="profile-segments", metadata=_opt("segment entry and exit topic")
    )
    alerts_topic: str = field(default="profile-alerts", metadata=_opt("risk alert topic"))
    demand_topic: str = field(
        default="category-demand", metadata=_opt("category demand and forecast topic")
    )
    kafka_config_file: Path | None = field(
        default=None,
        metadata=_opt(
            "librdkafka properties file (key=value lines: SASL, TLS, ...) for source and sinks"
        ),
    )
    kafka_tail: bool = field(
        default=True,
        metadata=_opt("keep waiting for new events; --no-kafka-tail stops at the end of the topic"),
    )
    embed_model: Literal["multilingual-e5-small", "all-MiniLM-L6-v2"] = field(
        default="multilingual-e5-small",
        metadata=_opt("packaged embedding model (multilingual: Chinese and English)"),
    )
    model_dir: Path | None = field(
        default=None,
        metadata=_opt("local sentence-transformers model directory (overrides --embed-model)"),
    )
    item_vectors_dir: Path | None = field(
        default=None,
        metadata=_opt(
            "folder of item vector versions from `profilestream embed-items` (hot-reloaded)"
        ),
    )
    device: str | None = field(
        default=None, metadata=_opt("cuda or cpu (default: cuda when available)")
    )
    embed_precision: Literal["auto", "fp32", "fp16", "int8"] = field(
        default="auto",
        metadata=_opt(
            "model precision: auto = fp32; fp16 on CUDA; int8 = per-token int8 products (CPU)"
        ),
    )
    embed_thread: Literal["on", "off"] = field(
        default="on",
        metadata=_opt(
            "embed on a thread of the model's own, so workers go on with other users while it "
            "works and the next batch fills (off: on the worker that closed the batch, every "
            "other user waiting)"
        ),
    )
    embed_threads: int = field(
        default=0,
        metadata=_opt(
            "intra-op threads of the embedding model on CPU (0 = the cores the workers leave "
            "it, at least one, with --embed-thread on; every usable core with it off)"
        ),
    )
    embed_batch_size: int = field(
        default=64, metadata=_opt("distinct texts that close an embedding batch")
    )
    embed_max_wait_ms: int = field(
        default=50, metadata=_opt("longest a text waits for its batch to fill")
    )
    embed_cache_size: int = field(default=50_000, metadata=_opt("texts kept in the vector cache"))
    max_users_waiting: int = field(
        default=10_000,
        metadata=_opt(
            "users of a process whose events may wait for a text vector at once: beyond it the "
            "process's input partitions stop reading until the model catches up, so a slow "
            "or loading model bounds memory instead of filling it (0 = no bound)"
        ),
    )
    sentiment_model: Path | None = field(
        default=None,
        metadata=_opt("folder of a trained sentiment model (default: the shipped one)"),
    )
    keywords_per_text: int = field(
        default=5, metadata=_opt("keywords taken from each query or review")
    )
    max_keywords: int = field(default=32, metadata=_opt("keywords kept per profile"))
    item_model_dir: Path | None = field(
        default=None,
        metadata=_opt(
            "folder of item model versions from `profilestream train` (hot-reloaded; off if unset)"
        ),
    )
    model_poll_s: float = field(
        default=30.0,
        metadata=_opt(
            "seconds between checks for a newer item model, item vectors, segment definitions "
            "or risk model"
        ),
    )
    emit_interval_ms: int = field(
        default=1_000,
        metadata=_opt(
            "a user's changes go out as one delta this long after the first of them entered "
            "Kafka (from arrival if it waited longer; 0: a delta per event)"
        ),
    )
    full_every: int = field(default=100, metadata=_opt("every N-th delta of a user is full"))
    vector_encoding: Literal["int8", "float16"] = field(
        default="int8",
        metadata=_opt(
            "how deltas carry the interest vector: int8 codes and a scale (half the bytes, "
            "cosine to the profile's vector > 0.9999) or float16 (the profile's exact bits)"
        ),
    )
    settle_full_after_s: float = field(
        default=0.0,
        metadata=_opt(
            "a user whose newest delta is a patch gets a full delta of the same version after "
            "this many seconds without another (0: never), so a consumer starting from a "
            "compacted deltas topic finds quiet users complete; keep it below the topic's "
            "min.compaction.lag.ms"
        ),
    )
    windows: str = field(
        default=DEFAULT_WINDOWS,
        metadata=_opt("per-user window spans and their steps, e.g. 1h:5m,24h:1h (empty: none)"),
    )
    allowed_lateness_ms: int = field(
        default=600_000,
        metadata=_opt(
            "how far behind its partition's newest event an event may be and still be on time: "
            "the watermark trails the slowest partition by this much; later events are late "
            "(they skip the windows, and category demand sends them as corrections)"
        ),
    )
    idle_partition_ms: int = field(
        default=10_000,
        metadata=_opt(
            "an input partition read to its end and quiet for this long (wall clock) stops "
            "holding the watermark back, until its next message"
        ),
    )
    pii_secret: str = field(
        default="",
        repr=False,  # never in logs or reprs
        metadata=_opt(
            "secret of the keyed hashes that replace IPs and device ids; from the environment "
            "only (a Kubernetes Secret), never a flag (empty: a public development secret)"
        ),
    )
    segments_file: Path | None = field(
        default=None,
        metadata=_opt(
            "segment definitions and RFM cut points, JSON (hot-reloaded; default: the shipped ones)"
        ),
    )
    risk_rules_file: Path | None = field(
        default=None,
        metadata=_opt("JSON of risk detector thresholds overriding the defaults"),
    )
    takeover_model_path: Path | None = field(
        default=None,
        metadata=_opt(
            "the score that decides a suspected takeover's purchases, from `profilestream "
            "train-takeover` (default: the shipped one; `ato_learned: false` in the rules "
            "file turns it off)"
        ),
    )
    risk_model_path: Path | None = field(
        default=None,
        metadata=_opt(
            "learned risk model from `profilestream train-risk`, reloaded when the file "
            "changes (without one, purchases' features are logged to risk-scores unscored)"
        ),
    )
    risk_settle_days: int = field(
        default=7,
        metadata=_opt("how long fraud verdicts (chargebacks) usually take to arrive, in days"),
    )
    labels_topic: str | None = field(
        default=None,
        metadata=_opt("topic of chargeback events read beside the events topic (source=kafka)"),
    )
    labels_path: Path | None = field(
        default=None,
        metadata=_opt("JSONL file of chargeback events read beside input_path (source=file)"),
    )
    risk_scores_topic: str = field(
        default="profile-risk-scores",
        metadata=_opt("topic of every priced purchase's risk features and learned score"),
    )
    demand_bucket_ms: int = field(
        default=3_600_000, metadata=_opt("width of a category demand bucket (event time)")
    )
    demand_horizon: int = field(
        default=24, metadata=_opt("buckets forecast ahead for each category")
    )
    expire_after_days: float = field(
        default=0.0,
        metadata=_opt("erase a user inactive this long in event time, with a tombstone (0: never)"),
    )
    erased_memory_days: float = field(
        default=7.0,
        metadata=_opt(
            "how long an erased user's older re-sent events are refused (the input retention)"
        ),
    )
    max_seen_event_ids: int = field(
        default=512, metadata=_opt("recent event ids kept per user to drop duplicates")
    )
    interest_half_life_days: float = field(
        default=14.0, metadata=_opt("half-life of the interest vector, in event-time days")
    )
    affinity_half_life_days: float = field(
        default=30.0, metadata=_opt("half-life of category and brand affinities")
    )
    serve_store: str = field(
        default="sqlite://profiles.db",
        metadata=_opt("serve: sqlite:///path/profiles.db (embedded) or redis://host:6379/0"),
    )
    serve_http_host: str = field(
        default="127.0.0.1",
        metadata=_opt(
            "serve: API address; any but a loopback one needs --serve-keys-file (or "
            "--serve-insecure)"
        ),
    )
    serve_http_port: int = field(default=8080, metadata=_opt("serve: API port"))
    serve_keys_file: Path | None = field(
        default=None,
        metadata=_opt(
            "serve: the API keys (JSON, hashed; `profilestream api-key`), read again when it "
            "changes; every API request then needs a key with the route's scope"
        ),
    )
    serve_insecure: bool = field(
        default=False,
        metadata=_opt("serve: allow an API without keys on a non-loopback address"),
    )
    serve_tls_cert: Path | None = field(
        default=None, metadata=_opt("serve: TLS certificate (PEM) for the API; needs the key")
    )
    serve_tls_key: Path | None = field(
        default=None, metadata=_opt("serve: TLS private key (PEM) of --serve-tls-cert")
    )
    serve_ops_host: str = field(
        default="127.0.0.1",
        metadata=_opt("serve: address of /healthz, /readyz and /metrics (no profile data)"),
    )
    serve_ops_port: int = field(
        default=9108, metadata=_opt("serve: port of /healthz, /readyz and /metrics")
    )
    serve_consume: bool = field(
        default=True,
        metadata=_opt("serve: consume the topics; --no-serve-consume only reads a shared store"),
    )
    serve_assignment: Literal["auto", "all", "group"] = field(
        default="auto",
        metadata=_opt(
            "serve: all = read every partition (each replica its own store); group = split "
            "partitions between replicas of a shared store; auto = all for sqlite, group for "
            "redis"
        ),
    )
    serve_group_id: str = field(
        default="",
        metadata=_opt("serve: consumer group (default: profilestream-serve-<store id>)"),
    )
    serve_batch_size: int = field(
        default=500, metadata=_opt("serve: most records applied in one store transaction")
    )
    serve_batch_wait_ms: int = field(
        default=20, metadata=_opt("serve: longest the consumer waits to fill a batch")
    )
    recovery_dir: Path | None = field(
        default=None, metadata=_opt("Bytewax recovery database folder (enables recovery)")
    )
    snapshot_interval_s: float = field(
        default=5.0, metadata=_opt("seconds between state snapshots (Bytewax epochs)")
    )
    workers: int = field(default=1, metadata=_opt("worker threads in this process"))
    metrics_port: int = field(default=3030, metadata=_opt("port that serves /metrics"))
    metrics_host: str = field(
        default="127.0.0.1",
        metadata=_opt(
            "address /metrics listens on: loopback unless a Prometheus on another host must "
            "reach it; 0.0.0.0 serves it from Bytewax's API server on every interface, with "
            "Bytewax's own operator timings besides (its server binds every interface)"
        ),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            name, allowed = f.name, _choices(f.name)
            if allowed and getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        at_least = {
            "embed_batch_size": 1,
            "embed_max_wait_ms": 0,
            "embed_cache_size": 0,
            "max_users_waiting": 0,
            "embed_threads": 0,
            "full_every": 1,
            "emit_interval_ms": 0,
            "allowed_lateness_ms": 0,
            "idle_partition_ms": 0,
            "keywords_per_text": 1,
            "max_keywords": 1,
            "max_seen_event_ids": 1,
            "workers": 1,
            "interest_half_life_days": 1e-6,
            "affinity_half_life_days": 1e-6,
            "snapshot_interval_s": 0.0,
            "model_poll_s": 0.0,
            "metrics_port": 0,
            "demand_bucket_ms": 60_000,
            "expire_after_days": 0.0,
            "settle_full_after_s": 0.0,
            "serve_batch_size": 1,
            "serve_batch_wait_ms": 0,
            "serve_http_port": 0,
            "serve_ops_port": 0,
            "erased_memory_days": 0.0,
            "demand_horizon": 1,
        }
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, not {getattr(self, name)}")
        if (self.serve_tls_cert is None) != (self.serve_tls_key is None):
            raise ValueError("serve_tls_cert and serve_tls_key go together")
        parse_windows(self.windows)  # a bad spec fails here, not in the flow

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def kafka_properties(self) -> dict[str, str]:
        """Extra librdkafka settings from ``kafka_config_file`` (``#`` starts a comment)."""
        if self.kafka_config_file is None:
            return {}
        properties = {}
        for number, line in enumerate(self.kafka_config_file.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"{self.kafka_config_file}:{number}: expected key=value")
            properties[key.strip()] = value.strip()
        return properties


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_value(kind: str, raw: str) -> Any:
    """Parse a flag or variable by the field's annotation; an empty optional means ``None``."""
    if "None" in kind and raw == "":
        return None
    if kind == "bool":
        word = raw.strip().lower()
        if word not in _TRUE + _FALSE:
            raise ValueError(f"expected one of {_TRUE + _FALSE}, not {raw!r}")
        return word in _TRUE
    if kind.startswith("Path"):
        return Path(raw)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


@cache
def _choices(name: str) -> tuple[str, ...] | None:
    hint = get_type_hints(Config)[name]
    return get_args(hint) if get_origin(hint) is Literal else None


#: The fields both the flow and ``serve`` read; every other field is one job's: ``serve_*``
#: fields are the service's, the rest the flow's.
SHARED_FIELDS: Final = frozenset(
    {
        "brokers",
        "deltas_topic",
        "segments_topic",
        "kafka_config_file",
        "item_model_dir",
        "model_poll_s",
        "segments_file",
    }
)


def job_of(name: str) -> Literal["flow", "serve", "both"]:
    """Which job reads a :class:`Config` field."""
    if name in SHARED_FIELDS:
        return "both"
    return "serve" if name.startswith("serve_") else "flow"


def add_config_arguments(
    parser: argparse.ArgumentParser, job: Literal["flow", "serve"] = "flow"
) -> None:
    """Add a flag for each :class:`Config` field ``job`` reads (defaults are resolved later,
    with the env). Secrets get none: they come from the environment only."""
    hints = {f.name: f for f in fields(Config)}
    for name, f in hints.items():
        if not f.repr or job_of(name) not in (job, "both"):
            continue
        kind = str(f.type)
        help_text = f"{f.metadata['help']} [env {ENV_PREFIX}{name.upper()}; default {f.default}]"
        if "bool" in kind:
            parser.add_argument(
                _flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        choices = _choices(name)
        parser.add_argument(
            _flag(name),
            default=None,
            type=partial(_parse_value, kind),
            choices=choices or None,
            help=help_text,
        )


def config_values(
    args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The fields set by flags or ``PROFILESTREAM_*`` variables (a flag wins), by name."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(Config):
        flag_value = getattr(args, f.name, None) if args is not None else None
        variable = ENV_PREFIX + f.name.upper()
        if flag_value is not None:
            values[f.name] = flag_value
        elif variable in env:
            try:
                values[f.name] = _parse_value(str(f.type), env[variable])
            except ValueError as exc:
                raise ValueError(f"{variable}: {exc}") from exc
    return values


def load_config(
    args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Build the :class:`Config`: flag, else ``PROFILESTREAM_*`` variable, else default.

    >>> env = {"PROFILESTREAM_INPUT_PATH": "events.jsonl", "PROFILESTREAM_EMBED_MAX_WAIT_MS": "20"}
    >>> config = load_config(env=env)
    >>> config.input_path, config.embed_max_wait_ms
    (PosixPath('events.jsonl'), 20)
    """
    config = Config(**config_values(args, env))
    if config.source == "file" and config.input_path is None:
        raise ValueError("source=file needs --input-path (or PROFILESTREAM_INPUT_PATH)")
    return config


def config_reference() -> str:
    """``docs/configuration.md``: every field of :class:`Config` as a flag, a variable, its
    default and its meaning (``profilestream config-docs`` writes it; a test keeps it so)."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from dataflow.config.Config by `profilestream config-docs > "
        "docs/configuration.md`: edit the field there, not this page. -->",
        "",
        "One object, `dataflow.config.Config`. Every field is an environment variable "
        f"`{ENV_PREFIX}<FIELD>` and, but for secrets, a flag of the commands of its job: "
        "`profilestream run` (and `demo`, `embed-items`) for the flow's, `profilestream serve` "
        "for the `serve_*` ones, both for the shared ones. A flag wins over the variable, the "
        "variable over the default. `python -m bytewax.run dataflow.flow:flow_from_env` reads "
        "only the variables.",
        "",
        "| flag | variable | job | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for f in fields(Config):
        default: object = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        shown = "(secret)" if not f.repr else ("–" if default in (None, "") else f"`{default}`")
        if not f.repr:
            flag = "(environment only)"
        elif str(f.type).startswith("bool"):
            flag = f"`{_flag(f.name)}` / `--no-{_flag(f.name)[2:]}`"
        else:
            flag = f"`{_flag(f.name)}`"
        choices = _choices(f.name)
        meaning = f.metadata["help"] + (f" (one of {', '.join(choices)})" if choices else "")
        meaning = meaning.replace("|", "\\|")
        variable = f"`{ENV_PREFIX}{f.name.upper()}`"
        lines.append(f"| {flag} | {variable} | {job_of(f.name)} | {shown} | {meaning} |")
    return "\n".join(lines) + "\n"
