"""What peers serve: the capabilities gossip brings, kept in memory for the router's peer step.

Each gossip round a peer states, per model it serves, its free slots and price per 1,000
tokens (and its own view of its speed). Those are claims: this pool uses the free slots and the
price to choose a peer and to know what it will be billed, but never the peer's stated speed —
the speed it ranks peers by is the one it measured on jobs it forwarded there
(:meth:`CapabilityBook.measured`). An offer is live only while its peer gossips and is not
declared dead (``federation/membership.py``); the book lives in memory so that the chat path asks
it without a database query.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

# A model id as the OpenAI API carries it; anything longer is not a model this pool can route.
MAX_MODEL_CHARS = 200
MAX_MODELS_PER_PEER = 256


@dataclass(frozen=True)
class PeerOffer:
    """One model a peer serves, as it last gossiped it, with this pool's own measurement."""

    pool_id: str
    url: str
    model: str
    free_slots: int
    tokens_per_s: float | None
    price_per_1k: int
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The offer as the admin API shows it."""
        return {
            "pool_id": self.pool_id,
            "url": self.url,
            "model": self.model,
            "free_slots": self.free_slots,
            "tokens_per_s": self.tokens_per_s,
            "price_per_1k": self.price_per_1k,
            "updated_at": self.updated_at.isoformat(),
        }


def parse_capabilities(data: Any) -> list[tuple[str, int, int]]:
    """``(model, free_slots, price_per_1k)`` from a peer's gossiped ``capabilities``.

    Entries that are not well formed are dropped one by one (a peer's bad entry must not hide its
    good ones); numbers are clamped to sane bounds. Raises ``ValueError`` when the whole thing is
    not a list of objects.
    """
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ValueError("capabilities must be an object with a list of models")
    parsed: dict[str, tuple[str, int, int]] = {}
    for entry in data["models"][:MAX_MODELS_PER_PEER]:
        if not isinstance(entry, dict):
            continue
        model, slots, price = entry.get("model"), entry.get("free_slots"), entry.get("price_per_1k")
        if not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL_CHARS:
            continue
        if not isinstance(slots, int) or not isinstance(price, int):
            continue
        if isinstance(slots, bool) or isinstance(price, bool):
            continue
        parsed[model] = (model, max(0, min(slots, 1_000_000)), max(0, min(price, 10**12)))
    return list(parsed.values())


class CapabilityBook:
    """Every live peer's offers by model, and this pool's measured speed of each peer."""

    def __init__(self, max_age: timedelta) -> None:
        self.max_age = max_age
        self._offers: dict[str, dict[str, PeerOffer]] = {}
        self._speeds: dict[tuple[str, str], float] = {}
        self._dead: set[str] = set()

    def update(self, pool_id: str, url: str, capabilities: dict[str, Any], now: datetime) -> None:
        """Replace ``pool_id``'s offers with what it just gossiped (``ValueError`` if malformed)."""
        offers = {}
        for model, slots, price in parse_capabilities(capabilities):
            offers[model] = PeerOffer(
                pool_id, url, model, slots, self._speeds.get((pool_id, model)), price, now
            )
        self._offers[pool_id] = offers

    def forget(self, pool_id: str) -> None:
        """Drop a peer's offers (it was removed)."""
        self._offers.pop(pool_id, None)
        self._dead.discard(pool_id)
        self._speeds = {key: v for key, v in self._speeds.items() if key[0] != pool_id}

    def set_dead(self, pool_id: str, dead: bool) -> None:
        """A peer declared dead by the membership quorum offers nothing until it is back."""
        if dead:
            self._dead.add(pool_id)
        else:
            self._dead.discard(pool_id)

    def measured(self, pool_id: str, model: str, tokens_per_s: float) -> None:
        """This pool's measurement of a peer's speed on a job it forwarded there (smoothed)."""
        if not 0 < tokens_per_s < math.inf:
            return
        key = (pool_id, model)
        previous = self._speeds.get(key)
        speed = tokens_per_s if previous is None else 0.7 * previous + 0.3 * tokens_per_s
        self._speeds[key] = speed
        offer = self._offers.get(pool_id, {}).get(model)
        if offer is not None:
            self._offers[pool_id][model] = replace(offer, tokens_per_s=speed)

    def offers(self, model: str, now: datetime | None = None) -> list[PeerOffer]:
        """Live offers of ``model``, best first: free slots, then measured speed, then price."""
        live = [
            offer
            for pool_id, offers in self._offers.items()
            if pool_id not in self._dead
            for offer in offers.values()
            if offer.model == model and (now is None or now - offer.updated_at <= self.max_age)
        ]
        return sorted(live, key=_rank)

    def best(
        self, model: str, exclude: Collection[str] = (), now: datetime | None = None
    ) -> PeerOffer | None:
        """The best live offer of ``model`` with a free slot, from a peer not in ``exclude``."""
        for offer in self.offers(model, now):
            if offer.free_slots > 0 and offer.pool_id not in exclude:
                return offer
        return None

    def models(self, now: datetime | None = None) -> set[str]:
        """Every model some live peer offers."""
        return {
            offer.model
            for pool_id, offers in self._offers.items()
            if pool_id not in self._dead
            for offer in offers.values()
            if now is None or now - offer.updated_at <= self.max_age
        }

    def snapshot(self) -> list[PeerOffer]:
        """Every offer held, dead peers' included (the admin view)."""
        return [offer for offers in self._offers.values() for offer in offers.values()]


def _rank(offer: PeerOffer) -> tuple[int, float, int, str]:
    # A free slot first; then the speed this pool measured (an unmeasured peer counts as 0 and
    # gets jobs when the measured ones are full, which is how it gets measured); then price.
    speed = offer.tokens_per_s if offer.tokens_per_s is not None else 0.0
    return (-min(offer.free_slots, 1), -speed, offer.price_per_1k, offer.pool_id)
