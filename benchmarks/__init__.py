"""asynctoken's benchmark suite: ``python -m benchmarks`` (or ``nox -s bench``).

Every figure is the median of repeated runs, and every comparison is a ratio taken in the same
process and run (contenders interleaved), because the reference machine is a shared, noisy
2-core box. See ``benchmarks/README.md`` for the scenarios and how each peer is set up.
"""
