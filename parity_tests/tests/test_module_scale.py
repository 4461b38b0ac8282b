"""``MultiHeadAttention(scale=...)``: the logits' factor on every path of the module (the
dispatcher, the dense and chunked paths, ``sow_weights``, the mirror for soft-cap and sinks,
decoding) equals :func:`attention_jax.multi_head_attention` with the same ``scale`` and the
module's parameters (float32, 1e-5), and ``from_torch`` carries the source layer's scale
(T5's 1.0, a module's own ``scaling``) instead of refusing it."""

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax
from attention_jax.nnx import MultiHeadAttention

from .conftest import highest

B, T, E, N, K = 2, 5, 12, 6, 3
TOL = dict(rtol=1e-5, atol=1e-5)


def _module(scale, **options):
    return MultiHeadAttention(N, E, num_kv_heads=K, scale=scale, decode=False, rngs=nnx.Rngs(0), **options)


def _params(module):
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def _inputs(seed=0):
    r = np.random.default_rng(seed)
    x = jnp.asarray(r.normal(size=(B, T, E)), jnp.float32)
    mask = np.ones((B, 1, 1, T), bool)
    mask[1, ..., T - 2:] = False                                     # the second row's last two keys are padding
    return x, jnp.asarray(mask)


PATHS = {  # the module's options and call options, and what the function needs to match them
    "dispatch": ({}, {}, {}),
    "dense": ({}, {"implementation": "dense"}, {}),
    "chunked": ({}, {"implementation": "chunked"}, {}),
    "sow_weights": ({}, {"sow_weights": True}, {}),
    "soft_cap": ({"logits_soft_cap": 3.0}, {}, {"logits_soft_cap": 3.0}),
    "soft_cap_sow_weights": ({"logits_soft_cap": 3.0}, {"sow_weights": True}, {"logits_soft_cap": 3.0}),
    "sinks": ({"use_sinks": True}, {}, {}),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scale", [1.0, 0.05, -0.4])
def test_the_module_scales_its_logits_as_the_function(scale, path):
    module_options, call_options, function_options = PATHS[path]
    module = _module(scale, **module_options)
    assert module.scale == scale
    x, mask = _inputs()
    with highest():
        got = module(x, mask=mask, is_causal=True, **call_options)
        expected, _ = attention_jax.multi_head_attention(_params(module), x, mask=mask, is_causal=True, scale=scale,
                                                         **function_options)
        default = _module(None, **module_options)(x, mask=mask, is_causal=True, **call_options)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), **TOL)
    assert float(jnp.abs(got - default).max()) > 1e-3                # and the scale does something


def test_the_default_is_one_over_sqrt_h():
    module, x = _module(None), _inputs()[0]
    H = module.head_dim
    np.testing.assert_array_equal(np.asarray(module(x)), np.asarray(_module(H ** -0.5)(x)))


@pytest.mark.parametrize("rotary", [False, True])
def test_decoding_with_a_scale_equals_the_full_causal_pass(rotary):
    """A prefill of 2, then one token a call: each step equals the causal full pass with the
    same scale, which equals the function's."""
    scale = 0.9
    module = _module(scale, rotary=rotary)
    x, _ = _inputs(1)
    with highest():
        full = module(x, is_causal=True)
        module.init_cache(x.shape)
        steps = [module(x[:, :2], decode=True)] + [module(x[:, t:t + 1], decode=True) for t in range(2, T)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), np.asarray(full), **TOL)
    if not rotary:
        with highest():
            expected, _ = attention_jax.multi_head_attention(_params(module), x, is_causal=True, scale=scale)
        np.testing.assert_allclose(np.asarray(full), np.asarray(expected), **TOL)


def test_the_scale_is_static_config():
    module = _module(np.float32(0.5))
    assert module.scale == 0.5 and type(module.scale) is float
    hash(nnx.graphdef(module))
    graphdef, state = nnx.split(module)
    x = _inputs()[0]
    out = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(module(x)), **TOL)


@pytest.mark.parametrize("scale, error, message", [
    ("0.5", TypeError, "scale must be a finite real number (int or float); got '0.5'"),
    (math.nan, ValueError, "scale must be a finite real number; got nan"),
    (np.array(math.inf), ValueError, "scale must be a finite real number; got inf"),
])
def test_a_bad_scale_names_itself(scale, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        _module(scale)


def test_a_scale_with_attention_fn_is_refused():
    with pytest.raises(ValueError, match="scale cannot be combined with attention_fn"):
        _module(1.0, attention_fn=nnx.dot_product_attention)


# --- from_torch: the source's scale comes over

def test_from_torch_loads_t5_with_its_scale_of_one():
    """T5 does not scale its logits: the module gets scale=1.0 and, with the relative
    position bias passed as ``bias``, gives the layer's outputs (cross-attention)."""
    from .test_torch_weights import TOL32, _case

    layer, inputs, expected = _case("t5")
    ours = MultiHeadAttention.from_torch(copy.deepcopy(layer).float(), decode=False)
    assert ours.scale == 1.0
    with highest():
        got = ours(inputs["x"].astype(np.float32), inputs["context"].astype(np.float32), mask=inputs["mask"],
                   bias=inputs["bias"].astype(np.float32))
    np.testing.assert_allclose(np.asarray(got), expected, **TOL32)
    override = MultiHeadAttention.from_torch(copy.deepcopy(layer).float(), scale=0.5, decode=False)
    assert override.scale == 0.5                                    # module_options win


def test_from_torch_carries_a_modules_own_scaling():
    """A module's ``scaling`` (Gemma's query_pre_attn_scalar) becomes the module's scale;
    a Llama layer's 1/sqrt(H) leaves the default."""
    from .test_torch_weights import _case

    layer, inputs, _ = _case("llama_gqa")
    assert MultiHeadAttention.from_torch(copy.deepcopy(layer).float(), decode=False).scale is None
    gemma_like = copy.deepcopy(layer).float()
    gemma_like.scaling = 0.125
    ours = MultiHeadAttention.from_torch(gemma_like, decode=False)
    assert ours.scale == 0.125
    x = inputs["x"].astype(np.float32)
    with highest():
        got = ours(x, mask=inputs["mask"])
        expected, _ = attention_jax.multi_head_attention(attention_jax.multi_head_params_from_torch(gemma_like), x,
                                                         mask=inputs["mask"], scale=0.125)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), **TOL)
