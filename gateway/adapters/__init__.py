"""LoRA adapters as first-class things: the registry (name, base, version, digest, files), the leases that
say which adapter versions are in use across gateway processes, and per server kind the plan that maps a
public adapter name to the server's terms (llama.cpp: a per-request `lora` list; vLLM: load, serve,
unload once drained). See README.md here."""
