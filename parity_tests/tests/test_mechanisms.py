"""Every mechanism of the tutorial against an independent oracle: closed forms, Flax, the
papers' formulas written out here with plain loops, and jax.lax's convolution."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax
import attention_np

from .conftest import HALVES, B, H, K, N, S, T, highest

E, A = 13, 7


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


# --- score functions: the formulas, one (t, s) pair at a time ---------------------------------------
@pytest.mark.parametrize("half", HALVES)
def test_score_functions_match_their_formulas(half, rng, jit):
    lib = HALVES[half]
    q, k = rng.normal(size=(B, T, H)), rng.normal(size=(B, S, H))
    W = rng.normal(size=(H, H))
    concat = attention_np.init_concat_params(rng, H, A, dtype=np.float64)
    Wc, bc, v = concat["attn"]["kernel"], concat["attn"]["bias"], concat["v"]
    got = {
        "dot": lib.dot_scores(q, k),
        "scaled": lib.scaled_dot_scores(q, k),
        "scaled 0.5": lib.scaled_dot_scores(q, k, scale=0.5),
        "general": lib.general_scores({"kernel": W}, q, k),
        "concat": lib.concat_scores(concat, q, k),
    }
    for b in range(B):
        for t in range(T):
            for s in range(S):
                expected = {
                    "dot": q[b, t] @ k[b, s],
                    "scaled": q[b, t] @ k[b, s] / np.sqrt(H),
                    "scaled 0.5": 0.5 * q[b, t] @ k[b, s],
                    "general": q[b, t] @ (k[b, s] @ W),
                    "concat": v @ np.tanh(np.concatenate([q[b, t], k[b, s]]) @ Wc + bc),
                }
                for name, value in expected.items():
                    np.testing.assert_allclose(got[name][b, t, s], value, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("half", HALVES)
def test_concat_scores_with_t1_is_the_tutorial_class(half, rng):
    params = attention_np.init_additive_params(rng, H, dtype=np.float64)
    hidden, encoder_outputs = rng.normal(size=(B, H)), rng.normal(size=(B, S, H))
    scores = HALVES[half].concat_scores(params, hidden[:, None], encoder_outputs)[:, 0]
    _, weights = attention_np.additive_attention(params, hidden, encoder_outputs)
    np.testing.assert_allclose(np.exp(scores) / np.exp(scores).sum(-1, keepdims=True), weights, atol=1e-12)


# --- soft and hard attention -----------------------------------------------------------------------
@pytest.mark.parametrize("half", HALVES)
def test_soft_attention_over_equal_scores_is_the_mean(half, rng, jit):
    values = rng.normal(size=(B, S, H))
    context, weights = HALVES[half].soft_attention(np.full((B, T, S), 3.0), values)
    np.testing.assert_allclose(weights, np.full((B, T, S), 1 / S), atol=1e-12)
    np.testing.assert_allclose(context, np.broadcast_to(values.mean(1, keepdims=True), (B, T, H)), atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_hard_attention_is_one_hot_and_gathers_the_value(half, rng, jit):
    scores, values = rng.normal(size=(B, T, S)), rng.normal(size=(B, S, H))
    mask = rng.random((B, T, S)) < 0.6
    mask[1, 2] = False
    context, weights = HALVES[half].hard_attention(scores, values, mask=mask)
    for b in range(B):
        for t in range(T):
            if not mask[b, t].any():
                assert np.all(np.asarray(weights[b, t]) == 0) and np.all(np.asarray(context[b, t]) == 0)
                continue
            best = max(np.flatnonzero(mask[b, t]), key=lambda s: scores[b, t, s])
            np.testing.assert_array_equal(weights[b, t], np.eye(S)[best])
            np.testing.assert_array_equal(context[b, t], values[b, best])


@pytest.mark.parametrize("half", HALVES)
def test_hard_attention_ties_go_to_the_lowest_index(half, rng):
    scores = np.zeros((1, 1, S))
    scores[0, 0, [1, 3]] = 1.0
    _, weights = HALVES[half].hard_attention(scores, rng.normal(size=(1, S, H)))
    np.testing.assert_array_equal(weights[0, 0], np.eye(S)[1])


def test_gumbel_hard_attention_samples_from_the_softmax():
    # Gumbel-max: argmax(e + g) ~ softmax(e). 20000 draws; 5 standard errors is a tolerance
    # a correct sampler fails with probability < 1e-5 per position.
    rng = np.random.default_rng(0)
    draws = 20000
    scores = np.broadcast_to(np.array([0.5, -1.0, 2.0, 0.0, 1.0]), (draws, 1, S))
    _, weights = attention_np.hard_attention(scores, np.zeros((draws, S, 1)), rng=rng)
    frequency = np.asarray(weights)[:, 0].mean(0)
    p = softmax(scores[0, 0])
    np.testing.assert_array_less(np.abs(frequency - p), 5 * np.sqrt(p * (1 - p) / draws))
    _, weights = attention_jax.hard_attention(scores, np.zeros((draws, S, 1)), rng=jax.random.key(0))
    frequency = np.asarray(weights)[:, 0].mean(0)
    np.testing.assert_array_less(np.abs(frequency - p), 5 * np.sqrt(p * (1 - p) / draws))


def test_straight_through_is_hard_forward_and_soft_backward(rng, jit):
    scores, values = jnp.asarray(rng.normal(size=(B, T, S))), jnp.asarray(rng.normal(size=(B, S, H)))
    noise = jnp.asarray(rng.gumbel(size=(B, T, S)))
    mask = jnp.asarray(rng.random((B, T, S)) < 0.7)
    hard = attention_jax.hard_attention(scores, values, mask=mask, gumbel_noise=noise)
    st = attention_jax.hard_attention(scores, values, mask=mask, gumbel_noise=noise, straight_through=True)
    for a, b in zip(hard, st):
        np.testing.assert_array_equal(a, b)
    # a linear loss makes the cotangent independent of the forward value: the scores get
    # exactly the soft attention's gradient (on softmax(scores + noise)), and the values the
    # gradient of the one-hot weights they were used with, y = one_hot + soft - sg(soft)
    c = jnp.asarray(rng.normal(size=(B, T, H)))
    st_scores, st_values = jax.grad(lambda s, v: jnp.sum(attention_jax.hard_attention(s, v, mask=mask, gumbel_noise=noise, straight_through=True)[0] * c), argnums=(0, 1))(scores, values)
    soft_scores = jax.grad(lambda s: jnp.sum(attention_jax.soft_attention(s + noise, values, mask=mask)[0] * c))(scores)
    np.testing.assert_allclose(st_scores, soft_scores, atol=1e-12)
    np.testing.assert_allclose(st_values, jnp.einsum("BTS,BTH->BSH", hard[1], c), atol=1e-12)
    assert np.any(np.asarray(st_scores) != 0)
    # the returned weights carry the same straight-through gradient: a loss on them reaches the
    # scores as through softmax(scores + noise)
    w = jnp.asarray(rng.normal(size=(B, T, S)))
    st_weights = jax.grad(lambda s: jnp.sum(attention_jax.hard_attention(s, values, mask=mask, gumbel_noise=noise, straight_through=True)[1] * w))(scores)
    soft_weights = jax.grad(lambda s: jnp.sum(attention_jax.soft_attention(s + noise, values, mask=mask)[1] * w))(scores)
    np.testing.assert_allclose(st_weights, soft_weights, atol=1e-12)
    assert np.any(np.asarray(st_weights) != 0)


def test_straight_through_hard_attention_trains(rng):
    # learn scores that pick position 3 for every query: the loss falls to 0
    target = jnp.asarray(rng.normal(size=(1, S, H)))
    scores = jnp.zeros((1, 1, S))

    def loss(scores, rng):
        context, _ = attention_jax.hard_attention(scores, target, rng=rng, straight_through=True)
        return jnp.sum((context[0, 0] - target[0, 3]) ** 2)

    for step in range(200):
        scores = scores - 0.5 * jax.grad(loss)(scores, jax.random.key(step))
    assert int(jnp.argmax(scores)) == 3
    assert float(loss(scores, jax.random.key(999))) == 0.0


# --- self, cross and multi-head attention --------------------------------------------------------------
def _projected(params, x):
    return (x @ params["kernel"] + params["bias"])


@pytest.mark.parametrize("half", HALVES)
def test_self_and_cross_attention_are_sdpa_on_projections(half, rng, jit):
    params = attention_np.init_self_attention_params(rng, E, H, dtype=np.float64)
    x, context = rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))
    mask = rng.random((B, T, S)) < 0.7
    for out, weights, source, m, causal in (
        (*HALVES[half].self_attention(params, x, is_causal=True), x, None, True),
        (*HALVES[half].cross_attention(params, x, context, mask=mask), context, mask, False),
    ):
        q, k, v = _projected(params["query"], x), _projected(params["key"], source), _projected(params["value"], source)
        expected = jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None], mask=None if m is None else m[:, None], is_causal=causal)
        np.testing.assert_allclose(out, expected[:, :, 0], atol=1e-6)  # jax.nn's softmax is float32
        assert weights.shape == (B, T, source.shape[1])


@pytest.mark.parametrize("half", HALVES)
def test_one_head_multi_head_attention_is_self_attention(half, rng, jit):
    single = attention_np.init_self_attention_params(rng, E, H, dtype=np.float64)
    out_kernel, out_bias = rng.normal(size=(H, E)), rng.normal(size=E)
    params = {name: {"kernel": p["kernel"][:, None, :], "bias": p["bias"][None]} for name, p in single.items()}
    params["out"] = {"kernel": out_kernel[None], "bias": out_bias}
    x = rng.normal(size=(B, T, E))
    out, weights = HALVES[half].multi_head_attention(params, x, is_causal=True)
    expected, expected_weights = attention_np.self_attention(single, x, is_causal=True)
    np.testing.assert_allclose(out, expected @ out_kernel + out_bias, atol=1e-12)
    np.testing.assert_allclose(weights[:, 0], expected_weights, atol=1e-12)



@pytest.mark.parametrize("half", HALVES)
def test_multi_head_attention_takes_a_scale(half, rng):
    """``scale`` replaces ``1 / sqrt(H)``: the attention written out here with the logits times
    0.3 (two heads, one key/value head); a NaN scale is the same ValueError in both halves;
    in JAX a 0-d array scale is traced and gets the gradient of central differences."""
    params = attention_np.init_multi_head_params(rng, E, 2, 3, num_kv_heads=1, dtype=np.float64)
    params = jax.tree.map(lambda p: p + 0.2 * rng.normal(size=p.shape), params)
    x = rng.normal(size=(B, T, E))
    project = lambda name: np.einsum("BTE,ENH->BTNH", x, params[name]["kernel"]) + params[name]["bias"]
    q, k, v = project("query"), project("key"), project("value")                    # (B, T, 2|1, 3)
    logits = np.einsum("BTNH,BSH->BNTS", q, k[:, :, 0]) * 0.3
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("BNTS,BSH->BTNH", weights, v[:, :, 0])
    expected = np.einsum("BTNH,NHF->BTF", heads, params["out"]["kernel"]) + params["out"]["bias"]
    module = HALVES[half]
    out, got_weights = module.multi_head_attention(params, x, scale=0.3)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_weights, weights, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="scale must be a finite real number; got nan"):
        module.multi_head_attention(params, x, scale=float("nan"))
    if half == "jax":
        loss = lambda scale: attention_jax.multi_head_attention(params, x, scale=scale)[0].sum()
        eps = 1e-6
        numeric = (loss(0.3 + eps) - loss(0.3 - eps)) / (2 * eps)
        np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(0.3)), numeric, rtol=1e-6)

FLAX_CASES = {
    "self": dict(n=N, k=None, cross=False, mask=False, causal=False),
    "self causal": dict(n=N, k=None, cross=False, mask=False, causal=True),
    "cross mask": dict(n=N, k=None, cross=True, mask=True, causal=False),
    "gqa cross mask": dict(n=6, k=K, cross=True, mask=True, causal=False),
    "gqa self causal": dict(n=6, k=K, cross=False, mask=False, causal=True),
}


@pytest.mark.parametrize("case", FLAX_CASES)
@pytest.mark.parametrize("half", HALVES)
def test_multi_head_attention_matches_flax(half, case, rng):
    c = FLAX_CASES[case]
    module = nnx.MultiHeadAttention(
        num_heads=c["n"], in_features=E, qkv_features=c["n"] * H, num_kv_heads=c["k"],
        decode=False, deterministic=True, rngs=nnx.Rngs(int(rng.integers(1000))),
    )
    # Flax initialises biases to zero; random biases test their layout too
    for layer in (module.query, module.key, module.value, module.out):
        layer.bias[...] = jnp.asarray(rng.normal(size=layer.bias.shape), jnp.float32)
    params = attention_jax.multi_head_params_from_flax(module)
    query = rng.normal(size=(B, T, E)).astype(np.float32)
    key = rng.normal(size=(B, S, E)).astype(np.float32) if c["cross"] else None
    mask = None
    if c["mask"]:
        mask = rng.random((B, 1, T, S)) < 0.7
        mask[..., 0] = True  # Flax averages fully masked rows; we return zeros (docs/design.md section 4)
    with highest():
        expected = module(query, key, mask=None if mask is None else jnp.asarray(mask), is_causal=c["causal"])
        out, _ = HALVES[half].multi_head_attention(jax.tree.map(np.asarray, params), query, key, mask=mask, is_causal=c["causal"])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_multi_head_params_from_flax_accepts_state_and_pure_dict():
    module = nnx.MultiHeadAttention(num_heads=2, in_features=4, qkv_features=6, decode=False, rngs=nnx.Rngs(0))
    from_module = attention_jax.multi_head_params_from_flax(module)
    for source in (nnx.state(module), nnx.to_pure_dict(nnx.state(module))):
        chex.assert_trees_all_equal(attention_jax.multi_head_params_from_flax(source), from_module)
    with pytest.raises(ValueError, match="expected a flax.nnx.MultiHeadAttention"):
        attention_jax.multi_head_params_from_flax({"query": {}})


# --- Luong global and local attention: the paper's equations, one batch element at a time ---------------
def _luong_score(score, p, h, hs, s):
    if score == "dot":
        return h @ hs
    if score == "general":
        return h @ (hs @ p["kernel"])
    if score == "concat":
        return p["v"] @ np.tanh(np.concatenate([h, hs]) @ p["attn"]["kernel"] + p["attn"]["bias"])
    return (h @ p["kernel"])[s]  # location: a_t = softmax(W_a h_t)


def _luong_params(rng, score, local):
    params = attention_np.init_local_params(rng, H, score=score, source_length=S, attention_dim=A, dtype=np.float64)
    return params if local else {k: v for k, v in params.items() if k != "position"}


@pytest.mark.parametrize("score", ["dot", "general", "concat", "location"])
@pytest.mark.parametrize("half", HALVES)
def test_global_attention_follows_luong(half, score, rng, jit):
    params = _luong_params(rng, score, local=False)
    h, encoder_outputs = rng.normal(size=(B, H)), rng.normal(size=(B, S, H))
    mask = np.ones((B, S), bool)
    mask[1, 3:] = False
    attentional, weights = HALVES[half].global_attention(params, h, encoder_outputs, score=score, mask=mask)
    for b in range(B):
        keep = np.flatnonzero(mask[b])
        a = softmax(np.array([_luong_score(score, params["score"], h[b], encoder_outputs[b, s], s) for s in keep]))
        c = a @ encoder_outputs[b, keep]
        np.testing.assert_allclose(weights[b, keep], a, atol=1e-12)
        np.testing.assert_allclose(attentional[b], np.tanh(np.concatenate([c, h[b]]) @ params["combine"]["kernel"]), atol=1e-12)


@pytest.mark.parametrize("score", ["dot", "general", "concat", "location"])
@pytest.mark.parametrize("half", HALVES)
def test_local_attention_follows_luong(half, score, rng, jit):
    D = 1
    params = _luong_params(rng, score, local=True)
    h, encoder_outputs = rng.normal(size=(B, H)), rng.normal(size=(B, S, H))
    attentional, weights = HALVES[half].local_attention(params, h, encoder_outputs, window=D, score=score)
    for b in range(B):
        p_t = S / (1 + np.exp(-(params["position"]["v"] @ np.tanh(h[b] @ params["position"]["kernel"]))))
        window = [s for s in range(S) if p_t - D <= s <= p_t + D]
        align = softmax(np.array([_luong_score(score, params["score"], h[b], encoder_outputs[b, s], s) for s in window]))
        a = np.zeros(S)
        a[window] = align * np.exp(-((np.array(window) - p_t) ** 2) / (2 * (D / 2) ** 2))
        c = a @ encoder_outputs[b]
        np.testing.assert_allclose(weights[b], a, atol=1e-12)
        np.testing.assert_allclose(attentional[b], np.tanh(np.concatenate([c, h[b]]) @ params["combine"]["kernel"]), atol=1e-12)


def test_local_attention_with_a_window_over_the_whole_source_is_gaussian_weighted_global(rng):
    params = _luong_params(rng, "general", local=True)
    h, encoder_outputs = rng.normal(size=(B, H)), rng.normal(size=(B, S, H))
    _, local = attention_np.local_attention(params, h, encoder_outputs, window=S, score="general")
    _, global_weights = attention_np.global_attention(params, h, encoder_outputs, score="general")
    ratio = local / global_weights  # the Gaussian factor, in (0, 1]
    assert np.all((ratio > 0) & (ratio <= 1))


# --- location-sensitive attention: Chorowski et al. 2015 eqs. (5)-(9) and jax.lax's convolution -----------
@pytest.mark.parametrize("half", HALVES)
def test_location_sensitive_attention_follows_chorowski(half, rng, jit):
    Q, C, r = 6, 4, 5
    params = attention_np.init_location_sensitive_params(rng, Q, H, A, filters=C, width=r, dtype=np.float64)
    params["bias"] = rng.normal(size=A)
    query, encoder_outputs = rng.normal(size=(B, Q)), rng.normal(size=(B, S, H))
    prev = softmax(rng.normal(size=(B, S)))
    context, weights = HALVES[half].location_sensitive_attention(params, query, encoder_outputs, prev)
    # F * a_{i-1}: jax.lax's convolution (cross-correlation, SAME padding) as the oracle
    features = jax.lax.conv_general_dilated(
        prev[:, :, None], params["conv"]["kernel"], window_strides=(1,), padding="SAME",
        dimension_numbers=("NWC", "WIO", "NWC"), precision="highest",
    )
    for b in range(B):
        e = np.array([
            params["v"] @ np.tanh(query[b] @ params["query"]["kernel"] + encoder_outputs[b, s] @ params["keys"]["kernel"]
                                  + features[b, s] @ params["location"]["kernel"] + params["bias"])
            for s in range(S)
        ])
        np.testing.assert_allclose(weights[b], softmax(e), atol=1e-12)
        np.testing.assert_allclose(context[b], softmax(e) @ encoder_outputs[b], atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_conv1d_same_matches_lax(half, rng):
    from importlib import import_module

    conv1d_same = import_module(f"attention_{'np' if half == 'numpy' else 'jax'}.location").conv1d_same
    x, kernel = rng.normal(size=(B, S)), rng.normal(size=(3, 1, 4))
    expected = jax.lax.conv_general_dilated(x[:, :, None], kernel, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
    np.testing.assert_allclose(conv1d_same(x, kernel), expected, atol=1e-12)


# --- init functions: both halves give the documented structure ----------------------------------------------
INITS = {
    "init_general_params": ((H,), {}),
    "init_concat_params": ((H, A), {}),
    "init_self_attention_params": ((E, H), {}),
    "init_cross_attention_params": ((E, H), {}),
    "init_multi_head_params": ((E, 6, H), {"num_kv_heads": K}),
    "init_global_params": ((H,), {"score": "location", "source_length": S}),
    "init_local_params": ((H,), {"score": "concat", "attention_dim": A}),
    "init_location_sensitive_params": ((6, H, A), {"filters": 4, "width": 3}),
    "init_additive_params": ((H,), {}),
}


@pytest.mark.parametrize("name", INITS)
def test_init_functions_agree_in_structure_and_dtype(name):
    args, kwargs = INITS[name]
    np_params = getattr(attention_np, name)(np.random.default_rng(0), *args, **kwargs)
    jax_params = getattr(attention_jax, name)(jax.random.key(0), *args, **kwargs)
    chex.assert_trees_all_equal_shapes_and_dtypes(np_params, jax.tree.map(np.asarray, jax_params))
    assert {leaf.dtype for leaf in jax.tree.leaves(np_params)} == {np.dtype(np.float32)}


@pytest.mark.parametrize("half", ["numpy", "jax"])
def test_init_multi_head_params_rejects_heads_that_do_not_group(half):
    rng = np.random.default_rng(0) if half == "numpy" else jax.random.key(0)
    module = attention_np if half == "numpy" else attention_jax
    with pytest.raises(ValueError, match="the number of query heads N=6 must be a multiple of the number of key/value heads K=4"):
        module.init_multi_head_params(rng, 8, 6, 4, num_kv_heads=4)


@pytest.mark.parametrize("half", ["numpy", "jax"])
def test_multi_head_bias_is_added_to_every_heads_logits(half, rng):
    """Against the formula written out head by head: softmax(q k^T / sqrt(H) + bias) v, then W_O."""
    E, n, k, h, t = 8, 4, 2, 3, 5
    params = attention_np.init_multi_head_params(rng, E, n, h, num_kv_heads=k, dtype=np.float64)
    params = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape), params)
    x, bias = rng.normal(size=(2, t, E)), rng.normal(size=(1, n, t, t))
    module = attention_np if half == "numpy" else attention_jax
    out, _ = module.multi_head_attention(jax.tree.map(np.asarray, params), x, bias=bias, is_causal=True)
    expected = np.zeros((2, t, E))
    for b in range(2):
        for head in range(n):
            def proj(name, g):
                return x[b] @ params[name]["kernel"][:, g] + params[name]["bias"][g]

            q, key, value = proj("query", head), proj("key", head // (n // k)), proj("value", head // (n // k))
            logits = q @ key.T / np.sqrt(h) + bias[0, head]
            logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            expected[b] += (w / w.sum(-1, keepdims=True)) @ value @ params["out"]["kernel"][head]
    expected += params["out"]["bias"]
    np.testing.assert_allclose(out, expected, atol=1e-12)
