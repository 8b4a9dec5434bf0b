"""`python -m bench`: the full comparison (see bench/compare.py)."""

from bench.compare import main

main()
