"""Memory-efficient attention: online softmax over key chunks, with its own backward pass.

Rabe & Staats 2021, "Self-attention does not need O(n^2) memory"; the forward and backward
recurrences of FlashAttention-2 (Dao 2023, algorithms 1 and 2). The (T, S) score matrix is
never materialised: queries are processed in blocks of ``block_sizes[0]`` rows, keys in
blocks of ``block_sizes[1]``, and only a running max, a running normaliser and an output
accumulator are kept per query row (:mod:`attention_jax.fast.online_softmax`). The backward pass
recomputes each score block from the saved log-sum-exp instead of storing the weights, so
forward and backward both need O(T + S) memory besides one score block.

The package, by concern:

- :mod:`.attention`: the public function and its checks;
- :mod:`.blocks`: :class:`BlockSizes`, the tuned block sizes and how a length is split;
- :mod:`.config`: the static :class:`~.config.Config` and the named operands, per-row and
  saved arrays;
- :mod:`.layout`: the rows layout the kernels read (``to_rows``, ``from_rows``, ``make_rows``);
- :mod:`.sparse`: which blocks are visited, one rule for every caller: block states (empty /
  partial / full) from the options (``option_states``) or a :class:`BlockMask`;
- :mod:`.logits`: a block's entries: logits, the per-element masks of partial blocks, the
  soft-cap and ``score_mod``, dropout;
- :mod:`.closures`: a ``score_mod``/``mask_mod`` traced once and applied per block;
- :mod:`.masks`: the keys no query attends, zeroed before the loops;
- :mod:`.kernels`: the forward and backward kernels;
- :mod:`.vjp`: the ``jax.custom_vjp`` joining them;
- :mod:`.flex`: ``flex_attention``, the same kernels with a ``score_mod``, a ``mask_mod``,
  sinks and a :class:`BlockMask`.
"""

from .attention import chunked_attention
from .blocks import BlockSizes
from .flex import flex_attention
from .sparse import BlockMask, create_block_mask

__all__ = ["BlockMask", "BlockSizes", "chunked_attention", "create_block_mask", "flex_attention"]
