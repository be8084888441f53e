"""The service put together and run: store, consumer process, item models, uvicorn."""

from __future__ import annotations

import logging

from prometheus_client import (
    disable_created_metrics,
)
from starlette.types import ASGIApp

from dataflow.config import Config
from dataflow.serve.app import build_app
from dataflow.serve.feeder import FeederProcess, FeederSettings
from dataflow.serve.metrics import ServeMetrics
from dataflow.serve.models import ItemModels
from dataflow.serve.store import (
    ProfileStore,
    open_store,
)

log = logging.getLogger(__name__)
disable_created_metrics()

ENV_PREFIX = "PROFILESTREAM_"
#: Item models with at least this many items are served through an ANN index (faiss HNSW).
ANN_MIN_ITEMS = 20_000
MAX_K = 100


# -- running it ------------------------------------------------------------------------------


def make_service(config: Config) -> tuple[ASGIApp, ProfileStore, FeederProcess | None]:
    """The app, its store and its consumer process (the app's lifespan starts and stops it)."""
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
    return build_app(store, metrics, feeder, models), store, feeder


def serve(config: Config) -> None:
    """Run the service until SIGINT or SIGTERM (the consumer finishes its batch first)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app, store, _ = make_service(config)
    log.info(
        "serving %s on http://%s:%d", store.kind, config.serve_http_host, config.serve_http_port
    )
    try:
        uvicorn.run(
            app,
            host=config.serve_http_host,
            port=config.serve_http_port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
            lifespan="on",
        )
    finally:
        store.close()
