"""Training rows from captured traffic: which captured answers become examples, and the JSONL they are
written as. One definition for both sides of the loop: `python -m trainer dataset` writes these rows and the
review console offers the same file for download. Standard library only, so the trainer image carries this
module without the gateway's dependencies.

A captured inference (with its feedback) is judged by that feedback:

- feedback the gateway could not tie to the request's sender (`role: unverified`) is ignored;
- a correction (the answer it should have been) is the target, whatever the ratings say;
- an answer rated up (its latest rating), or scored / judged at least `min_score` on average, is a
  positive: the model's own answer is the target;
- an answer rated down without a correction is left out, as is one with no signal, a low score, no
  answer, or content the `messages` format cannot hold.

Rows are deduplicated by prompt (a correction beats a positive; the newest wins), then split by time: the
newest `heldout` share is the held-out set, so no held-out prompt is in the training rows.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

ROLES = ("system", "user", "assistant")
PRIORITY = {"correction": 2, "rated_up": 1, "scored": 1}
Messages = list[dict[str, str]]


def text_field(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"field '{name}' is empty")
    return value


def chat_messages(msgs: Any) -> Messages:
    """A conversation ending in the assistant's answer, checked; ValueError saying why it is unusable."""
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs, 1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has role {m['role']!r}; expected one of {', '.join(ROLES)}")
        if m["role"] == "system" and i != 1:
            raise ValueError(f"message {i} is a system message; only the first message may be one")
        out.append({"role": m["role"], "content": text_field(m["content"], f"messages[{i}].content")})
    if out[-1]["role"] != "assistant":
        raise ValueError("the last message must be the assistant's answer")
    turns = [m["role"] for m in out if m["role"] != "system"]
    if any(a == b for a, b in pairwise(turns)) or turns[0] != "user":
        raise ValueError("after the optional system message, roles must alternate user, assistant, user, ...")
    return out


def moment(value: Any) -> datetime:
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Example:
    request_id: str
    at: datetime
    why: str  # correction | rated_up | scored
    messages: Messages

    @property
    def prompt_key(self) -> str:
        return hashlib.sha256(json.dumps(self.messages[:-1], sort_keys=True).encode()).hexdigest()

    def line(self) -> str:
        """The example as one JSONL line (with its newline)."""
        return json.dumps({"messages": self.messages, "request_id": self.request_id, "source": self.why}) + "\n"


def judge_row(row: dict[str, Any], min_score: float) -> tuple[str, str | None]:
    """(why, target text): why is a reason taken (correction, rated_up, scored) or left out."""
    # Feedback the gateway could not tie to the request's sender (`unverified`) never becomes a target.
    trusted = [f for f in row.get("feedback") or [] if f.get("role") != "unverified"]
    notes = sorted(trusted, key=lambda f: (str(f.get("created_at")), f.get("id") or 0))
    corrections = [f["text"] for f in notes if f.get("kind") == "correction" and f.get("text")]
    if corrections:
        return "correction", corrections[-1]
    answer = row.get("answer")
    if row.get("outcome") not in ("success", "cache_hit") or not answer:
        return "no_answer", None
    ratings = [f["value"] for f in notes if f.get("kind") == "rating" and f.get("value") is not None]
    if ratings:
        return ("rated_up", answer) if ratings[-1] >= 1 else ("rated_down", None)
    scores = [f["value"] for f in notes if f.get("kind") in ("score", "judge") and f.get("value") is not None]
    if scores:
        return ("scored", answer) if sum(scores) / len(scores) >= min_score else ("low_score", None)
    return "no_signal", None


def to_example(row: dict[str, Any], min_score: float) -> tuple[str, Example | None]:
    why, target = judge_row(row, min_score)
    if target is None:
        return why, None
    prompt = row.get("messages")
    if not isinstance(prompt, list):  # a text completion ({"prompt": ...})
        text = (prompt or {}).get("prompt") if isinstance(prompt, dict) else None
        prompt = [{"role": "user", "content": text}] if isinstance(text, str) else None
    if not prompt:
        return "unsupported_content", None
    try:
        messages = chat_messages([*prompt, {"role": "assistant", "content": target}])
    except ValueError:
        return "unsupported_content", None
    return why, Example(request_id=row["request_id"], at=moment(row["created_at"]), why=why, messages=messages)


def build(
    rows: Iterable[dict[str, Any]], *, min_score: float = 0.8, heldout: float = 0.1
) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """(training rows, held-out rows, a report of what was taken and why)."""
    taken: dict[str, Example] = {}
    reasons: Counter[str] = Counter()
    seen = 0
    for row in rows:
        seen += 1
        why, example = to_example(row, min_score)
        reasons[why] += 1
        if example is None:
            continue
        kept = taken.get(example.prompt_key)
        if kept is None or (PRIORITY[example.why], example.at) >= (PRIORITY[kept.why], kept.at):
            taken[example.prompt_key] = example
    examples = sorted(taken.values(), key=lambda e: (e.at, e.request_id))
    n_heldout = round(len(examples) * heldout) if len(examples) > 1 else 0
    if heldout > 0 and len(examples) > 1:
        n_heldout = max(1, n_heldout)
    train, held = examples[: len(examples) - n_heldout], examples[len(examples) - n_heldout :]
    report = {
        "inferences_read": seen,
        "reasons": dict(sorted(reasons.items())),  # taken: correction, rated_up, scored; the rest left out
        "duplicates_dropped": sum(reasons[k] for k in PRIORITY) - len(examples),
        "train": len(train),
        "heldout": len(held),
        "train_by_reason": dict(Counter(e.why for e in train)),
        "heldout_from": held[0].at.isoformat() if held else None,
        "min_score": min_score,
    }
    return train, held, report


def jsonl(examples: Sequence[Example]) -> Iterator[str]:
    return (e.line() for e in examples)
