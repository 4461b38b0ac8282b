"""The fast paths: what runs when speed and memory matter, beside the line-by-line mirrors of
the NumPy reference at the top level of :mod:`attention_jax`.

- :mod:`.dispatch`: :func:`dot_product_attention`, the ``jax.nn``-compatible entry point that
  picks a path by a documented rule;
- :mod:`.dense`: the CPU-tuned dense path (:func:`dense_attention`), with :mod:`._fused` its
  fused masking and softmax;
- :mod:`.online_softmax`: the running maximum and sum that blockwise paths share;
- :mod:`.chunked`: memory-efficient attention in O(T + S) memory, forward and backward, and
  flex attention on the same kernels;
- :mod:`.varlen`: :func:`varlen_attention`, packed sequences through the chunked kernels;
- :mod:`.paged`: ``paged_attention`` reading only the pages each row uses (the mirror of the
  NumPy reference, :func:`attention_jax.paged_attention`, gathers every row's pages).

Every public name here is importable from :mod:`attention_jax` itself, except
``fast.paged.paged_attention``, whose top-level name is the mirror's.
"""
