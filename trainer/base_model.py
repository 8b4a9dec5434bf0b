"""Find and load the base model: a hub id, a local Hugging Face folder, a .gguf file, or a file shipped
inside an installed Python package (pkg://PACKAGE/FILE).

A GGUF base is dequantised by transformers into an ordinary PyTorch model, so LoRA, merging and export
work the same for every source. Tools that need a Hugging Face folder on disk (Unsloth, the LoRA-to-GGUF
converter) get one from `materialise_hf_dir`.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where from_pretrained reads: a folder or hub id, plus the GGUF file inside it when there is one."""

    location: str
    gguf_file: str | None = None

    @property
    def kwargs(self) -> dict[str, str]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def describe(self) -> str:
        return f"{self.location}/{self.gguf_file}" if self.gguf_file else self.location


def _package_dir(package: str) -> Path:
    # find_spec does not import the package: some model wheels import optional plugins at import time.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"base_model.source: Python package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_source(source: str) -> ModelSource:
    """Turn the config's base_model.source into a `ModelSource`, checking that local files exist."""
    if source.startswith("pkg://"):
        package, _, rel = source.removeprefix("pkg://").partition("/")
        if not package or not rel:
            raise ConfigError(f"base_model.source: expected pkg://PACKAGE/FILE, got {source!r}")
        path = _package_dir(package) / rel
        if not path.exists():
            raise ConfigError(f"base_model.source: {rel!r} is not in package {package!r} ({path.parent})")
        source = str(path)
    path = Path(source)
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"base_model.source: GGUF file not found: {source}")
        return ModelSource(str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(f"base_model.source: {source} has no config.json (not a Hugging Face model folder)")
        return ModelSource(str(path))
    if source.startswith((".", "/")):
        raise ConfigError(f"base_model.source: no such file or folder: {source}")
    return ModelSource(source)  # a hub id; loading fails clearly when it is not cached offline


def load_tokenizer(source: ModelSource, chat_template: str | None = None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.location, **source.kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot load the tokenizer of {source.describe()}: {exc}") from None
    if chat_template:
        tok.chat_template = chat_template
    if not tok.chat_template:
        raise ConfigError(f"{source.describe()} has no chat template; set base_model.chat_template")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # padding is masked out of the loss and attention anyway
    return tok


def load_model(source: ModelSource, *, dtype: torch.dtype | None = None, device: str = "cpu") -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, dtype=dtype or torch.float32, **source.kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot load the base model {source.describe()}: {exc}") from None
    # A GGUF base arrives dequantised; forget where it came from so saved copies are plain checkpoints.
    # (transformers dequantises GGUF weights to plain tensors; only these markers remain.)
    if source.gguf_file:
        if getattr(model.config, "quantization_config", None):
            del model.config.quantization_config
        # hf_quantizer is set on the instance by from_pretrained, not declared on PreTrainedModel, so mypy
        # takes the type of torch's Module.__getattr__ (Tensor | Module) for it.
        model.hf_quantizer = None  # type: ignore[assignment]
    # transformers wraps `to` with functools.wraps, which mypy sees as an unbound function wanting `self` first.
    return model.to(device)  # type: ignore[arg-type]


def materialise_hf_dir(source: ModelSource, target: Path) -> Path:
    """A Hugging Face folder for the base model (a GGUF base is dequantised and saved once)."""
    if not source.gguf_file:
        return Path(source.location)
    if (target / "config.json").exists():
        return target
    log.info("saving the dequantised base model to %s", target)
    partial = target.with_name(target.name + ".partial")
    model = load_model(source)
    model.save_pretrained(partial)
    load_tokenizer(source).save_pretrained(partial)
    partial.rename(target)
    return target
