"""Benchmark scripts, each run as ``python benchmarks/<name>.py``; a package so that they can
share :mod:`benchmarks.common`."""
