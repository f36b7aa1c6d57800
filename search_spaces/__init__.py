"""Search spaces: one module a space, mapping named decisions to and from a genotype.

>>> space = get_space("nasfpn", cells=7)
>>> genotype = space.sample(trial)          # asks trial.suggest_categorical(...) only
>>> space.encode(genotype)                  # the decisions back; GenotypeError if not a point
"""

from __future__ import annotations

import inspect
from typing import Any

from search_spaces.base import SearchSpace
from search_spaces.fusion import FusionSpace
from search_spaces.nasfpn import NasFpnSpace

SPACES: dict[str, type[SearchSpace]] = {space.name: space for space in (NasFpnSpace, FusionSpace)}


def get_space(name: str, **options: Any) -> SearchSpace:
    """The space ``name`` with ``options`` (its constructor's arguments).

    KeyError listing the known spaces for an unknown name; ValueError with a one-line message
    for an unknown option or a bad value.
    """
    try:
        space = SPACES[name]
    except KeyError:
        raise KeyError(f"unknown search space {name!r} (known: {', '.join(SPACES)})") from None
    known = list(inspect.signature(space).parameters)
    for option in options:
        if option not in known:
            raise ValueError(f"search space {name!r} has no option {option!r} (options: {', '.join(known)})")
    return space(**options)


__all__ = ["SPACES", "FusionSpace", "NasFpnSpace", "SearchSpace", "get_space"]
