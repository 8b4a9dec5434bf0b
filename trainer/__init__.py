"""LoRA fine-tuning with an evaluation gate, GGUF export and registration with Ollama.

`python -m trainer run --config FILE` runs prepare -> train -> evaluate -> export -> push;
see trainer/stages.py for what each stage reads and writes.
"""
