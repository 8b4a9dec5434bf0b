"""Prefix affinity: requests whose prompts start alike go to the same replica, within a load bound.

Inference servers (llama.cpp, vLLM, Ollama) keep the key/value cache of prompts they processed
recently, so the next turn of a conversation starts much faster on the replica that served the
last one. Least-in-flight routing scatters a conversation over the replicas and pays its whole
prompt again on each.

The choice is consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018;
KubeAI's PrefixHash): the prompt's key is a point on a ring of the replicas serving the model;
walking clockwise from it, the first replica that is usable and below
`ceil(factor * mean in-flight)` (this request counted) takes it. Every gateway process builds the
same ring from the replicas' names, so all of them send a conversation to the same replica with no
shared state; a replica leaving moves only its own keys.

Each gateway process also remembers, in a bounded LRU (`Placements`), where every recent key was
served, because the bound alone costs the conversations it moves: a chat whose first turn went to
the next replica (its home was full) has its prompt cached there, and the ring would send its next
turn home to compute the whole history again. So a key seen before goes where it was served, while
that replica is usable and below `ceil(move_factor * mean in-flight)`; moving a conversation costs its
whole prompt, so the move factor (2 by default) is looser than the placing one. A first turn is a
miss wherever it goes, so the tight bound lands where it is free: on placing new conversations, which
is also what evens out an uneven hash split over time (the fuller replica has more in flight, so new
chats go elsewhere).

The memory is per process and only matters for conversations a bound or a failure moved: every
gateway process still sends every other conversation to its ring home, so several gateway replicas
agree without sharing anything; one that never saw a moved chat sends it home (one miss, then it is
remembered there).
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from hashlib import blake2b
from typing import Any, Protocol

from gateway.protocol.requests import ChatCompletionRequest, CompletionRequest

VNODES = 64  # points per replica: with 2-8 replicas each owns its share of the ring within a few %
_LEADING_ROLES = ("system", "developer")
_MAX_LEADING = 4  # system/developer messages hashed before the first user turn


class Loaded(Protocol):
    """What the policy reads of a replica."""

    @property
    def name(self) -> str: ...

    in_flight: int


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text identifies the prompt cheaply
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def affinity_key(req: object, prefix_chars: int) -> bytes | None:
    """The routing key of a request: a hash of the part of its prompt that stays fixed over a conversation.

    Chat: the leading system/developer messages and the first user turn, each cut to `prefix_chars`
    (later turns append to the prompt, so turn N and turn N+1 agree on this part; a long system prompt
    shared by every chat does not hide the first turn that tells the chats apart). Completions: the
    prompt's first `prefix_chars`. None (no affinity) for anything else.
    """
    h = blake2b(digest_size=8)
    if isinstance(req, ChatCompletionRequest):
        for msg in req.messages[: _MAX_LEADING + 1]:
            h.update(msg.role.encode())
            h.update(b"\x00")
            h.update(_text(msg.content)[:prefix_chars].encode("utf-8", "surrogatepass"))
            h.update(b"\x1e")
            if msg.role not in _LEADING_ROLES:
                break
        return h.digest()
    if isinstance(req, CompletionRequest):
        prompt = req.prompt if isinstance(req.prompt, str) else (req.prompt[0] if len(req.prompt) == 1 else None)
        if prompt is None:
            return None
        h.update(prompt[:prefix_chars].encode("utf-8", "surrogatepass"))
        return h.digest()
    return None


def _point(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


@lru_cache(maxsize=128)
def _ring(names: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Sorted ring points and the replica owning each; the same on every gateway for the same names."""
    points = sorted((_point(f"{name}#{i}".encode()), name) for name in names for i in range(VNODES))
    return tuple(p for p, _ in points), tuple(n for _, n in points)


def load_cap(loads: Sequence[int], factor: float) -> int:
    """Most requests one replica may hold after taking this one: ceil(factor x mean), this one counted."""
    return math.ceil(factor * (sum(loads) + 1) / len(loads))


class Placements:
    """Where each recent key was last served: an LRU of at most `capacity` keys (about 150 bytes each)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._where: OrderedDict[bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._where)

    def get(self, key: bytes) -> str | None:
        return self._where.get(key)

    def served(self, key: bytes, replica: str) -> None:
        if self.capacity <= 0:
            return
        self._where[key] = replica
        self._where.move_to_end(key)
        if len(self._where) > self.capacity:
            self._where.popitem(last=False)


def pick_bounded(
    key: bytes,
    serving: Sequence[Loaded],
    usable: Callable[[Any], bool],
    factor: float,
    placements: Placements | None = None,
    move_factor: float | None = None,
) -> Loaded | None:
    """The replica for `key`, or None if no usable replica is below the bound.

    A key in `placements` stays where it was served while that replica is usable and below
    `ceil(move_factor x mean in-flight)` (this request counted). Otherwise the ring decides: walking
    from `key`, the first usable replica below `ceil(factor x mean in-flight)`. `serving`: every replica
    serving the model (the ring's members, usable now or not, so a circuit opening moves only that
    replica's keys); `usable`: may this one be tried now. The choice is recorded in `placements`.
    """
    live = [r for r in serving if usable(r)]
    if not live:
        return None
    loads = [r.in_flight for r in live]
    by_name = {r.name: r for r in serving}
    chosen: Loaded | None = None
    last = placements.get(key) if placements is not None else None
    if (
        last is not None
        and (replica := by_name.get(last)) is not None
        and usable(replica)
        and replica.in_flight < load_cap(loads, move_factor or factor)
    ):
        chosen = replica
    else:
        cap = load_cap(loads, factor)
        chosen = _walk_ring(key, by_name, lambda r: usable(r) and r.in_flight < cap)
    if chosen is not None and placements is not None:
        placements.served(key, chosen.name)
    return chosen


def _walk_ring(key: bytes, by_name: dict[str, Loaded], fits: Callable[[Any], bool]) -> Loaded | None:
    points, owners = _ring(tuple(sorted(by_name)))
    start = bisect.bisect_left(points, int.from_bytes(key[:8].ljust(8, b"\x00"), "big"))
    seen: set[str] = set()
    for i in range(len(points)):
        name = owners[(start + i) % len(points)]
        if name in seen:
            continue
        seen.add(name)
        if fits(by_name[name]):
            return by_name[name]
        if len(seen) == len(by_name):
            break
    return None
