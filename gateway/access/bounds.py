"""What one request may ask the model servers to do, checked before anything is reserved or sent: the
tokens to generate and the context window (maxima from the settings), and no server option the operator
owns (Ollama's `keep_alive` and its placement and memory `options`). A request over a bound is a 400
naming the field and the bound; which of the remaining fields reach each kind of server is the drivers'
(`passthrough_fields`)."""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest
from gateway.protocol.requests import ChatCompletionRequest, CompletionRequest, InferenceRequest
from gateway.settings.requests import RequestSettings

OPERATOR_FIELDS = {
    "keep_alive": "the operator's (OLLAMA_KEEP_ALIVE)",
    "lora": "chosen by the gateway (adapters)",
    "id_slot": "the server's (slot placement)",
    "slot_id": "the server's (slot placement)",
}


class RequestBounds:
    def __init__(self, settings: RequestSettings) -> None:
        self.max_output = settings.max_output_tokens
        self.max_context = settings.max_context_tokens
        self.ollama_options = frozenset(settings.ollama_options)

    def check(self, req: InferenceRequest) -> None:
        """InvalidRequest naming the first field over its bound."""
        if isinstance(req, ChatCompletionRequest | CompletionRequest):
            for name in ("max_tokens", "max_completion_tokens"):
                value = getattr(req, name, None)
                if value is not None and value > self.max_output:
                    raise InvalidRequest(
                        f"{name} is {value}; this gateway generates at most {self.max_output} tokens per request",
                        param=name,
                    )
        extra = req.model_extra or {}
        for name, why in OPERATOR_FIELDS.items():
            if name in extra:
                raise InvalidRequest(f"{name} cannot be set by a request: it is {why}", param=name)
        if "options" in extra:
            self._check_options(extra["options"])

    def _check_options(self, options: Any) -> None:
        if not isinstance(options, dict):
            raise InvalidRequest("options must be an object", param="options")
        for name in options:
            if name not in self.ollama_options:
                raise InvalidRequest(
                    f"options.{name} cannot be set by a request (the operator sets it; accepted: "
                    f"{', '.join(sorted(self.ollama_options))})",
                    param=f"options.{name}",
                )
        predict = options.get("num_predict")
        if predict is not None and (not _whole(predict) or not 1 <= predict <= self.max_output):
            raise InvalidRequest(f"options.num_predict must be 1 to {self.max_output}", param="options.num_predict")
        context = options.get("num_ctx")
        if context is not None and (not _whole(context) or not 1 <= context <= self.max_context):
            raise InvalidRequest(f"options.num_ctx must be 1 to {self.max_context}", param="options.num_ctx")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
