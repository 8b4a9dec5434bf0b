"""Pick the training backend and build the LoRA model with it.

Unsloth's FastLanguageModel when CUDA and Unsloth are both present (or asked for), otherwise PEFT on
plain transformers. Both get the same LoRA settings from the config, and the training loop, evaluation
and export that follow do not care which one built the model.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from trainer.base_model import ModelSource, load_model, load_tokenizer, materialise_hf_dir
from trainer.config import RunConfig
from trainer.errors import BackendError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)
Backend = Literal["peft", "unsloth"]


@dataclass(frozen=True)
class Capabilities:
    cuda: bool
    unsloth: bool
    bitsandbytes: bool

    @classmethod
    def detect(cls) -> Capabilities:
        import torch

        has = lambda name: importlib.util.find_spec(name) is not None
        return cls(cuda=torch.cuda.is_available(), unsloth=has("unsloth"), bitsandbytes=has("bitsandbytes"))


def choose_backend(requested: str, load_in_4bit: bool, caps: Capabilities) -> Backend:
    """The backend to train with, or a BackendError that says what is missing."""
    if requested == "unsloth" and not (caps.cuda and caps.unsloth):
        missing = " and ".join(n for n, ok in (("CUDA", caps.cuda), ("the unsloth package", caps.unsloth)) if not ok)
        raise BackendError(f"training.backend is unsloth but {missing} is not available; use backend: auto or peft")
    backend: Backend = (
        "unsloth" if requested == "unsloth" or (requested == "auto" and caps.cuda and caps.unsloth) else "peft"
    )
    if load_in_4bit:
        if not caps.cuda:
            raise BackendError("training.load_in_4bit (QLoRA) needs a CUDA GPU; set it to false on CPU")
        if backend == "peft" and not caps.bitsandbytes:
            raise BackendError("training.load_in_4bit with the PEFT backend needs the bitsandbytes package")
    return backend


def import_backend_first(cfg: RunConfig) -> None:
    """Unsloth patches transformers when imported, so it must be imported before transformers is.
    Called by the CLI before any stage runs; a backend that cannot run is reported later, by train."""
    try:
        if choose_backend(cfg.training.backend, cfg.training.load_in_4bit, Capabilities.detect()) == "unsloth":
            import unsloth  # noqa: F401
    except BackendError:
        pass


def _peft_model(cfg: RunConfig, source: ModelSource, device: str) -> PeftModel:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model: PreTrainedModel
    if cfg.training.load_in_4bit:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        hf_dir = materialise_hf_dir(source, cfg.output_dir / "base-hf")
        model = AutoModelForCausalLM.from_pretrained(hf_dir, quantization_config=quant, device_map=device)
        # Norms and the output layer back to fp32 and input grads on, as QLoRA training needs.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = load_model(source, dtype=dtype, device=device)
    if cfg.training.gradient_checkpointing and not cfg.training.load_in_4bit:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _unsloth_model(cfg: RunConfig, source: ModelSource) -> PeftModel:
    import unsloth  # noqa: F401  (Unsloth patches transformers; it must be imported before use)
    from unsloth import FastLanguageModel

    # Unsloth loads Hugging Face folders, not GGUF: a GGUF base is dequantised to a folder first.
    hf_dir = materialise_hf_dir(source, cfg.output_dir / "base-hf")
    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(hf_dir),
        max_seq_length=cfg.data.max_seq_length,
        dtype=None,
        load_in_4bit=cfg.training.load_in_4bit,
    )
    return FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        bias="none",
        use_gradient_checkpointing="unsloth" if cfg.training.gradient_checkpointing else False,
        random_state=cfg.training.seed,
    )


def build_lora_model(
    cfg: RunConfig, caps: Capabilities | None = None
) -> tuple[PeftModel, PreTrainedTokenizerBase, Backend, str]:
    """(model with fresh LoRA adapters, tokenizer, backend name, device)."""
    import torch

    from trainer.base_model import resolve_source

    caps = caps or Capabilities.detect()
    backend = choose_backend(cfg.training.backend, cfg.training.load_in_4bit, caps)
    device = "cuda" if caps.cuda else "cpu"
    log.info("training backend: %s on %s%s", backend, device, " (4-bit QLoRA)" if cfg.training.load_in_4bit else "")
    source = resolve_source(cfg.base_model.source)
    tok = load_tokenizer(source, cfg.base_model.chat_template)
    torch.manual_seed(cfg.training.seed)  # adapter init (lora_A) is random: seed it
    model = _unsloth_model(cfg, source) if backend == "unsloth" else _peft_model(cfg, source, device)
    return model, tok, backend, device


def adapter_dir(output_dir: Path) -> Path:
    return output_dir / "adapter"
