"""Small LoRA adapters for SmolLM2-135M written straight as GGUF (what convert_lora_to_gguf.py writes:
general.type `adapter`, adapter.type `lora`, adapter.lora.alpha, and `<tensor>.lora_a` / `.lora_b`
pairs), so llama-server's adapter handling can be tested in seconds without training one.

Random low-rank updates on every layer's attention output projection: strong enough that greedy
answers with the adapter differ from the base model's, and each seed gives a different adapter."""

from __future__ import annotations

from pathlib import Path

N_EMBD = 576  # SmolLM2-135M
N_LAYERS = 30


def write_random_lora(path: Path, *, seed: int, rank: int = 4, alpha: float = 4.0, strength: float = 0.5) -> Path:
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for layer in range(N_LAYERS):
        # numpy (rows, cols) is GGUF ne [cols, rows]: lora_a ne [n_in, r], lora_b ne [r, n_out].
        a = rng.normal(0, strength, size=(rank, N_EMBD)).astype(np.float32)
        b = rng.normal(0, strength, size=(N_EMBD, rank)).astype(np.float32)
        writer.add_tensor(f"blk.{layer}.attn_output.weight.lora_a", a)
        writer.add_tensor(f"blk.{layer}.attn_output.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
