"""Writes orders.jsonl, the example task's data: shop messages -> one compact JSON order.

The behaviour is small enough for a 135M model to learn in a few dozen CPU steps and easy to check:
the answer must be valid JSON with exactly the keys product, quantity, color and size (null when the
customer did not say). Run `python make_data.py` to regenerate; the seed makes it reproducible.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

APPAREL = ["t-shirt", "hoodie", "jacket", "sweater", "cap", "scarf", "dress", "polo shirt"]
GOODS = ["mug", "notebook", "backpack", "water bottle", "umbrella", "phone case", "tote bag", "lamp"]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "grey", "purple", "orange", "pink"]
SIZES = ["XS", "S", "M", "L", "XL"]
NUMBER_WORDS = {
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
    12: "twelve",
}
TEMPLATES = [
    "I'd like to order {qty} {color} {product}{plural}{size_phrase}.",
    "Please send me {qty} {product}{plural} in {color}{size_phrase}.",
    "Can I get {qty} {color} {product}{plural}{size_phrase}? Thanks!",
    "Order: {qty} x {product}, colour {color}{size_phrase}.",
    "Hi, I want to buy {qty} {product}{plural}{size_phrase}, {color} please.",
    "We need {qty} {color} {product}{plural}{size_phrase} for our team.",
    "Add {qty} {product}{plural} ({color}){size_phrase} to my order.",
    "Could you ship {qty} {color} {product}{plural}{size_phrase} to me?",
    "Hello! {qty} {product}{plural}{size_phrase}, in {color}, is what I need.",
    "Put me down for {qty} {color} {product}{plural}{size_phrase}.",
]
NO_COLOR_TEMPLATES = [
    "I'd like {qty} {product}{plural}{size_phrase}, any colour is fine.",
    "Please send {qty} {product}{plural}{size_phrase}.",
]
SIZE_PHRASES = [" in size {size}", ", size {size}", " (size {size})"]


def one_example(rng: random.Random) -> dict[str, str]:
    apparel = rng.random() < 0.55
    product = rng.choice(APPAREL if apparel else GOODS)
    quantity = rng.choice([1, 1, 2, 2, 3, 4, 5, 6, 8, 10, 12])
    size = rng.choice(SIZES) if apparel and rng.random() < 0.85 else None
    color = rng.choice(COLORS) if rng.random() < 0.9 else None
    template = rng.choice(TEMPLATES if color else NO_COLOR_TEMPLATES)
    qty = str(quantity) if rng.random() < 0.6 or quantity not in NUMBER_WORDS else NUMBER_WORDS[quantity]
    if quantity == 1 and rng.random() < 0.5 and "x" not in template:
        qty = "an" if product[0] in "aeiou" else "a"
    size_phrase = rng.choice(SIZE_PHRASES).format(size=size) if size else ""
    plural = ("es" if product.endswith("s") else "s") if quantity > 1 and "x {product}" not in template else ""
    prompt = template.format(qty=qty, color=color, product=product, plural=plural, size_phrase=size_phrase)
    answer = {"product": product, "quantity": quantity, "color": color, "size": size}
    return {"prompt": prompt, "completion": json.dumps(answer)}


def main() -> None:
    rng = random.Random(7)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(rows) < 320:
        row = one_example(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
    out = Path(__file__).with_name("orders.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} examples to {out}")


if __name__ == "__main__":
    main()
