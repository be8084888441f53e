"""The ``profilestream`` command and its subcommands; the flow's wiring is in :mod:`dataflow`."""
