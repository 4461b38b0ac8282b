"""The keys no query attends: padding, zeroed before the loops (as in the dense path), so that
NaN or inf stored there cannot reach the output or the gradients. Which entries of a block
are attended is :mod:`.logits`' (per element) and :mod:`.sparse`'s (per block)."""

import jax
import jax.numpy as jnp
from jax import lax


def zero_unattended(ops, rows, cfg, has_kv_lengths):
    """``ops`` with the keys and values no query attends set to 0: those the caller's mask or the
    causal mask leave to no query, past a row's length, of a segment no query has."""
    Sp = ops.k.shape[2]
    keep = attended_keys(ops.mask, cfg, Sp)                                       # (B|1, K|1, Sp|1)
    if cfg.has_segments:
        in_segment = segment_attended_keys(rows, cfg, Sp)                          # (B, 1, Sp)
        keep = in_segment if keep is None else keep & in_segment
    if has_kv_lengths:
        in_length = lax.broadcasted_iota(jnp.int32, (1, 1, Sp), 2) < rows.kvlen[:, :, None]  # (B, 1, Sp)
        keep = in_length if keep is None else keep & in_length
    if keep is None:
        return ops
    return ops._replace(k=jnp.where(keep[..., None], ops.k, 0), v=jnp.where(keep[..., None], ops.v, 0))


def attended_keys(mask, cfg, Sp):
    """``(B|1, K|1, Sp|1)``: True where a query of some head of the key/value head may attend
    key s (the caller's mask in rows layout, and the causal mask). Keys no query attends
    (padding) are zeroed before the loops, as in the dense path, so NaN or inf stored there
    cannot reach the output or the gradients; None when every key is attended."""
    s = lax.broadcasted_iota(jnp.int32, (1, 1, Sp), 2)                            # key index
    if mask is None:
        return s < cfg.T if cfg.is_causal else None                               # query T-1 sees keys <= T-1
    if not cfg.is_causal:
        return mask.any(axis=(2, 3))
    if mask.shape[2] == 1:                                                        # the same for every query
        return mask.any(axis=(2, 3)) & (s < cfg.T)
    t = lax.broadcasted_iota(jnp.int32, (1, 1, mask.shape[2], 1, 1), 2)           # query index
    if mask.shape[4] == 1:                                                        # the same for every key
        last = jnp.where(mask, t, -1).max(axis=(2, 3))                            # last query that attends at all
        return s <= last
    return (mask & (lax.broadcasted_iota(jnp.int32, (1, 1, 1, 1, Sp), 4) <= t)).any(axis=(2, 3))


def segment_attended_keys(rows, cfg, Sp):
    """``(B, 1, Sp)``: True where some real query (``t < T`` and its row's length; ``t >= s``
    with ``is_causal``) has key s's segment id: the keys that segment ids leave to no query
    are padding, zeroed as the others. Found by sorting each row's query ids (stable, so the
    last of equal ids is the latest query) and a binary search per key: O((T + S) log T)."""
    t = jnp.arange(cfg.T)
    query_ids = jnp.where(t < rows.qlen, rows.qseg[:, 0, :cfg.T], jnp.iinfo(jnp.int32).min)   # (B, T)
    key_ids = rows.kseg[:, 0]                                                                  # (B, Sp)
    order = jnp.argsort(query_ids, axis=1, stable=True)
    ids = jnp.take_along_axis(query_ids, order, axis=1)                                        # sorted
    last = jnp.clip(jax.vmap(lambda a, x: jnp.searchsorted(a, x, side="right"))(ids, key_ids) - 1, 0)  # (B, Sp)
    found = jnp.take_along_axis(ids, last, axis=1) == key_ids
    if cfg.is_causal:  # the latest query of that segment comes at or after the key
        found = found & (jnp.take_along_axis(order, last, axis=1) >= jnp.arange(Sp))
    return found[:, None, :]
