"""The Transformer's layers: both halves against PyTorch's ``nn.TransformerEncoderLayer`` and
``nn.TransformerDecoderLayer`` with the same weights, NumPy against JAX (float64 and float32),
the sinusoidal encodings against the paper's formula written out, gradients (finite, equal to
finite differences of the float64 NumPy forward, causal in the decoder) and batch axes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_np

from .conftest import HALVES, highest

# prime sizes: B=2, T=3, S=5, N=7 heads of H=3 (so E=21), M=11 hidden features
B, T, S, N, H, M = 2, 3, 5, 7, 3, 11
E = N * H


def encoder_params(seed=0, dtype=np.float64):
    params = attention_np.init_transformer_encoder_params(np.random.default_rng(seed), E, N, M, dtype=dtype)
    return randomise(params, seed)


def decoder_params(seed=0, dtype=np.float64):
    params = attention_np.init_transformer_decoder_params(np.random.default_rng(seed), E, N, M, dtype=dtype)
    return randomise(params, seed)


def randomise(params, seed):
    """Non-zero biases and layer-norm parameters, so that a dropped bias cannot pass."""
    rng = np.random.default_rng(seed + 100)
    return jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(p.dtype), params)


def as_jax(params):
    return jax.tree.map(jnp.asarray, params)


def call(half, name, params, *args, **kwargs):
    """One layer of one half, outputs as NumPy."""
    params = as_jax(params) if half == "jax" else params
    out, weights = getattr(HALVES[half], name)(params, *args, **kwargs)
    return np.asarray(out), jax.tree.map(np.asarray, weights)


# --- PyTorch, with the same weights ----------------------------------------------------------------
def load_torch(layer, params):
    """Copy ``params`` into a ``torch.nn.Transformer{Encoder,Decoder}Layer``: PyTorch's linear
    layers compute ``x W^T + b``, its attention packs q, k, v into ``in_proj_weight (3E, E)``."""
    import torch

    def mha(module, p):
        w = lambda name: p[name]["kernel"].reshape(E, E).T                        # (E, N, H) -> (N H, E)
        b = lambda name: p[name]["bias"].reshape(E)
        module.in_proj_weight.copy_(torch.tensor(np.concatenate([w("query"), w("key"), w("value")])))
        module.in_proj_bias.copy_(torch.tensor(np.concatenate([b("query"), b("key"), b("value")])))
        module.out_proj.weight.copy_(torch.tensor(p["out"]["kernel"].reshape(E, E).T))  # (N, H, E) -> (E, N H)
        module.out_proj.bias.copy_(torch.tensor(p["out"]["bias"]))

    def linear(module, p):
        module.weight.copy_(torch.tensor(p["kernel"].T))
        module.bias.copy_(torch.tensor(p["bias"]))

    def norm(module, p):
        module.weight.copy_(torch.tensor(p["scale"]))
        module.bias.copy_(torch.tensor(p["bias"]))

    with torch.no_grad():
        mha(layer.self_attn, params["self_attention"])
        if "cross_attention" in params:
            mha(layer.multihead_attn, params["cross_attention"])
            norm(layer.norm3, params["norm_3"])
        linear(layer.linear1, params["feed_forward"]["hidden"])
        linear(layer.linear2, params["feed_forward"]["out"])
        norm(layer.norm1, params["norm_1"])
        norm(layer.norm2, params["norm_2"])
    return layer.eval()


def torch_encoder(params, x, padding, dtype):
    torch = pytest.importorskip("torch")
    layer = torch.nn.TransformerEncoderLayer(E, N, M, dropout=0.0, activation="relu", layer_norm_eps=1e-5,
                                             batch_first=True, norm_first=False, dtype=dtype)
    load_torch(layer, params)
    pad = None if padding is None else torch.tensor(padding)                    # True = ignore this key
    return layer(torch.tensor(x, dtype=dtype), src_key_padding_mask=pad).detach().numpy()


def torch_decoder(params, x, memory, padding, dtype):
    torch = pytest.importorskip("torch")
    layer = torch.nn.TransformerDecoderLayer(E, N, M, dropout=0.0, activation="relu", layer_norm_eps=1e-5,
                                             batch_first=True, norm_first=False, dtype=dtype)
    load_torch(layer, params)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=dtype)  # -inf above the diagonal
    pad = None if padding is None else torch.tensor(padding)
    out = layer(torch.tensor(x, dtype=dtype), torch.tensor(memory, dtype=dtype), tgt_mask=causal, tgt_is_causal=True,
                memory_key_padding_mask=pad)
    return out.detach().numpy()


PADDINGS = {"no padding": None, "padded": np.array([[False] * T, [False, False, True]])}


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("padding", PADDINGS, ids=list(PADDINGS))
def test_encoder_layer_equals_torch(half, padding, rng):
    torch = pytest.importorskip("torch")
    params, x, pad = encoder_params(), rng.normal(size=(B, T, E)), PADDINGS[padding]
    mask = None if pad is None else ~pad[:, None, None, :]                      # (B, 1, 1, T), True = attend
    out, weights = call(half, "transformer_encoder_layer", params, x, mask=mask)
    np.testing.assert_allclose(out, torch_encoder(params, x, pad, torch.float64), rtol=1e-12, atol=1e-12)
    assert weights.shape == (B, N, T, T)
    if pad is not None:
        assert np.all(weights[1, :, :, 2] == 0)                                  # the padded key gets no weight
    # float32: 1e-5, not design.md's 1e-6 for one attention, for six matmuls and two layer norms in
    # float32 on both sides (measured: at most 7e-7)
    out32, _ = call(half, "transformer_encoder_layer", jax.tree.map(np.float32, params), x.astype(np.float32),
                    mask=mask)
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, torch_encoder(params, x, pad, torch.float32), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("padding", [None, np.array([[False] * S, [False, True, False, False, True]])],
                         ids=["no padding", "padded"])
def test_decoder_layer_equals_torch(half, padding, rng):
    torch = pytest.importorskip("torch")
    params, x, memory = decoder_params(), rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E))
    encoder_mask = None if padding is None else ~padding[:, None, None, :]     # (B, 1, 1, S)
    out, (self_weights, cross_weights) = call(half, "transformer_decoder_layer", params, x, memory,
                                              encoder_mask=encoder_mask)
    np.testing.assert_allclose(out, torch_decoder(params, x, memory, padding, torch.float64), rtol=1e-12, atol=1e-12)
    assert self_weights.shape == (B, N, T, T) and cross_weights.shape == (B, N, T, S)
    np.testing.assert_array_equal(self_weights * np.triu(np.ones((T, T)), 1), 0)  # nothing above the diagonal
    if padding is not None:
        assert np.all(cross_weights[1][..., padding[1]] == 0)
    # float32: 1e-5 as for the encoder layer (measured: at most 8e-7)
    out32, _ = call(half, "transformer_decoder_layer", jax.tree.map(np.float32, params), x.astype(np.float32),
                    memory.astype(np.float32), encoder_mask=encoder_mask)
    np.testing.assert_allclose(out32, torch_decoder(params, x, memory, padding, torch.float32), rtol=1e-5, atol=1e-5)


# --- NumPy against JAX -----------------------------------------------------------------------------
def layer_inputs(name, rng, batch=(B,)):
    x = rng.normal(size=batch + (T, E))
    if name == "transformer_encoder_layer":
        return encoder_params(), (x,), {"mask": rng.random(batch + (1, 1, T)) > 0.3}
    memory = rng.normal(size=batch + (S, E))
    return decoder_params(), (x, memory), {"mask": rng.random(batch + (1, T, T)) > 0.3,
                                           "encoder_mask": rng.random(batch + (1, 1, S)) > 0.3}


LAYERS = ["transformer_encoder_layer", "transformer_decoder_layer"]


@pytest.mark.parametrize("name", LAYERS)
def test_numpy_and_jax_agree_in_float64(name, jit, rng):
    params, args, kwargs = layer_inputs(name, rng)
    expected = call("numpy", name, params, *args, **kwargs)
    got = call("jax", name, params, *args, **kwargs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12), got, expected)


@pytest.mark.parametrize("name", LAYERS)
def test_jax_float32_against_numpy_float64(name, rng):
    params, args, kwargs = layer_inputs(name, rng)
    expected = call("numpy", name, params, *args, **kwargs)
    with highest():
        got = call("jax", name, jax.tree.map(np.float32, params), *(a.astype(np.float32) for a in args), **kwargs)
    assert got[0].dtype == np.float32
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, expected)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("name", LAYERS)
def test_batch_axes_are_folded_and_unfolded(half, name, rng):
    # (3, B, T, E) equals running each of the 3 rows on its own; (T, E) has no batch axis at all
    params, args, kwargs = layer_inputs(name, rng, batch=(3, B))
    out, weights = call(half, name, params, *args, **kwargs)
    assert out.shape == (3, B, T, E)
    for i in range(3):
        row_out, row_weights = call(half, name, params, *(a[i] for a in args), **{k: v[i] for k, v in kwargs.items()})
        np.testing.assert_allclose(out[i], row_out, rtol=1e-12, atol=1e-12)
        for got, want in zip(jax.tree.leaves(weights), jax.tree.leaves(row_weights)):
            np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-12)
    single, _ = call(half, name, params, *(a[0, 0] for a in args))
    np.testing.assert_allclose(single, call(half, name, params, *(a[0, :1] for a in args))[0][0], rtol=1e-12, atol=1e-12)


# --- sinusoidal position encodings -----------------------------------------------------------------
@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("length, features, base", [(7, 10, 10000.0), (50, 6, 10000.0), (4, 2, 100.0), (0, 4, 10000.0)])
def test_sinusoidal_positions_are_the_papers_formula(half, length, features, base):
    expected = np.zeros((length, features))
    for t in range(length):
        for i in range(features // 2):                      # PE(t, 2i) = sin(t / base^(2i/E)), PE(t, 2i+1) = cos
            expected[t, 2 * i] = np.sin(t / base ** (2 * i / features))
            expected[t, 2 * i + 1] = np.cos(t / base ** (2 * i / features))
    got = np.asarray(HALVES[half].sinusoidal_positions(length, features, base=base, dtype=np.float64))
    assert got.shape == (length, features) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    got32 = np.asarray(HALVES[half].sinusoidal_positions(length, features, base=base))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, expected, rtol=1e-5, atol=1e-5)


def test_an_offset_is_a_rotation_of_each_pair():
    # the paper's reason for sin and cos: PE[t + k] is a fixed linear map (a rotation of each
    # (sin, cos) pair by k times its frequency) of PE[t], the same for every t
    pe = attention_np.sinusoidal_positions(30, 8, dtype=np.float64)
    k, frequency = 5, 10000.0 ** (-np.arange(0, 8, 2) / 8)
    c, s = np.cos(k * frequency), np.sin(k * frequency)
    sin_t, cos_t = pe[:-k, 0::2], pe[:-k, 1::2]
    np.testing.assert_allclose(pe[k:, 0::2], sin_t * c + cos_t * s, atol=1e-12)
    np.testing.assert_allclose(pe[k:, 1::2], cos_t * c - sin_t * s, atol=1e-12)


# --- gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LAYERS)
def test_jax_gradients_are_finite_and_equal_finite_differences(name, rng):
    params, args, kwargs = layer_inputs(name, rng)
    cotangent = rng.normal(size=(B, T, E))

    def loss_jax(params, *args):
        out, _ = getattr(HALVES["jax"], name)(params, *args, **kwargs)
        return jnp.sum(out * cotangent)

    def loss_np(params, *args):
        out, _ = getattr(attention_np, name)(params, *args, **kwargs)
        return np.sum(out * cotangent)

    grads = jax.jit(jax.grad(loss_jax, argnums=tuple(range(1 + len(args)))))(as_jax(params), *args)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf))
    # a random direction in every input and parameter at once: <grad, d> against the central difference
    direction = jax.tree.map(lambda a: rng.normal(size=np.shape(a)), (params, *args))
    step = 1e-6
    shifted = lambda sign: jax.tree.map(lambda a, d: np.asarray(a) + sign * step * d, (params, *args), direction)
    numeric = (loss_np(*shifted(+1)) - loss_np(*shifted(-1))) / (2 * step)
    analytic = sum(np.sum(np.asarray(g) * d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-6)


def test_decoder_output_depends_only_on_earlier_positions(rng):
    # d out[t] / d x[t'] == 0 for t' > t: the causal self-attention, through every sub-layer
    params, (x, memory), _ = layer_inputs("transformer_decoder_layer", rng)
    f = lambda x: HALVES["jax"].transformer_decoder_layer(as_jax(params), x, memory)[0]
    jacobian = np.asarray(jax.jacobian(f)(x))                                        # (B, T, E, B, T, E)
    for t in range(T):
        assert np.all(jacobian[:, t, :, :, t + 1 :, :] == 0)
        assert np.any(jacobian[:, t, :, :, t, :] != 0)


# --- parameters ------------------------------------------------------------------------------------
@pytest.mark.parametrize("half", HALVES)
def test_init_shapes_and_bad_sizes(half):
    rng = np.random.default_rng(0) if half == "numpy" else jax.random.key(0)
    params = HALVES[half].init_transformer_decoder_params(rng, E, N, M)
    assert params["cross_attention"]["query"]["kernel"].shape == (E, N, H)
    assert params["feed_forward"]["hidden"]["kernel"].shape == (E, M)
    assert params["feed_forward"]["out"]["kernel"].shape == (M, E)
    assert params["norm_3"]["scale"].shape == (E,) and params["norm_3"]["scale"].dtype == np.float32
    with pytest.raises(ValueError, match=r"features must be divisible by num_heads \(H = E / N per head\); "
                                          r"got features=10, num_heads=3"):
        HALVES[half].init_transformer_encoder_params(rng, 10, 3, M)
    with pytest.raises(ValueError, match=r"mlp_features must be an int >= 1; got 0"):
        HALVES[half].init_transformer_encoder_params(rng, E, N, 0)
