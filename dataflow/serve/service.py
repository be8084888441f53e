"""The service put together and run: store, consumer process, item models, uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any

from prometheus_client import (
    disable_created_metrics,
)

from dataflow.config import Config
from dataflow.ports import ensure_free
from dataflow.serve.app import ServeApps, build_app
from dataflow.serve.auth import KeyRing
from dataflow.serve.feeder import FeederProcess, FeederSettings
from dataflow.serve.metrics import ServeMetrics
from dataflow.serve.models import ItemModels
from dataflow.serve.store import (
    ProfileStore,
    open_store,
)
from operators.apps.segments import load_segment_book

log = logging.getLogger(__name__)
disable_created_metrics()


# -- running it ------------------------------------------------------------------------------


def make_service(config: Config) -> tuple[ServeApps, ProfileStore, FeederProcess | None]:
    """The apps, their store and its consumer process (the API's lifespan starts and stops
    it)."""
    keys = access_keys(config)
    store = open_store(config.serve_store)
    metrics = ServeMetrics(store)
    feeder = None
    if config.serve_consume:
        assignment = config.serve_assignment
        if assignment == "auto":
            assignment = "all" if store.kind == "sqlite" else "group"
        settings = FeederSettings(
            config.serve_store,
            config.brokers,
            config.deltas_topic,
            config.segments_topic,
            assignment,
            config.serve_group_id,
            config.serve_batch_size,
            config.serve_batch_wait_ms / 1000,
            config.kafka_properties(),
        )
        feeder = FeederProcess(settings)
    models = None
    if config.item_model_dir is not None:
        models = ItemModels(config.item_model_dir, config.model_poll_s, metrics)
    book = load_segment_book(config.segments_file)
    apps = build_app(store, metrics, feeder, models, keys=keys, segments=book.names)
    return apps, store, feeder


def access_keys(config: Config) -> KeyRing | None:
    """The API keys; without a key file, only a loopback API may start, unless the operator
    said ``--serve-insecure``: profiles are personal data."""
    if config.serve_keys_file is not None:
        return KeyRing(config.serve_keys_file)
    if not _loopback(config.serve_http_host) and not config.serve_insecure:
        raise SystemExit(
            f"serve: refusing to serve profiles on {config.serve_http_host} without API keys: "
            "give --serve-keys-file (see `profilestream api-key`), or --serve-insecure to "
            "serve anyone who can reach the port"
        )
    log.warning("serve: no API keys: anyone who reaches the API port reads every profile")
    return None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(config: Config) -> None:
    """Run the service until SIGINT or SIGTERM (the consumer finishes its batch first): the
    API on ``serve_http_host:serve_http_port`` (TLS with a certificate), health and metrics
    on ``serve_ops_host:serve_ops_port``."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ensure_free(config.serve_http_host, config.serve_http_port, "serve the API")
    ensure_free(config.serve_ops_host, config.serve_ops_port, "serve health and metrics")
    apps, store, _ = make_service(config)
    common: dict[str, Any] = {"access_log": False, "log_level": "warning"}
    tls: dict[str, Any] = {}
    if config.serve_tls_cert is not None:
        tls = {"ssl_certfile": str(config.serve_tls_cert), "ssl_keyfile": config.serve_tls_key}
    api = uvicorn.Server(
        uvicorn.Config(
            apps.api,
            host=config.serve_http_host,
            port=config.serve_http_port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            **common,
            **tls,
        )
    )
    ops = uvicorn.Server(
        uvicorn.Config(
            apps.ops, host=config.serve_ops_host, port=config.serve_ops_port, lifespan="off",
            **common,
        )
    )  # fmt: skip
    log.info(
        "serving %s: API on %s://%s:%d, health and metrics on http://%s:%d",
        store.kind,
        "https" if tls else "http",
        config.serve_http_host,
        config.serve_http_port,
        config.serve_ops_host,
        config.serve_ops_port,
    )

    # The operations server runs on a thread of its own (so it answers even while the API's
    # loop is busy); the API server, on the main thread, owns SIGINT and SIGTERM.
    ops_thread = threading.Thread(target=ops.run, name="serve-ops", daemon=True)
    ops_thread.start()
    try:
        api.run()
    finally:
        ops.should_exit = True
        ops_thread.join(5)
        store.close()
