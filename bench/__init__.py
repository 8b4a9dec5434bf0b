"""Benchmarks: the gateway against the backend called directly and against LiteLLM's proxy.

Entry points (each a `python -m` module): `bench` (the full comparison, `make bench`),
`bench.overhead` (issue 2: gateway overhead over the Ollama double), `bench.soak` (long mixed
run, RSS over time), `bench.mock_backend` and `bench.loadgen` (the parts, runnable alone).
"""
