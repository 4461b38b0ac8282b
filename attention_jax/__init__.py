"""attention_jax: the mechanisms of ``attention_np`` in JAX, jit-compiled, for research code.

Same function names, signatures and parameter dicts as ``attention_np``; shape and dtype
validation is shared with it (``attention_np._validate``), so both halves raise the same
errors. Parameter dicts convert with ``jax.tree.map(jnp.asarray, np_params)``.
"""

from .additive import additive_attention, additive_params_from_torch, init_additive_params
from .dot_product import scaled_dot_product_attention

__all__ = [
    "additive_attention",
    "additive_params_from_torch",
    "init_additive_params",
    "scaled_dot_product_attention",
]
