"""OpenAI-compatible inference gateway in front of Ollama and OpenAI-compatible servers."""
