"""Benchmarks: the gateway against the backend called directly and against LiteLLM's proxy.

Entry points (each a `python -m` module; bench/README.md says when to use which): `bench` (the
full comparison, `make bench`), `bench.overhead` (gateway overhead over the Ollama
double), `bench.workers` (requests/s with 1 uvicorn worker against N), `bench.soak` (long mixed
run, RSS over time, `make bench-soak`), `bench.profile` (py-spy under load), `testkit.mock_backend`
and `bench.loadgen` (the parts, runnable alone). Each starts the gateway as `python -m gateway`
configured by environment settings only.
"""
