"""The ``profilestream`` command: run the dataflow, generate events, run the demo.

profilestream run --source kafka --sink kafka --brokers host:9092 --workers 2
profilestream generate --events 100000 --users 5000 --out events.jsonl
profilestream demo
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import timedelta

from dataflow.config import Config, add_config_arguments, load_config

# The model ships inside a package; make sure nothing ever tries the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_flow(config: Config) -> None:
    """Run the dataflow in this process with ``config.workers`` worker threads.

    With ``recovery_dir`` set, state is snapshotted every ``snapshot_interval_s`` and a
    restarted process resumes from the last snapshot (the folder is initialised on first use).
    The Bytewax API server (``/metrics``) listens on ``metrics_port``.
    """
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.run import cli_main

    from dataflow.flow import build_flow, check_recovery_shards

    os.environ["BYTEWAX_DATAFLOW_API_ENABLED"] = "true"
    os.environ["BYTEWAX_DATAFLOW_API_PORT"] = str(config.metrics_port)
    # The API server also writes the rendered dataflow (dataflow.json); keep it out of the cwd.
    os.environ.setdefault("BYTEWAX_DATAFLOW_API_CACHE_PATH", tempfile.gettempdir())
    recovery = None
    if config.recovery_dir is not None:
        if not config.recovery_dir.exists() or not any(config.recovery_dir.iterdir()):
            config.recovery_dir.mkdir(parents=True, exist_ok=True)
            init_db_dir(config.recovery_dir, 1)
        check_recovery_shards(config.recovery_dir, config.batcher_shards)
        recovery = RecoveryConfig(str(config.recovery_dir))
    cli_main(
        build_flow(config),
        workers_per_process=config.workers,
        epoch_interval=timedelta(seconds=config.snapshot_interval_s),
        recovery_config=recovery,
    )


def _parser() -> argparse.ArgumentParser:
    from dataflow import demo, generator, recsys_cli, sentiment_cli

    parser = argparse.ArgumentParser(
        prog="profilestream",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the profile dataflow")
    add_config_arguments(run)
    run.set_defaults(handler=lambda args: run_flow(load_config(args)))
    generator.add_command(commands)
    demo.add_command(commands)
    sentiment_cli.add_command(commands)
    recsys_cli.add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.handler(args)
    except ValueError as exc:
        print(f"profilestream {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
