"""The kit tests/ and bench/ share: stand-ins for what cannot run here (the Ollama double and the vLLM double,
built from their public API docs; a mock OpenAI/Ollama backend with set delays), real processes on free
loopback ports (redis-server, nginx, llama.cpp's server), and building llama-server from the pinned sdist.
None of it is imported by the gateway or the trainer.

The Ollama double's server itself stays in tests/doubles/ (started here by `testkit.ollama`): the compose
tier's `ollama` stand-in image (../shared/standins) builds that folder in, under that name."""
