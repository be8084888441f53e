"""``profilestream run``: run the profile dataflow in this process.

    profilestream run --source kafka --sink kafka --brokers kafka:9092 --workers 2
    profilestream run --input-path events.jsonl --output-dir out/

Every option is a field of :class:`~dataflow.config.Config` (flags and ``PROFILESTREAM_*``
variables; see docs/configuration.md). As a cluster, run
``python -m bytewax.run dataflow.flow:flow_from_env`` instead (deploy/README.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from dataflow.config import add_config_arguments, load_config
from dataflow.runner import run_flow


def add_command(subparsers: Any) -> None:
    """Register ``profilestream run``."""
    parser = subparsers.add_parser(
        "run",
        help="run the profile dataflow",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=lambda args: run_flow(load_config(args)))
