"""T5's relative position bias (attention_np.mods: t5_relative_position_bucket,
t5_relative_position_bias as a score_mod, t5_position_bias as a bias array): equal to Hugging
Face's ``T5Attention`` (its bucket function and ``compute_bias``, transcribed in PyTorch below),
by hand on closed forms, and the same in both halves: flex_attention (NumPy, the dense JAX
mirror, the blocked path under jit and grad, x64 on and off) and scaled dot-product attention
with the bias array. The PyTorch tests are skipped without torch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
import attention_np
from attention_np.mods import (
    causal_mask,
    t5_position_bias,
    t5_relative_position_bias,
    t5_relative_position_bucket,
)
from parity_tests import check_port

B, T, S, N, H = 2, 7, 11, 3, 5  # T < S: cross-attention shapes, keys ahead and behind
CONFIGS = [(32, 128, True), (32, 128, False), (8, 16, True), (6, 20, False), (33, 64, True), (64, 1000, False)]


def hf_relative_position_bucket(torch, relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """transformers' ``T5Attention._relative_position_bucket``, as written there."""
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1))
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


def hf_compute_bias(torch, table, query_length, key_length, *, bidirectional, num_buckets, max_distance):
    """transformers' ``T5Attention.compute_bias`` (no cache), with the embedding's weight ``table``."""
    context_position = torch.arange(query_length, dtype=torch.long)[:, None]
    memory_position = torch.arange(key_length, dtype=torch.long)[None, :]
    relative_position = memory_position - context_position                               # (T, S)
    bucket = hf_relative_position_bucket(torch, relative_position, bidirectional=bidirectional, num_buckets=num_buckets,
                                         max_distance=max_distance)
    values = torch.nn.functional.embedding(bucket, table)                                # (T, S, N)
    return values.permute([2, 0, 1]).unsqueeze(0)                                        # (1, N, T, S)


@pytest.mark.parametrize("num_buckets, max_distance, bidirectional", CONFIGS)
def test_buckets_equal_hugging_face_in_both_halves_x64_on_and_off(num_buckets, max_distance, bidirectional):
    """Every relative position in [-3000, 3000): the same bucket as transformers', in NumPy
    and in JAX (jit, x64 on and off: the logarithm is float32 there too)."""
    torch = pytest.importorskip("torch")
    relative = np.arange(-3000, 3000)
    options = dict(num_buckets=num_buckets, max_distance=max_distance, bidirectional=bidirectional)
    expected = hf_relative_position_bucket(torch, torch.from_numpy(relative), **options).numpy()
    np.testing.assert_array_equal(t5_relative_position_bucket(relative, **options), expected)
    bucket = jax.jit(lambda r: t5_relative_position_bucket(r, **options))
    for x64 in (True, False):
        with jax.enable_x64(x64):
            np.testing.assert_array_equal(np.asarray(bucket(jnp.asarray(relative))), expected)


def test_buckets_by_hand():
    """Closed forms. T5's defaults, bidirectional: 16 buckets a direction, 8 exact, then
    ``8 + floor(8 log(d / 8) / log(16)) = 8 + floor(2 log2(d / 8))``, at most 15; keys ahead
    add 16. Unidirectional (the decoder): 32 buckets, 16 exact, then
    ``16 + floor(16 log(d / 16) / log(8))`` (``= 16 + floor(16/3 log2(d / 16))``), at most
    31; a key ahead of the query is distance 0."""
    d = np.array([0, 1, 7, 8, 15, 16, 31, 32, 64, 127, 128, 500])
    behind = [0, 1, 7, 8, 9, 10, 11, 12, 14, 15, 15, 15]          # 8 + floor(2 log2(d / 8)) from d = 8
    np.testing.assert_array_equal(t5_relative_position_bucket(-d, num_buckets=32, max_distance=128, bidirectional=True),
                                  behind)
    np.testing.assert_array_equal(t5_relative_position_bucket(d, num_buckets=32, max_distance=128, bidirectional=True),
                                  [0] + [16 + b for b in behind[1:]])
    d = np.array([0, 15, 16, 32, 64, 127, 128, 1000])
    np.testing.assert_array_equal(t5_relative_position_bucket(-d, num_buckets=32, max_distance=128, bidirectional=False),
                                  [0, 15, 16, 21, 26, 31, 31, 31])   # 16 + floor(16 k / 3) at d = 16 * 2^k
    np.testing.assert_array_equal(t5_relative_position_bucket(d, num_buckets=32, max_distance=128, bidirectional=False),
                                  np.zeros(len(d), int))


@pytest.mark.parametrize("num_buckets, max_distance, bidirectional", CONFIGS[:4])
def test_the_bias_array_equals_compute_bias_in_both_halves(num_buckets, max_distance, bidirectional):
    torch = pytest.importorskip("torch")
    options = dict(num_buckets=num_buckets, max_distance=max_distance, bidirectional=bidirectional)
    table = np.random.default_rng(0).normal(size=(num_buckets, N))
    expected = hf_compute_bias(torch, torch.from_numpy(table), 40, 300, **options).numpy()
    bias = t5_position_bias(table, 40, 300, **options)
    assert bias.shape == (1, N, 40, 300) and isinstance(bias, np.ndarray)
    np.testing.assert_array_equal(bias, expected)
    bias_jax = jax.jit(lambda table: t5_position_bias(table, 40, 300, **options))(jnp.asarray(table))
    assert isinstance(bias_jax, jax.Array)
    np.testing.assert_array_equal(np.asarray(bias_jax), expected)


def test_the_bias_arrays_gradient_counts_each_buckets_uses():
    """d sum(cotangent * bias) / d table[b, h] is the sum of the cotangent where entry (t, s) of
    head h falls in bucket b."""
    options = dict(num_buckets=8, max_distance=16, bidirectional=True)
    table = jnp.asarray(np.random.default_rng(1).normal(size=(8, N)))
    cotangent = np.random.default_rng(2).normal(size=(1, N, T, S))
    grad = jax.grad(lambda table: jnp.sum(t5_position_bias(table, T, S, **options) * cotangent))(table)
    bucket = t5_relative_position_bucket(np.arange(S)[None, :] - np.arange(T)[:, None], **options)    # (T, S)
    expected = np.stack([[cotangent[0, h][bucket == b].sum() for h in range(N)] for b in range(8)])
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-12, atol=1e-12)


def _inputs(dtype=np.float64):
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(B, T, N, H)), rng.normal(size=(B, S, N, H)), rng.normal(size=(B, S, N, H))
    table = rng.normal(size=(32, N))
    return (q.astype(dtype), k.astype(dtype), v.astype(dtype)), table


def upcast(torch, scores):
    """T5Attention's ``scores.float()`` (its softmax in float32 for half precision), except that
    float64 stays float64: the float64 reference would otherwise be float32's."""
    return scores if scores.dtype == torch.float64 else scores.float()


def hf_attention_core(torch, q, k, v, position_bias):
    """T5Attention's forward between the projections: logits unscaled plus the bias, softmax, values."""
    heads_first = lambda x: torch.from_numpy(x).transpose(1, 2)                         # (B, N, L, H)
    scores = heads_first(q) @ heads_first(k).transpose(3, 2) + position_bias
    weights = torch.softmax(upcast(torch, scores), dim=-1).type_as(scores)
    return (weights @ heads_first(v)).transpose(1, 2).numpy()                           # (B, T, N, H)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_flex_with_the_score_mod_equals_t5_attention_and_the_bias_array_in_both_halves(bidirectional):
    """float64: T5's attention core (PyTorch, transcribed) = NumPy flex with the score_mod = the
    dense JAX mirror = the blocked JAX path (jit) = scaled_dot_product_attention with the bias
    array, both halves; all with scale=1.0, as T5 does not scale."""
    torch = pytest.importorskip("torch")
    (q, k, v), table = _inputs()
    options = dict(num_buckets=32, max_distance=128, bidirectional=bidirectional)
    expected = hf_attention_core(torch, q, k, v, hf_compute_bias(torch, torch.from_numpy(table), T, S, **options))
    mod = t5_relative_position_bias(table, **options)
    bias = t5_position_bias(table, T, S, **options)
    results = {
        "numpy flex": attention_np.flex_attention(q, k, v, score_mod=mod, scale=1.0),
        "jax flex mirror": attention_jax.flex.flex_attention(q, k, v, score_mod=mod, scale=1.0),
        "jax flex": jax.jit(lambda q, k, v: attention_jax.flex_attention(q, k, v, score_mod=mod, scale=1.0))(q, k, v),
        "numpy bias": attention_np.scaled_dot_product_attention(q, k, v, bias=bias, scale=1.0)[0],
        "jax bias": attention_jax.scaled_dot_product_attention(q, k, v, bias=jnp.asarray(bias), scale=1.0)[0],
    }
    for name, out in results.items():
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-12, err_msg=name)


def test_the_tables_gradient_through_blocked_flex_equals_through_the_bias_array():
    """jax.grad with respect to the table, the query and the key: through the blocked flex path
    (the mod closes over the traced table) and through the bias array in
    scaled_dot_product_attention; with a causal mask, float64 and float32."""
    (q, k, v), table = _inputs()
    options = dict(num_buckets=32, max_distance=128, bidirectional=False)
    cotangent = np.random.default_rng(4).normal(size=(B, T, N, H))
    causal = np.tril(np.ones((T, S), bool))

    def flex_loss(table, q, k):
        out = attention_jax.flex_attention(q, k, v.astype(q.dtype), score_mod=t5_relative_position_bias(table, **options),
                                           mask_mod=causal_mask, scale=1.0)
        return jnp.sum(out * cotangent.astype(q.dtype))

    def bias_loss(table, q, k):
        out, _ = attention_jax.scaled_dot_product_attention(q, k, v.astype(q.dtype), bias=t5_position_bias(table, T, S, **options),
                                                            mask=causal, scale=1.0)
        return jnp.sum(out * cotangent.astype(q.dtype))

    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        args = (jnp.asarray(table, dtype), jnp.asarray(q, dtype), jnp.asarray(k, dtype))
        with jax.default_matmul_precision("highest"):
            flex = jax.jit(jax.grad(flex_loss, argnums=(0, 1, 2)))(*args)
            dense = jax.jit(jax.grad(bias_loss, argnums=(0, 1, 2)))(*args)
        for a, b, name in zip(flex, dense, ("table", "query", "key")):
            assert np.abs(np.asarray(a)).max() > 0, name
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol, err_msg=f"{dtype.__name__} {name}")


def test_a_t5_attention_layer_ported_through_check_port_with_the_tables_gradient():
    """T5's self-attention layer in PyTorch (q, k, v, o without biases, the bias from its
    ``relative_attention_bias`` embedding, no scaling), ported to JAX with the score_mod:
    outputs and every gradient, the table's included through the parameter map, float32 and
    bfloat16."""
    torch = pytest.importorskip("torch")
    E, num_buckets, max_distance = N * H, 32, 128

    class T5Attention(torch.nn.Module):  # the layer's forward, without its cache and its pruning
        def __init__(self, is_decoder):
            super().__init__()
            self.is_decoder = is_decoder
            self.q, self.k, self.v, self.o = (torch.nn.Linear(E, E, bias=False) for _ in range(4))
            self.relative_attention_bias = torch.nn.Embedding(num_buckets, N)

        def forward(self, hidden_states):
            b, t, _ = hidden_states.shape
            split = lambda x: x.view(b, t, N, H).transpose(1, 2)
            q, k, v = split(self.q(hidden_states)), split(self.k(hidden_states)), split(self.v(hidden_states))
            bias = hf_compute_bias(torch, self.relative_attention_bias.weight, t, t, bidirectional=not self.is_decoder,
                                   num_buckets=num_buckets, max_distance=max_distance)
            scores = q @ k.transpose(3, 2) + bias
            weights = torch.softmax(upcast(torch, scores), dim=-1).type_as(scores)
            return self.o((weights @ v).transpose(1, 2).reshape(b, t, E))

    def to_port(state):
        split = lambda w: w.T.reshape(E, N, H)
        return {"q": split(state["q.weight"]), "k": split(state["k.weight"]), "v": split(state["v.weight"]),
                "o": state["o.weight"].T.reshape(N, H, E), "table": state["relative_attention_bias.weight"]}

    def port(params, hidden_states, *, is_decoder):
        q, k, v = (jnp.einsum("BTE,ENH->BTNH", hidden_states, params[n]) for n in "qkv")
        mod = t5_relative_position_bias(params["table"], num_buckets=num_buckets, max_distance=max_distance,
                                        bidirectional=not is_decoder)
        out = attention_jax.flex_attention(q, k, v, score_mod=mod, scale=1.0)
        return jnp.einsum("BTNH,NHE->BTE", out, params["o"])

    torch.manual_seed(0)
    x = np.random.default_rng(5).normal(size=(B, 40, E))   # 40 positions: distances past the 8 exact buckets
    for is_decoder in (False, True):
        report = check_port(T5Attention(is_decoder), lambda params, x: port(params, x, is_decoder=is_decoder), (x,),
                            params=to_port, dtypes=("float32", "bfloat16"))
        assert report.passed and not report.untested, str(report)
        assert "grad.params.table" in {c.name for c in report.checks}


@pytest.mark.parametrize("call, message", [
    (lambda: t5_relative_position_bias(np.zeros((N, 32)), num_buckets=32, max_distance=128, bidirectional=True),
     r"table must have shape \(num_buckets, N\) with num_buckets=32; got \(3, 32\)"),
    (lambda: t5_position_bias(np.zeros(32), 3, 5, num_buckets=32, max_distance=128, bidirectional=True),
     r"table must have shape \(num_buckets, N\) with num_buckets=32; got \(32,\)"),
    (lambda: t5_relative_position_bucket(np.arange(3), num_buckets=3, max_distance=128, bidirectional=True),
     "num_buckets must be at least 4 .bidirectional.; got 3"),
    (lambda: t5_relative_position_bucket(np.arange(3), num_buckets=1, max_distance=128, bidirectional=False),
     "num_buckets must be at least 2 .one direction.; got 1"),
    (lambda: t5_relative_position_bucket(np.arange(3), num_buckets=32, max_distance=8, bidirectional=True),
     r"max_distance must exceed the 8 exact buckets of num_buckets=32 \(bidirectional=True\); got 8"),
])
def test_errors_name_what_is_wrong(call, message):
    """What would divide by zero in Hugging Face's formula (log(max_distance / max_exact) = 0,
    or max_exact = 0) is refused, as is a table in the (N, num_buckets) layout."""
    with pytest.raises(ValueError, match=message):
        call()
