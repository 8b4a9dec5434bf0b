"""Cross-entropy on assistant tokens only, computing logits only where a label exists.

The output layer of a small model is a large share of its compute (SmolLM2-135M: a 49k x 576 matrix,
about a fifth of the forward pass), and most positions are prompt tokens without a label. The model's
own forward is asked for just the positions that predict a labelled token (`logits_to_keep`), so
model-specific output scaling or soft-capping still applies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.encoding import IGNORE

if TYPE_CHECKING:
    import torch


def assistant_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over labelled tokens, number of labelled tokens) for one padded batch."""
    import torch
    import torch.nn.functional as F

    targets = batch["labels"][:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)  # positions whose next token is labelled
    if keep.numel() == 0:
        return torch.zeros((), device=targets.device, requires_grad=True), 0
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    kept_targets = targets[:, keep]
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), kept_targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((kept_targets != IGNORE).sum())
