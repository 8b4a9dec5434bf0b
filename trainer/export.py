"""The export stage: merge the adapter, convert to GGUF with llama.cpp's converter, quantise, write Modelfiles.

The adapter is always merged into a full-precision copy of the base (a 4-bit QLoRA base is loaded
dequantised here), because merging into quantised weights would round the small LoRA update away.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from trainer import converter
from trainer.backends import adapter_dir
from trainer.base_model import load_model, load_tokenizer, resolve_source
from trainer.config import RunConfig
from trainer.errors import ExportError, StageOrderError
from trainer.modelfile import derive_chat_format, modelfile_text

log = logging.getLogger(__name__)

# llama.cpp's llama_ftype values (include/llama.h).
FTYPES = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def merge_adapter(cfg: RunConfig, target: Path) -> Path:
    """Base + adapter merged into plain weights, saved as a Hugging Face folder with the tokenizer."""
    from peft import PeftModel

    source = resolve_source(cfg.base_model.source)
    tok = load_tokenizer(source, cfg.base_model.chat_template)
    model = PeftModel.from_pretrained(load_model(source), adapter_dir(cfg.output_dir)).merge_and_unload()
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target


def _run_converter(args: list[str], log_file: Path, what: str) -> None:
    with log_file.open("w") as out:
        done = subprocess.run([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        raise ExportError(f"{what} failed (exit {done.returncode}); last lines of {log_file}:\n{tail}")


def convert_to_gguf(merged: Path, outfile: Path, log_file: Path) -> Path:
    _run_converter(
        [str(converter.script("convert_hf_to_gguf.py")), str(merged), "--outfile", str(outfile), "--outtype", "f16"],
        log_file,
        "convert_hf_to_gguf.py",
    )
    return outfile


def convert_adapter_to_gguf(adapter: Path, base_config_dir: Path, outfile: Path, log_file: Path) -> Path:
    _run_converter(
        [
            str(converter.script("convert_lora_to_gguf.py")),
            str(adapter),
            "--base",
            str(base_config_dir),
            "--outfile",
            str(outfile),
            "--outtype",
            "f16",
        ],
        log_file,
        "convert_lora_to_gguf.py",
    )
    return outfile


def quantize(source: Path, target: Path, kind: str) -> Path:
    """llama.cpp's own quantiser through llama-cpp-python's binding."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = 0  # llama.cpp picks the number of cores
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if rc != 0 or not target.exists():
        raise ExportError(f"quantising {source.name} to {kind} failed (llama_model_quantize returned {rc})")
    return target


def _adapter_base(cfg: RunConfig) -> str | None:
    """FROM line for adapter serving: the base's name in Ollama, else the base GGUF file itself."""
    if cfg.ollama.adapter_base:
        return cfg.ollama.adapter_base
    source = resolve_source(cfg.base_model.source)
    return str(Path(source.location) / source.gguf_file) if source.gguf_file else None


def export(cfg: RunConfig) -> dict[str, Any]:
    """Write OUTPUT/export: model-f16.gguf, model-<quant>.gguf, adapter-f16.gguf, Modelfile(s), export.json."""
    if not (adapter_dir(cfg.output_dir) / "adapter_config.json").exists():
        raise StageOrderError(f"{adapter_dir(cfg.output_dir)} has no adapter: run `train` first")
    converter.script("convert_hf_to_gguf.py")  # fail before the slow merge when the converter is missing
    out = cfg.output_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.gguf"):  # new files, not old ones rewritten: a pushed version's registry links them
        old.unlink()
    timings: dict[str, float] = {}
    steps = ["merge", "convert", *cfg.export.quantizations, *(["adapter"] if cfg.export.adapter_gguf else [])]
    bar = tqdm(steps, desc="export", unit="step")
    files: dict[str, Path] = {}
    for step in bar:
        bar.set_postfix(step=step)
        began = time.perf_counter()
        if step == "merge":
            merged = merge_adapter(cfg, out / "merged")
        elif step == "convert":
            files["f16"] = convert_to_gguf(merged, out / "model-f16.gguf", out / "convert.log")
        elif step == "adapter":
            files["adapter"] = convert_adapter_to_gguf(
                adapter_dir(cfg.output_dir), merged, out / "adapter-f16.gguf", out / "convert_lora.log"
            )
        elif step != "f16":
            files[step] = quantize(files["f16"], out / f"model-{step}.gguf", step)
        timings[step] = round(time.perf_counter() - began, 2)

    tok = load_tokenizer(resolve_source(cfg.base_model.source), cfg.base_model.chat_template)
    if cfg.ollama.template:
        template, stops = cfg.ollama.template, list(cfg.ollama.stop or [tok.eos_token])
    else:
        fmt = derive_chat_format(tok)
        template, stops = fmt.go_template(), fmt.stops
    parameters = {**cfg.ollama.parameters, "stop": stops}
    served = files[cfg.export.serve]
    (out / "Modelfile").write_text(
        modelfile_text(
            from_=f"./{served.name}", template=template, system=cfg.data.system_prompt, parameters=parameters
        )
    )
    adapter_from = _adapter_base(cfg)
    if "adapter" in files and adapter_from:
        # Adapter serving: the unchanged base model plus this small adapter file.
        (out / "Modelfile.adapter").write_text(
            modelfile_text(
                from_=adapter_from,
                adapter=f"./{files['adapter'].name}",
                template=template,
                system=cfg.data.system_prompt,
                parameters=parameters,
            )
        )
    elif "adapter" in files:
        log.info("no Modelfile.adapter: set ollama.adapter_base to the base model's name in Ollama")
    info = {
        "served": served.name,
        "template": template,
        "system": cfg.data.system_prompt,
        "parameters": parameters,
        "files": {
            kind: {"file": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size} for kind, p in files.items()
        },
        "timings_s": timings,
        "total_s": round(sum(timings.values()), 2),
        "converter": f"llama-cpp-python=={converter.LLAMA_CPP_PYTHON_VERSION}",
    }
    tmp = out / "export.json.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(out / "export.json")
    log.info("exported %s in %.1fs (%s)", ", ".join(p.name for p in files.values()), info["total_s"], timings)
    return info


def load_export(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "export" / "export.json"
    if not path.exists():
        raise StageOrderError(f"{path} is missing: run `export` first")
    return json.loads(path.read_text())
