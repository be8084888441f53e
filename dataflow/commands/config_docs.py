"""``profilestream config-docs``: print docs/configuration.md, generated from the one Config.

profilestream config-docs > docs/configuration.md
"""

from __future__ import annotations

import argparse
from typing import Any

from dataflow.config import config_reference


def add_command(subparsers: Any) -> None:
    """Register ``profilestream config-docs``."""
    parser = subparsers.add_parser(
        "config-docs",
        help="print the configuration reference (docs/configuration.md) generated from Config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=lambda args: print(config_reference(), end=""))
