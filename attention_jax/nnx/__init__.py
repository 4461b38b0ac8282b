"""Flax NNX modules.

- :mod:`.tutorial`: the tutorial's mechanisms (additive, self, cross, global, local,
  location-sensitive attention and the encoder-decoder), each a thin owner of its
  functional twin's parameter dict;
- :mod:`.multi_head`: :class:`MultiHeadAttention`, a drop-in for
  ``flax.nnx.MultiHeadAttention``.
"""

from .multi_head import MultiHeadAttention
from .tutorial import (
    AdditiveAttention,
    CrossAttention,
    GlobalAttention,
    LocalAttention,
    LocationSensitiveAttention,
    ParamTree,
    SelfAttention,
    Seq2Seq,
)

__all__ = [
    "AdditiveAttention", "CrossAttention", "GlobalAttention", "LocalAttention", "LocationSensitiveAttention",
    "MultiHeadAttention", "ParamTree", "SelfAttention", "Seq2Seq",
]
