"""Run the dataflow in this process: what ``profilestream run`` and the demo call."""

from __future__ import annotations

import gc
import importlib
import logging
import os
import tempfile
import threading
from datetime import timedelta

from prometheus_client import start_http_server

from dataflow.config import Config
from dataflow.ports import ensure_free
from operators.apps.demand import FORECASTING_LIBRARY
from operators.text.embedding.encoder import LIBRARY_IMPORTS

log = logging.getLogger(__name__)


def load_lazy_parts() -> None:
    """Load what the flow otherwise loads the first time an event needs it, on the worker's
    thread, where each stopped every user for 0.3-1.3 s (found by printing the worker's
    stack whenever it had not polled its source for 150-300 ms, in open loops). The runner
    calls this on a thread of its own at start."""
    from operators.text.keywords import background_idf
    from operators.text.tokens import chinese_segmenter, stop_words

    parts = (
        lambda: importlib.import_module(FORECASTING_LIBRARY),  # a category's first forecast
        background_idf,  # the first text with keywords: the IDF tables
        chinese_segmenter,  # the first Chinese text: jieba's dictionary
        stop_words,  # the first keywords: scikit-learn's English list
    )
    for part in parts:
        try:
            with LIBRARY_IMPORTS:  # not beside the embedder's import of torch
                part()
        except Exception as error:
            log.warning("preloading failed (%s); it will load when first needed", error)


def run_flow(config: Config) -> None:
    """Run the dataflow in this process with ``config.workers`` worker threads.

    With ``recovery_dir`` set, state is snapshotted every ``snapshot_interval_s`` and a
    restarted process resumes from the last snapshot (the folder is initialised on first use).
    ``/metrics`` listens on ``metrics_host:metrics_port``; a port in use is a ``ValueError``
    before anything starts.
    """
    every_interface = config.metrics_host == "0.0.0.0"
    if config.metrics_port:
        ensure_free(config.metrics_host, config.metrics_port, "serve metrics")
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.run import cli_main

    from dataflow.flow import build_flow

    recovery = None
    if config.recovery_dir is not None:
        if not config.recovery_dir.exists() or not any(config.recovery_dir.iterdir()):
            config.recovery_dir.mkdir(parents=True, exist_ok=True)
            init_db_dir(config.recovery_dir, 1)
        recovery = RecoveryConfig(str(config.recovery_dir))
    flow = build_flow(config)
    preload = threading.Thread(target=load_lazy_parts, name="preload")
    preload.start()
    metrics_server = None  # started once the flow is built: a failed build leaves none behind
    if every_interface:
        # Bytewax's API server (it binds 0.0.0.0, always) adds its operators' own timings.
        os.environ["BYTEWAX_DATAFLOW_API_ENABLED"] = "true"
        os.environ["BYTEWAX_DATAFLOW_API_PORT"] = str(config.metrics_port)
        # It also writes the rendered dataflow (dataflow.json); keep it out of the cwd.
        os.environ.setdefault("BYTEWAX_DATAFLOW_API_CACHE_PATH", tempfile.gettempdir())
    else:
        os.environ.pop("BYTEWAX_DATAFLOW_API_ENABLED", None)
        if config.metrics_port:
            # Every series the dashboard and alerts use lives in the Python registry
            # (profilestream_*, and Bytewax's bytewax_kafka_consumer_lag).
            metrics_server, _ = start_http_server(config.metrics_port, addr=config.metrics_host)
    # The flow allocates and drops millions of small objects; at the collector's default
    # thresholds full collections kept traversing every live one (the models, the modules,
    # the users' queues). Measured file to file, 240k events: 12,118-13,084 events/s at the
    # defaults, 14,384 with these; startup objects are frozen out of the collections.
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1_000)
    try:
        cli_main(
            flow,
            workers_per_process=config.workers,
            # An empty address list runs even one worker on a thread of its own: Bytewax
            # then takes Ctrl-C on the main thread and stops cleanly; running a lone worker
            # on the main thread, the KeyboardInterrupt lands inside a source's next_batch
            # and Bytewax panics (a Rust backtrace, exit 1).
            addresses=[],
            epoch_interval=timedelta(seconds=config.snapshot_interval_s),
            recovery_config=recovery,
        )
    finally:  # as it was: a caller (the demo, a test) goes on with the usual collector
        preload.join()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
