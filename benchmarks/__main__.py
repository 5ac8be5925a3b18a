"""`python -m benchmarks WHAT ...`: the benchmarks (benchmarks.cli), from the repository root."""

from benchmarks.cli import main

main()
