"""``python -m dataflow ...`` is the ``profilestream`` command."""

import sys

from dataflow.commands.cli import main

sys.exit(main())
