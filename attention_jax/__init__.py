"""attention_jax: the mechanisms of ``attention_np`` in JAX, jit-compiled, for research code.

Same function names, signatures and parameter dicts as ``attention_np`` (a line-by-line
mirror of its code); shape and dtype validation is shared with it
(``attention_np._validate``), so both halves raise the same errors. Parameter dicts
convert with ``jax.tree.map(jnp.asarray, np_params)``. JAX-only extras:
``hard_attention(..., straight_through=True)``, ``multi_head_params_from_flax``,
``chunked_attention`` (memory-efficient attention with its own backward pass),
``dot_product_attention`` (``jax.nn.dot_product_attention``'s signature plus dropout, on
the fastest correct path) and ``attention_jax.nnx.MultiHeadAttention`` (a drop-in for
``flax.nnx.MultiHeadAttention``).
"""

from . import nnx  # noqa: F401  (Flax NNX modules: attention_jax.nnx.AdditiveAttention, Seq2Seq)
from .additive import additive_attention, additive_params_from_torch, init_additive_params
from .cross_attention import cross_attention, init_cross_attention_params
from .diagnostics import alignment_diagnostics
from .dot_product import scaled_dot_product_attention
from .fast.chunked import BlockMask, chunked_attention, create_block_mask, flex_attention
from .fast.dispatch import dot_product_attention
from .fast.varlen import varlen_attention
from .global_attention import global_attention, init_global_params
from .hard import hard_attention
from .kv_cache import init_kv_cache, multi_head_attention_step
from .local_attention import init_local_params, local_attention
from .location import init_location_sensitive_params, location_scores, location_sensitive_attention
from .multi_head import init_multi_head_params, multi_head_attention, multi_head_params_from_flax
from .paged import init_paged_kv_cache, paged_attention, paged_kv_write
from .parallel.layouts import zigzag_permutation
from .parallel.ring import ring_attention
from .parallel.ulysses import ulysses_attention
from .rotary import apply_rotary
from .scores import (
    concat_scores,
    cosine_scores,
    dot_scores,
    general_scores,
    init_concat_params,
    init_general_params,
    scaled_dot_scores,
)
from .self_attention import init_self_attention_params, self_attention
from .seq2seq import greedy_decode, init_seq2seq_params, seq2seq_forward
from .soft import soft_attention
from .torch_weights import multi_head_params_from_torch
from .transformer import (
    init_transformer_decoder_params,
    init_transformer_encoder_params,
    sinusoidal_positions,
    transformer_decoder_layer,
    transformer_encoder_layer,
)

__all__ = [
    "apply_rotary",
    "alignment_diagnostics",
    "additive_attention",
    "additive_params_from_torch",
    "BlockMask",
    "chunked_attention",
    "create_block_mask",
    "flex_attention",
    "concat_scores",
    "cosine_scores",
    "cross_attention",
    "dot_product_attention",
    "dot_scores",
    "general_scores",
    "greedy_decode",
    "global_attention",
    "hard_attention",
    "init_additive_params",
    "init_concat_params",
    "init_cross_attention_params",
    "init_general_params",
    "init_kv_cache",
    "init_global_params",
    "init_local_params",
    "init_location_sensitive_params",
    "init_multi_head_params",
    "init_paged_kv_cache",
    "init_self_attention_params",
    "init_seq2seq_params",
    "local_attention",
    "location_scores",
    "location_sensitive_attention",
    "multi_head_attention",
    "multi_head_params_from_torch",
    "multi_head_attention_step",
    "multi_head_params_from_flax",
    "paged_attention",
    "paged_kv_write",
    "scaled_dot_product_attention",
    "scaled_dot_scores",
    "ring_attention",
    "zigzag_permutation",
    "ulysses_attention",
    "self_attention",
    "seq2seq_forward",
    "sinusoidal_positions",
    "soft_attention",
    "transformer_decoder_layer",
    "transformer_encoder_layer",
    "varlen_attention",
    "init_transformer_decoder_params",
    "init_transformer_encoder_params",
]
