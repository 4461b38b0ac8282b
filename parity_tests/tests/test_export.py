"""``jax.export`` with a symbolic batch size, as ``jax.nn.dot_product_attention`` allows: every
path exports (the shared shape checks decide what they can on symbolic sizes), and the
exported function called with a concrete batch gives the direct call's numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export

import attention_jax
from attention_jax.nnx import MultiHeadAttention
from attention_np.mods import causal_mask

T, S, N, K, H, E = 4, 6, 4, 2, 8, 8
rng = np.random.default_rng(0)
BATCH = 3
QUERY, KEY, VALUE = (jnp.asarray(rng.normal(size=(BATCH, L, n, H)), jnp.float32) for L, n in ((T, N), (S, K), (S, K)))
MASK = jnp.asarray(rng.random((BATCH, 1, T, S)) < 0.7)
LENGTHS = jnp.array([4, 2, 0], jnp.int32)
IDS_Q, IDS_KV = jnp.array([[0, 0, 1, 1]] * BATCH, jnp.int32), jnp.array([[0, 0, 0, 1, 1, 1]] * BATCH, jnp.int32)
OPTIONS = dict(is_causal=True, local_window_size=(2, 1))

PATHS = {
    "dot_product_attention dense": lambda q, k, v, m, n: attention_jax.dot_product_attention(
        q, k, v, mask=m, key_value_seq_lengths=n, implementation="dense", **OPTIONS),
    "dot_product_attention chunked": lambda q, k, v, m, n: attention_jax.dot_product_attention(
        q, k, v, mask=m, key_value_seq_lengths=n, implementation="chunked", **OPTIONS),
    "dot_product_attention None": lambda q, k, v, m, n: attention_jax.dot_product_attention(
        q, k, v, mask=m, query_seq_lengths=n, **OPTIONS),
    "scaled_dot_product_attention": lambda q, k, v, m, n: attention_jax.scaled_dot_product_attention(
        q, k, v, mask=m, key_value_seq_lengths=n, **OPTIONS)[0],
    "chunked_attention segments": lambda q, k, v, m, n: attention_jax.chunked_attention(
        q, k, v, query_segment_ids=IDS_Q[:1].repeat(q.shape[0], 0), key_value_segment_ids=IDS_KV[:1].repeat(
            q.shape[0], 0), block_sizes=(2, 3)),
    "flex_attention": lambda q, k, v, m, n: attention_jax.flex_attention(q, k, v, mask_mod=causal_mask),
}


def _spec(x, b):
    return jax.ShapeDtypeStruct((b,) + x.shape[1:], x.dtype)


@pytest.mark.parametrize("path", PATHS)
def test_every_path_exports_with_a_symbolic_batch(path):
    b, = export.symbolic_shape("b")
    fn = jax.jit(PATHS[path])
    args = (QUERY, KEY, VALUE, MASK, LENGTHS)
    exported = export.export(fn)(*(_spec(x, b) for x in args))
    assert str(exported.in_avals[0].shape[0]) == "b"
    np.testing.assert_allclose(exported.call(*args), fn(*args), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(exported.call(*(x[:2] for x in args)), fn(*(x[:2] for x in args)), rtol=1e-6, atol=1e-6)


def test_the_module_exports_with_a_symbolic_batch():
    module = MultiHeadAttention(N, E, num_kv_heads=K, rotary=True, use_sinks=True, decode=False, rngs=nnx.Rngs(0))
    graph, state = nnx.split(module)
    call = jax.jit(lambda state, x, lengths: nnx.merge(graph, state)(x, is_causal=True, query_seq_lengths=lengths,
                                                                       key_value_seq_lengths=lengths))
    b, = export.symbolic_shape("b")
    x = jnp.asarray(rng.normal(size=(BATCH, T, E)), jnp.float32)
    lengths = jnp.array([4, 3, 1], jnp.int32)
    exported = export.export(call)(state, _spec(x, b), _spec(lengths, b))
    np.testing.assert_allclose(exported.call(state, x, lengths), call(state, x, lengths), rtol=1e-6, atol=1e-6)


def test_a_symbolic_batch_that_cannot_match_is_still_an_error():
    b, c = export.symbolic_shape("b, c")
    with pytest.raises(ValueError, match="key must have shape"):
        export.export(jax.jit(attention_jax.dot_product_attention))(_spec(QUERY, b), _spec(KEY, c), _spec(VALUE, c))
