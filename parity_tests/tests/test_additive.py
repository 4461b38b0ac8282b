"""additive_attention: the tutorial's PyTorch class as the oracle (stored golden and live)."""

import jax
import numpy as np
import pytest

import attention_np
from parity_tests import load_tutorial_golden

from .conftest import HALVES, B, H, S, highest


@pytest.mark.parametrize("half", HALVES)
def test_reproduces_the_tutorial_golden(half, jit):
    params, hidden, encoder_outputs, context, weights = load_tutorial_golden()
    assert encoder_outputs.shape == (1, 4, 8) and hidden.shape == (1, 8)
    with highest():
        ours = HALVES[half].additive_attention(params, hidden, encoder_outputs)
    np.testing.assert_allclose(ours[0], context, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours[1], weights, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("half", HALVES)
def test_zero_v_gives_uniform_weights_and_the_mean(half, rng, jit):
    params = attention_np.init_additive_params(rng, H, dtype=np.float64)
    params["v"] = np.zeros(H)  # every score is 0
    encoder_outputs = rng.normal(size=(B, S, H))
    context, weights = HALVES[half].additive_attention(params, rng.normal(size=(B, H)), encoder_outputs)
    np.testing.assert_allclose(weights, np.full((B, S), 1 / S), atol=1e-12)
    np.testing.assert_allclose(context, encoder_outputs.mean(1, keepdims=True), atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_mask_and_nan_in_masked_positions(half, rng, jit):
    params = attention_np.init_additive_params(rng, H, dtype=np.float64)
    encoder_outputs = rng.normal(size=(B, S, H))
    mask = np.ones((B, S), bool)
    mask[0, 3:] = False
    mask[1] = False  # a fully masked row
    poisoned = encoder_outputs.copy()
    poisoned[0, 3:] = np.nan
    hidden = rng.normal(size=(B, H))
    context, weights = HALVES[half].additive_attention(params, hidden, poisoned, mask=mask)
    expected_context, expected_weights = attention_np.additive_attention(params, hidden[:1], encoder_outputs[:1, :3])
    np.testing.assert_allclose(weights[0, :3], expected_weights[0], atol=1e-12)
    np.testing.assert_array_equal(weights[0, 3:], 0.0)
    np.testing.assert_allclose(context[0], expected_context[0], atol=1e-12)
    np.testing.assert_array_equal(weights[1], 0.0)
    np.testing.assert_array_equal(context[1], 0.0)


@pytest.mark.parametrize("half", HALVES)
def test_params_from_torch_layout(half, rng):
    state = {"attn.weight": rng.normal(size=(H, 2 * H)), "attn.bias": rng.normal(size=H), "v": rng.normal(size=H)}
    params = HALVES[half].additive_params_from_torch(state)
    np.testing.assert_array_equal(params["attn"]["kernel"], state["attn.weight"].T)
    np.testing.assert_array_equal(params["attn"]["bias"], state["attn.bias"])
    np.testing.assert_array_equal(params["v"], state["v"])
    with pytest.raises(ValueError, match=r"state_dict is missing \['v'\]"):
        HALVES[half].additive_params_from_torch({"attn.weight": 0, "attn.bias": 0})


@pytest.mark.parametrize("half", HALVES)
def test_init_matches_torch_distribution(half):
    rng = np.random.default_rng(1) if half == "numpy" else jax.random.key(1)
    params = HALVES[half].init_additive_params(rng, 64)
    bound = 1 / np.sqrt(128)
    kernel, v = np.asarray(params["attn"]["kernel"]), np.asarray(params["v"])
    assert kernel.shape == (128, 64) and kernel.dtype == np.float32
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    assert 0 <= v.min() and v.max() < 1 and abs(v.mean() - 0.5) < 0.1


# --- the tutorial's class, live (needs the torch extra) ----------------------------------------------
def test_the_stored_golden_is_the_notebooks_own_run():
    pytest.importorskip("torch")
    from parity_tests.golden import make_tutorial_golden as golden

    fresh = golden.golden_arrays(golden.run_cells())
    with np.load(golden.OUT) as stored:
        assert set(fresh) <= set(stored.files)
        for name in ("encoder_outputs", "decoder_hidden", "attn_weight", "attn_bias", "v"):  # seeded draws: exact
            np.testing.assert_array_equal(stored[name], fresh[name], err_msg=name)
        for name in ("context", "attn_weights"):  # float32 matmuls may differ in the last bit across CPUs
            np.testing.assert_allclose(stored[name], fresh[name], rtol=1e-6, atol=1e-7, err_msg=name)
    # the notebook's Step 2 draws encoder_outputs first: torch.randn's first 32 numbers under seed 0
    import torch

    torch.manual_seed(0)
    np.testing.assert_array_equal(fresh["encoder_outputs"], torch.randn(1, 4, 8).numpy())



@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("half", HALVES)
def test_matches_the_tutorial_class(half, seed):
    torch = pytest.importorskip("torch")
    from parity_tests.golden.make_tutorial_golden import tutorial_attention_class

    Attention = tutorial_attention_class()
    rng = np.random.default_rng(seed)
    b, s, h = int(rng.integers(1, 9)), int(rng.integers(1, 51)), int(rng.integers(1, 65))
    torch.manual_seed(seed)
    module = Attention(h)
    hidden, encoder_outputs = torch.randn(b, h), torch.randn(b, s, h)
    expected_context, expected_weights = module(hidden, encoder_outputs)
    params = HALVES[half].additive_params_from_torch(module.state_dict())
    with highest():
        context, weights = HALVES[half].additive_attention(params, hidden.numpy(), encoder_outputs.numpy())
    assert context.shape == (b, 1, h) and weights.shape == (b, s)
    np.testing.assert_allclose(context, expected_context.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(weights, expected_weights.detach().numpy(), rtol=1e-6, atol=1e-6)
