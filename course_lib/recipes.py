"""Training recipes: frozen dataclasses that fix everything a trained model depends on.

:class:`course_lib.toy_diffusion.ToyRecipe` and
:class:`course_lib.image_diffusion.ImageRecipe` are recipes. :func:`key` names a
recipe's checkpoint, so a changed recipe trains a new model instead of loading a stale
one; :func:`override` changes some fields and rejects names the recipe does not have.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from typing import Any, TypeVar

R = TypeVar("R")


def key(recipe: Any) -> str:
    """A short hash of every field of ``recipe`` (a dataclass), for file names."""
    return hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode()).hexdigest()[:10]


def override(recipe: R, **fields: object) -> R:
    """``recipe`` with ``fields`` replaced; an unknown field name is an error that lists
    the valid ones."""
    valid = asdict(recipe)  # type: ignore[call-overload]
    unknown = set(fields) - set(valid)
    if unknown:
        raise ValueError(f"Unknown recipe fields {sorted(unknown)}; valid: {sorted(valid)}")
    return replace(recipe, **fields)  # type: ignore[type-var]
