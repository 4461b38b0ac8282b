"""Weights of PyTorch attention layers in this package's multi-head layout, as JAX arrays."""

import jax
import jax.numpy as jnp

import attention_np.torch_weights as _np


def multi_head_params_from_torch(module_or_state_dict, num_heads=None, *, num_kv_heads=None):
    """As ``attention_np.multi_head_params_from_torch`` (``torch.nn.MultiheadAttention``, the
    ``q_proj``/``k_proj``/``v_proj``/``o_proj`` of Llama, Mistral, Qwen2 and gpt-oss, BERT,
    GPT-2's ``Conv1D``, T5), with ``jax.Array`` leaves (the dtype of the given weights), for
    :func:`attention_jax.multi_head_attention`."""
    params = _np.multi_head_params_from_torch(module_or_state_dict, num_heads, num_kv_heads=num_kv_heads)
    return jax.tree.map(jnp.asarray, params)
