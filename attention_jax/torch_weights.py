"""Weights of ``torch.nn.MultiheadAttention`` in this package's multi-head layout, as JAX arrays."""

import jax
import jax.numpy as jnp

import attention_np.torch_weights as _np


def multi_head_params_from_torch(module_or_state_dict, num_heads=None):
    """As ``attention_np.multi_head_params_from_torch``, with ``jax.Array`` leaves (the dtype
    of the given weights), for :func:`attention_jax.multi_head_attention`."""
    return jax.tree.map(jnp.asarray, _np.multi_head_params_from_torch(module_or_state_dict, num_heads))
