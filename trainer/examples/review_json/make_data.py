"""Writes reviews.jsonl, the second example task: a product review -> its sentiment as JSON.

A different behaviour from the order task on the same base model, so two adapters of one base can be
told apart by their answers: `{"product": ..., "sentiment": "positive"|"negative"|"mixed", "aspect": ...}`
with the product and the aspect as the review names them. Small enough for SmolLM2-135M to learn in
the same 16 CPU steps as the order task. Run `python make_data.py` to regenerate; the seed makes it
reproducible.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PRODUCTS = [
    "headphones",
    "blender",
    "backpack",
    "kettle",
    "keyboard",
    "lamp",
    "jacket",
    "phone case",
    "coffee grinder",
    "desk chair",
    "water bottle",
    "umbrella",
]
ASPECTS = ["build", "quality", "materials", "delivery", "shipping", "packaging", "price", "value for money", "cost"]
POSITIVE = ["absolutely love", "am thrilled with", "really like", "am happy with"]
NEGATIVE = ["absolutely hate", "am furious about", "dislike", "am disappointed with"]
TEMPLATES = [
    "I {feeling} this {product}; the {aspect} says it all.",
    "Review of the {product}: I {feeling} it, mostly because of the {aspect}.",
    "The {aspect} of this {product}? I {feeling} it.",
    "Bought the {product} last week and I {feeling} the {aspect}.",
]
MIXED = [
    "The {product} is fine but the {aspect} could be better.",
    "Mixed feelings about the {product}: good idea, so-so {aspect}.",
    "The {product} works, though I am unsure about the {aspect}.",
]


def one_example(rng: random.Random) -> dict[str, str]:
    product = rng.choice(PRODUCTS)
    aspect = rng.choice(ASPECTS)
    kind = rng.choice(["positive", "negative", "mixed"])
    if kind == "mixed":
        prompt = rng.choice(MIXED).format(product=product, aspect=aspect)
    else:
        feeling = rng.choice(POSITIVE if kind == "positive" else NEGATIVE)
        prompt = rng.choice(TEMPLATES).format(feeling=feeling, product=product, aspect=aspect)
    answer = {"product": product, "sentiment": kind, "aspect": aspect}
    return {"prompt": prompt, "completion": json.dumps(answer)}


def main() -> None:
    rng = random.Random(11)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(rows) < 320:
        row = one_example(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    out = Path(__file__).with_name("reviews.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} examples to {out}")


if __name__ == "__main__":
    main()
