"""attention_np: every attention mechanism of the tutorial, from scratch in NumPy.

Written to be read: one function a mechanism, numbered steps, a shape comment on every
line that changes a shape. It is the oracle the JAX half (``attention_jax``) is tested
against, and imports neither JAX nor PyTorch.
"""

from .additive import additive_attention, additive_params_from_torch, init_additive_params
from .dot_product import scaled_dot_product_attention

__all__ = [
    "additive_attention",
    "additive_params_from_torch",
    "init_additive_params",
    "scaled_dot_product_attention",
]
