"""The real-model benchmark's prompts: single-turn questions, and multi-turn chats that each carry their own
long context (a support ticket's history), optionally behind one long system prompt shared by every chat.

Text is generated from a seed, so a block is reproducible; every block gets its own seed so no block
finds another's prompts in a server's or the gateway's cache.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_PRODUCTS = [
    "router",
    "laptop",
    "espresso machine",
    "e-bike",
    "thermostat",
    "printer",
    "headset",
    "camera",
    "vacuum robot",
    "smart lock",
    "monitor",
    "drone",
    "keyboard",
    "tablet",
    "speaker",
    "projector",
]
_ISSUES = [
    "stopped charging",
    "shows error E{n}",
    "restarts every {n} minutes",
    "arrived with a cracked case",
    "loses its settings",
    "makes a clicking noise",
    "will not pair over Bluetooth",
    "overheats after {n} minutes",
    "was billed twice",
    "firmware update {n} failed",
    "drops the Wi-Fi connection",
    "smells of burnt plastic",
]
_ACTIONS = [
    "asked the customer to reset it",
    "sent a replacement part",
    "escalated to tier {n}",
    "checked the serial number {n}",
    "offered a refund of {n} euros",
    "scheduled a courier pickup",
    "shared the manual, page {n}",
    "opened a warranty claim",
    "asked for a photo of the label",
    "confirmed the delivery address",
    "applied a {n} percent discount",
    "reproduced the fault in the lab",
]
_NAMES = [
    "Ana",
    "Bruno",
    "Chen",
    "Dara",
    "Elif",
    "Femi",
    "Goran",
    "Hana",
    "Ivo",
    "Jun",
    "Kira",
    "Luca",
    "Mira",
    "Nils",
    "Omar",
    "Pia",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Vera",
    "Wen",
    "Yusuf",
    "Zoe",
]
_FOLLOW_UPS = [
    "What should the customer do next?",
    "Summarise the ticket in two sentences.",
    "Which department should own this now?",
    "Draft a short apology to the customer.",
    "Is a refund justified? Answer briefly.",
    "List the open questions.",
]
_QUESTIONS = [
    "Name a {a} fact about {b}.",
    "Write one line about a {a} {b}.",
    "Why would a {a} {b} matter?",
    "Describe a {a} {b} in a sentence.",
    "Give a tip for a {a} {b}.",
]
_ADJ = ["small", "quiet", "red", "fast", "old", "bright", "cheap", "heavy", "rare", "modern", "fragile", "smart"]

SYSTEM_SHORT = "You are a helpful support assistant. Answer briefly."


def _sentence(rng: random.Random) -> str:
    n = rng.randint(2, 999)
    who, product = rng.choice(_NAMES), rng.choice(_PRODUCTS)
    issue = rng.choice(_ISSUES).format(n=n)
    action = rng.choice(_ACTIONS).format(n=rng.randint(1, 99))
    return f"{who} reported that the {product} {issue}; the agent {action}."


def ticket_history(rng: random.Random, words: int) -> str:
    """A ticket's log, about `words` words (SmolLM2's tokenizer: about 1.3 tokens a word here)."""
    out: list[str] = []
    count = 0
    while count < words:
        s = f"[{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}] " + _sentence(rng)
        out.append(s)
        count += len(s.split())
    return "\n".join(out)


def shared_system_prompt(words: int) -> str:
    """One long policy text every chat starts with (fixed, not seeded: it is the same for everyone)."""
    rng = random.Random(12345)
    rules = [
        f"Rule {i + 1}: when a customer's {rng.choice(_PRODUCTS)} {rng.choice(_ISSUES).format(n=i + 3)}, "
        f"the agent {rng.choice(_ACTIONS).format(n=i + 1)}."
        for i in range(words // 12 + 1)
    ]
    text = " ".join(rules).split()[:words]
    return SYSTEM_SHORT + " Company policy follows.\n" + " ".join(text)


@dataclass
class Conversation:
    """One chat: its messages so far (answers are appended as they come) and its remaining questions."""

    ident: int
    messages: list[dict[str, str]]
    questions: list[str]
    turn: int = 0
    ttft_s: list[float] = field(default_factory=list)

    def next_messages(self) -> list[dict[str, str]]:
        return [*self.messages, {"role": "user", "content": self.questions[self.turn]}]

    def answered(self, question_messages: list[dict[str, str]], answer: str) -> None:
        self.messages = [*question_messages, {"role": "assistant", "content": answer}]
        self.turn += 1

    @property
    def finished(self) -> bool:
        return self.turn >= len(self.questions)


def conversations(
    seed: int, *, count: int, turns: int, history_words: int, system_words: int = 0
) -> list[Conversation]:
    """`count` chats of `turns` questions; the first question carries the chat's own ticket history."""
    rng = random.Random(seed)
    system = shared_system_prompt(system_words) if system_words else SYSTEM_SHORT
    out = []
    for i in range(count):
        history = ticket_history(rng, history_words)
        first = f"Ticket #{seed}-{i}. Its history:\n{history}\n\n{rng.choice(_FOLLOW_UPS)}"
        rest = [rng.choice(_FOLLOW_UPS) for _ in range(turns - 1)]
        out.append(Conversation(ident=i, messages=[{"role": "system", "content": system}], questions=[first, *rest]))
    return out


def single_prompts(seed: int, count: int) -> list[list[dict[str, str]]]:
    """Short unrelated questions: nothing for a prompt cache to reuse beyond the chat template."""
    rng = random.Random(seed)
    return [
        [
            {
                "role": "user",
                "content": f"#{seed}-{i} "
                + rng.choice(_QUESTIONS).format(a=rng.choice(_ADJ), b=rng.choice(_PRODUCTS))
                + " "
                + _sentence(rng),
            }
        ]
        for i in range(count)
    ]
