"""LoRA adapters as first-class things: the registry (name, base, version, digest, files) and its CLI."""
