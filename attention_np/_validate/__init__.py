"""Shape and dtype validation shared by both halves, one file a concern:

- :mod:`.engine`: :class:`Shapes` and the checks every mechanism shares;
- :mod:`.dot_product`: ``scaled_dot_product_attention`` and its options;
- :mod:`.flex`: ``flex_attention``, its mods, sinks and block masks;
- :mod:`.multi_head`: ``multi_head_attention`` and incremental decoding;
- :mod:`.mechanisms`: the tutorial's mechanisms;
- :mod:`.seq2seq`: the encoder - attention - decoder model;
- :mod:`.varlen`: ``varlen_attention``, packed sequences sliced by ``cu_seqlens``;
- :mod:`.paged`: the paged KV cache, ``paged_kv_write`` and ``paged_attention``.

Pure Python on ``.shape`` and ``.dtype``: no array math, so the JAX half calls the very
same checks while it traces a function (they cost nothing at run time) and both halves
raise the same exception type with the same message by construction.

Shapes are written with docs/design.md's letters::

    B batch, T query length, S key/value length, N query heads, K key/value heads,
    H features per head, E model width (multi-head attention: E_kv the key/value
    inputs' width, F the output's).

A :class:`Shapes` object binds letters to sizes as arguments are checked, and remembers
which argument each size came from, so a mismatch reads e.g.::

    key must have shape (B, S, K, H) with B=2, H=11 from query; got (2, 5, 3, 7)
"""

from .dot_product import (  # noqa: F401
    check_dropout,
    check_sdpa,
    check_sdpa_extras,
    check_sdpa_options,
    check_seq_lengths,
    check_soft_cap,
    check_window,
)
from .engine import (  # noqa: F401
    BATCH,
    FLOAT_DTYPES,
    Shapes,
    batch_letters,
    check_bias,
    check_broadcast,
    check_choice,
    check_float,
    check_heads,
    check_key_value,
    check_mask,
    check_mask_dtype,
    check_optional_mask,
    check_params,
    check_same_dtype,
    check_scale,
    is_scalar_array,
)
from .flex import check_block_mask, check_flex  # noqa: F401
from .mechanisms import (  # noqa: F401
    ADDITIVE_SPEC,
    CONCAT_SPEC,
    GENERAL_SPEC,
    LOCATION_SENSITIVE_SPEC,
    LOCATION_SPEC,
    PROJECTION_SPEC,
    SCORES,
    check_additive,
    check_alignment_weights,
    check_cross_attention,
    check_hard,
    check_local,
    check_location_sensitive,
    check_luong,
    check_scores,
    check_self_attention,
    check_soft,
    score_spec,
)
from .multi_head import (  # noqa: F401
    MULTI_HEAD_LAYERS,
    MULTI_HEAD_NORMS,
    MULTI_HEAD_SPEC,
    check_kv_cache_step,
    check_multi_head,
    check_multi_head_params,
    multi_head_used,
)
from .paged import (  # noqa: F401
    check_paged_attention,
    check_paged_attention_values,
    check_paged_sizes,
    check_paged_write,
    check_paged_write_values,
)
from .seq2seq import (  # noqa: F401
    GRU_SPEC,
    SEQ2SEQ_ATTENTIONS,
    check_decode_options,
    check_ids,
    check_seq2seq,
)
from .varlen import check_cu_seqlens, check_varlen  # noqa: F401
