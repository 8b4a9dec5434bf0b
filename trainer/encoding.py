"""Turn a conversation into token ids and labels, with the loss on assistant tokens only.

The chat template is rendered for growing prefixes of the conversation: the tokens between
"everything before this assistant turn plus the generation prompt" and "everything through this
assistant turn" are the assistant's, end-of-turn marker included, so the model learns to stop.
All other positions get the label -100, which the cross-entropy ignores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from trainer.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100
Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render(tok: PreTrainedTokenizerBase, messages: Messages, *, generation_prompt: bool = False) -> str:
    # tokenize=False renders to a str; the cast is for transformers' return type, which also covers tokenize=True.
    return cast(str, tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))


def token_ids(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The chat template already writes every special token it wants; do not let the tokenizer add more.
    return tok(text, add_special_tokens=False)["input_ids"]


def encode_conversation(tok: PreTrainedTokenizerBase, messages: Messages) -> Encoded:
    """Ids of the whole conversation and labels that keep only the assistant turns."""
    ids = token_ids(tok, render(tok, messages))
    labels = [IGNORE] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(token_ids(tok, render(tok, messages[:i], generation_prompt=True)))
        end = len(token_ids(tok, render(tok, messages[: i + 1])))
        if not 0 < start <= end <= len(ids):
            raise DataError(
                "the chat template does not render conversations as growing prefixes; "
                "set base_model.chat_template to one that does"
            )
        labels[start:end] = ids[start:end]
    return Encoded(ids, labels)


def encode_prompt(tok: PreTrainedTokenizerBase, messages: Messages) -> list[int]:
    """Ids of a conversation up to (not including) its final assistant turn, with the generation prompt."""
    context = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    return token_ids(tok, render(tok, context, generation_prompt=True))


def reference_answer(messages: Messages) -> str:
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
