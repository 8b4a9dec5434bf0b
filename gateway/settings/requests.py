"""Settings of what one request may ask the model servers to do: how many tokens, how large a context,
and which server-specific options pass through (the operator sets the rest)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

# Ollama `options` a client may set (its sampling); placement and memory (num_gpu, main_gpu, num_thread,
# num_batch, use_mmap, use_mlock, numa, low_vram) are the operator's.
OLLAMA_OPTIONS = [
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_last_n",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "num_predict",
    "num_ctx",
    "num_keep",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "tfs_z",
    "penalize_newline",
]
# Fields beyond OpenAI's that a request may carry to each kind of server; others are not forwarded.
PASSTHROUGH_FIELDS = {
    "ollama": ["think", "raw", "system", "template", "truncate"],
    "openai": [
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "parallel_tool_calls",
        "top_k",
        "min_p",
        "repetition_penalty",
        "reasoning_effort",
    ],
    "llamacpp": [
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "parallel_tool_calls",
        "top_k",
        "min_p",
        "repeat_penalty",
        "typical_p",
        "n_probs",
        "cache_prompt",
    ],
    "vllm": [
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "parallel_tool_calls",
        "top_k",
        "min_p",
        "repetition_penalty",
        "reasoning_effort",
    ],
}


class RequestSettings(BaseSettings):
    max_output_tokens: int = Field(
        4096,
        ge=1,
        le=1 << 20,
        description="Most tokens one request may ask to generate (max_tokens, "
        "max_completion_tokens, Ollama's options.num_predict): 400 above; a request that names none is "
        "capped at this.",
    )
    max_context_tokens: int = Field(
        8192,
        ge=256,
        le=1 << 22,
        description="Largest context window a request may ask Ollama for "
        "(options.num_ctx): 400 above; a larger context makes the server reload the model.",
    )
    ollama_options: list[str] = Field(
        default_factory=lambda: list(OLLAMA_OPTIONS),
        description="Ollama `options` a request may set (400 "
        "for any other: placement and memory options such as num_gpu are the operator's, as is keep_alive).",
    )
    passthrough_fields: dict[str, list[str]] = Field(
        default_factory=lambda: {kind: list(fields) for kind, fields in PASSTHROUGH_FIELDS.items()},
        description="Per backend kind, the request fields beyond OpenAI's that reach the server; any other "
        "extra field is not forwarded.",
    )
