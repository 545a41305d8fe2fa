"""Identities as independent attribute draws, with near copies as hard negatives."""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Set, TypeVar

import numpy as np

T = TypeVar("T")
Draw = Callable[[np.random.Generator], Dict[str, object]]


def near_copy(base: T, draw: Draw, hidden: Callable[[T], Set[str]],
              rng: np.random.Generator) -> T:
    """`base` with one or two visible attributes given a new value: a hard negative.

    Attributes that `hidden(base)` names (a bag's colour when there is no bag) are never the
    only change, so a near copy always looks different.
    """
    names = [f.name for f in dataclasses.fields(base) if f.name not in hidden(base)]
    changed = rng.choice(len(names), size=int(rng.integers(1, 3)), replace=False)
    updates = {}
    for i in changed:
        name = names[i]
        value = getattr(base, name)
        while value == getattr(base, name):
            value = draw(rng)[name]
        updates[name] = value
    return dataclasses.replace(base, **updates)


def make_identities(cls: Callable[..., T], num_ids: int, draw: Draw,
                    hidden: Callable[[T], Set[str]], rng: np.random.Generator,
                    near_copy_rate: float = 0.3) -> List[T]:
    """Identities in order; each is either fresh or a near copy of one made before it."""
    identities: List[T] = []
    for _ in range(num_ids):
        if identities and rng.random() < near_copy_rate:
            base = identities[int(rng.integers(len(identities)))]
            identities.append(near_copy(base, draw, hidden, rng))
        else:
            identities.append(cls(**draw(rng)))
    return identities
