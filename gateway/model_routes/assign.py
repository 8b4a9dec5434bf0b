"""Sticky assignment of a user to a variant.

The unit (the request's `user`, else the API key id, else the client address) is hashed with the
route name into BUCKETS buckets; variants own consecutive bucket ranges in their listed order, sized by
weight. A weight change only moves the boundary between ranges, so it moves the fewest users: a canary
going from 10 % to 20 % takes the 10 % of users next to its range and nobody else changes variant.
"""

from __future__ import annotations

import hashlib

from gateway.model_routes.spec import TOTAL_WEIGHT, RouteSpec, Variant

BUCKETS = 10_000
PER_PERCENT = BUCKETS // TOTAL_WEIGHT


def bucket(route: str, unit: str) -> int:
    digest = hashlib.blake2b(f"{route}\x00{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def choose(spec: RouteSpec, slot: int) -> Variant:
    """The variant whose bucket range holds `slot`."""
    edge = 0
    for variant in spec.variants:
        edge += variant.weight * PER_PERCENT
        if slot < edge:
            return variant
    return spec.stable  # unreachable while weights sum to 100
