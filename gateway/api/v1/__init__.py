"""The client API under /v1: OpenAI-compatible inference and models, plus feedback and usage."""
