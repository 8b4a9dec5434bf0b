"""The kit tests/ and bench/ share: stand-ins for what cannot run here (an Ollama double and a vLLM double
built from their public API docs, a mock OpenAI/Ollama backend with set delays), real processes on free
loopback ports (redis-server, nginx, llama.cpp's server), and building llama-server from the pinned sdist.
None of it is imported by the gateway or the trainer."""
