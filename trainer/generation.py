"""Batched greedy generation and token-weighted eval loss for a PyTorch causal LM."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from tqdm import tqdm

from trainer.encoding import Encoded
from trainer.loss import assistant_loss_sum
from trainer.train import collate

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerBase


class CausalLM(Protocol):
    """What generation needs of a model: a transformers causal LM, or a PeftModel wrapping one.

    Not PreTrainedModel: `generate` comes from GenerationMixin, which only the concrete *ForCausalLM classes
    mix in, and a PeftModel is a torch Module that forwards to its base model rather than a PreTrainedModel.
    """

    @property
    def generation_config(self) -> GenerationConfig | None: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def eval(self) -> Any: ...

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Generation:
    text: str
    stopped_on_eos: bool
    new_tokens: int


def stop_token_ids(tok: PreTrainedTokenizerBase, model: CausalLM) -> list[int]:
    """EOS of the tokenizer plus whatever the model's generation config treats as end of turn."""
    ids = {tok.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def greedy_generate(
    model: CausalLM,
    tok: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    desc: str = "generate",
) -> list[Generation]:
    """Greedy answers for prompt token ids; prompts are left-padded so every row continues at the same column."""
    import torch

    stops = stop_token_ids(tok, model)
    device = next(model.parameters()).device
    out: list[Generation] = []
    model.eval()
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", leave=False):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, p in enumerate(chunk):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        for row in gen[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), None)
            kept = row if cut is None else row[:cut]
            # decode() of one id list is a str; the cast is for transformers' return type, which also covers batches.
            text = cast(str, tok.decode(kept, skip_special_tokens=True))
            out.append(Generation(text, cut is not None, len(kept)))
    return out


def eval_loss(
    model: torch.nn.Module, examples: list[Encoded], *, pad_id: int, batch_size: int = 8, desc: str = "eval loss"
) -> float:
    """Mean cross-entropy over every assistant token of the held-out set (token-weighted, not per batch)."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch", leave=False):
        batch = collate(examples[start : start + batch_size], pad_id, str(device))
        with torch.no_grad():
            loss_sum, n = assistant_loss_sum(model, batch)
        total += loss_sum.item()
        count += n
    return total / max(count, 1)
