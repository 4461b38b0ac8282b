"""attention_np: every attention mechanism of the tutorial, from scratch in NumPy.

Written to be read: one function a mechanism, numbered steps, a shape comment on every
line that changes a shape. It is the oracle the JAX half (``attention_jax``) is tested
against, and imports neither JAX nor PyTorch.
"""

from .additive import additive_attention, additive_params_from_torch, init_additive_params
from .backward import additive_attention_vjp, multi_head_attention_vjp, scaled_dot_product_attention_vjp
from .cross_attention import cross_attention, init_cross_attention_params
from .diagnostics import alignment_diagnostics
from .dot_product import scaled_dot_product_attention
from .flex import flex_attention
from .global_attention import global_attention, init_global_params
from .hard import hard_attention
from .kv_cache import init_kv_cache, multi_head_attention_step
from .local_attention import init_local_params, local_attention
from .location import init_location_sensitive_params, location_scores, location_sensitive_attention
from .multi_head import init_multi_head_params, multi_head_attention
from .paged import init_paged_kv_cache, paged_attention, paged_kv_write
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
from .varlen import varlen_attention

__all__ = [
    "apply_rotary",
    "alignment_diagnostics",
    "additive_attention",
    "additive_attention_vjp",
    "additive_params_from_torch",
    "concat_scores",
    "cosine_scores",
    "cross_attention",
    "dot_scores",
    "flex_attention",
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
    "multi_head_attention_vjp",
    "paged_attention",
    "paged_kv_write",
    "scaled_dot_product_attention",
    "scaled_dot_product_attention_vjp",
    "scaled_dot_scores",
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
