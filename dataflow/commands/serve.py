"""``profilestream serve``: the HTTP API over profiles materialised from the deltas topic.

    profilestream serve --brokers kafka:9092 --serve-store sqlite:///var/lib/profilestream/p.db \\
        --serve-http-host 0.0.0.0 --serve-keys-file /etc/profilestream/keys.json
    profilestream serve --serve-store redis://redis:6379/0 --item-model-dir models/
    profilestream serve --print-openapi > deploy/openapi.json

Everything is a field of the one :class:`~dataflow.config.Config` (flags and
``PROFILESTREAM_*`` variables): topics, brokers, ``--kafka-config-file``,
``--item-model-dir``, ``--model-poll-s`` and ``--segments-file`` as the flow has them, and
the ``--serve-*`` options (store, addresses, API keys, TLS, consumer settings). The API
lets no one in without a key (``--serve-keys-file``; ``profilestream api-key`` makes them)
unless it listens on loopback only; health and metrics answer on ``--serve-ops-port``.
See ``dataflow/serve/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dataflow.config import Config, add_config_arguments, config_values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--print-openapi", action="store_true", help="print the OpenAPI description and exit"
    )
    add_config_arguments(parser, job="serve")


def run(args: argparse.Namespace) -> int:
    from dataflow.serve import openapi, serve

    if args.print_openapi:
        json.dump(openapi(), sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    serve(Config(**config_values(args)))
    return 0


def add_command(subparsers: Any) -> None:
    """Register ``profilestream serve``."""
    parser = subparsers.add_parser(
        "serve",
        help="serve profiles, segment sizes and recommendations over HTTP from the deltas topic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
