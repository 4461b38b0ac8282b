"""Memory-efficient attention: online softmax over key chunks, with its own backward pass.

Rabe & Staats 2021, "Self-attention does not need O(n^2) memory"; the forward and backward
recurrences of FlashAttention-2 (Dao 2023, algorithms 1 and 2). The (T, S) score matrix is
never materialised: queries are processed in chunks of ``query_chunk_size`` rows, keys in
chunks of ``key_chunk_size``, and only a running max, a running normaliser and an output
accumulator are kept per query row (:mod:`attention_jax.fast.online_softmax`). The backward pass
recomputes each score block from the saved log-sum-exp instead of storing the weights, so
forward and backward both need O(T + S) memory besides one score block.

The package, by concern:

- :mod:`.attention`: the public function, its checks and the rows layout;
- :mod:`.blocks`: :class:`BlockSizes`, the tuned block sizes and how a length is split;
- :mod:`.config`: the static :class:`~.config.Config` and the named per-row and saved arrays;
- :mod:`.masks`: per-block masks (causal, window, padding, lengths, the caller's) and the
  loop bounds that skip blocks no query sees;
- :mod:`.kernels`: the forward and backward kernels;
- :mod:`.vjp`: the ``jax.custom_vjp`` joining them;
- :mod:`.sparse`: :class:`BlockMask`, a mask evaluated per block (empty / partial / full);
- :mod:`.flex`: ``flex_attention``, the same kernels with a ``score_mod``, a ``mask_mod``,
  sinks and block skipping.
"""

from .attention import chunked_attention
from .blocks import BlockSizes
from .flex import flex_attention
from .sparse import BlockMask, create_block_mask

__all__ = ["BlockMask", "BlockSizes", "chunked_attention", "create_block_mask", "flex_attention"]
