"""Offline evaluations: the public benchmarks and labelled streams the operators are scored on.

Each module reads a data set (CDNOW, the Amazon sequential-recommendation files, Taobao's log,
review corpora, a generated stream with labels), replays it through the same operators the flow
runs, and reports the figures the docs quote. The ``eval-*``, ``train*``, ``rfm-cuts`` and
``segments-check`` commands in :mod:`dataflow.commands` are thin CLI tails over these modules.
"""
