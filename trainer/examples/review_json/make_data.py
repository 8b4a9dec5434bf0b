"""Writes reviews.jsonl, the second example task: a product review -> its sentiment and rating as JSON.

A different behaviour from the order task on the same base model, so two adapters of one base can be
told apart by their answers: `{"sentiment": "positive"|"negative"|"mixed", "stars": 1-5, "topic": ...}`.
The stars follow the wording (a strong word gives 5 or 1); the topic is the aspect the review names.
Run `python make_data.py` to regenerate; the seed makes it reproducible.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PRODUCTS = ["headphones", "blender", "backpack", "kettle", "keyboard", "lamp", "jacket", "phone case",
            "coffee grinder", "desk chair", "water bottle", "umbrella"]
TOPICS = {"quality": ["build", "quality", "materials"], "delivery": ["delivery", "shipping", "packaging"],
          "price": ["price", "value for money", "cost"]}
POSITIVE = {5: ["absolutely love", "am thrilled with"], 4: ["really like", "am happy with"]}
NEGATIVE = {1: ["absolutely hate", "am furious about"], 2: ["dislike", "am disappointed with"]}
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


def one_example(rng: random.Random) -> dict:
    product = rng.choice(PRODUCTS)
    topic = rng.choice(sorted(TOPICS))
    aspect = rng.choice(TOPICS[topic])
    kind = rng.choice(["positive", "negative", "mixed"])
    if kind == "mixed":
        stars, prompt = 3, rng.choice(MIXED).format(product=product, aspect=aspect)
    else:
        table = POSITIVE if kind == "positive" else NEGATIVE
        stars = rng.choice(sorted(table))
        prompt = rng.choice(TEMPLATES).format(feeling=rng.choice(table[stars]), product=product, aspect=aspect)
    answer = {"sentiment": kind, "stars": stars, "topic": topic}
    return {"prompt": prompt, "completion": json.dumps(answer)}


def main() -> None:
    rng = random.Random(11)
    rows, seen = [], set()
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
