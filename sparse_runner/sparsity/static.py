"""Static sparse training: a random exact-count mask drawn once from the distribution."""
from __future__ import annotations

from .base import SparsityMethod, register


@register("static")
class Static(SparsityMethod):
    """Random mask per layer (counts from the distribution), fixed for the whole run."""
