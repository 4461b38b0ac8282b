"""Flax NNX modules: their state is the functional params dict (both ways) and their call is
the functional function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attention_jax
from attention_jax.nnx import AdditiveAttention, Seq2Seq
from parity_tests import load_tutorial_golden

from .conftest import highest


def _pure(module):
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def _write(module, params):
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(module, state)


def _assert_same_tree(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


def test_additive_state_is_the_functional_dict_both_ways(rng):
    module = AdditiveAttention(11, rngs=nnx.Rngs(3))
    _assert_same_tree(_pure(module), attention_jax.init_additive_params(nnx.Rngs(3).params(), 11))
    new = jax.tree.map(jnp.asarray, {"attn": {"kernel": rng.normal(size=(22, 11)), "bias": rng.normal(size=11)},
                                     "v": rng.normal(size=11)})
    new = jax.tree.map(lambda x: x.astype(jnp.float32), new)
    _write(module, new)
    _assert_same_tree(_pure(module), new)
    hidden, encoder_outputs = rng.normal(size=(2, 11)).astype(np.float32), rng.normal(size=(2, 5, 11)).astype(np.float32)
    mask = np.array([[True] * 5, [True, True, False, False, False]])
    for a, b in zip(module(hidden, encoder_outputs, mask=mask),
                    attention_jax.additive_attention(new, hidden, encoder_outputs, mask=mask)):
        np.testing.assert_array_equal(a, b)


def test_additive_from_the_tutorials_state_dict_reproduces_the_golden():
    params, decoder_hidden, encoder_outputs, context, attn_weights = load_tutorial_golden()
    state_dict = {"attn.weight": params["attn"]["kernel"].T, "attn.bias": params["attn"]["bias"], "v": params["v"]}
    module = AdditiveAttention.from_torch(state_dict)
    with highest():
        ours = module(decoder_hidden, encoder_outputs)
    np.testing.assert_allclose(ours[0], context, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours[1], attn_weights, rtol=1e-6, atol=1e-6)


def test_additive_from_a_live_torch_module():
    torch = pytest.importorskip("torch")
    from parity_tests.golden.make_tutorial_golden import tutorial_attention_class

    torch.manual_seed(5)
    torch_module = tutorial_attention_class()(7)
    hidden, encoder_outputs = torch.randn(3, 7), torch.randn(3, 9, 7)
    expected = torch_module(hidden, encoder_outputs)
    with highest():
        ours = AdditiveAttention.from_torch(torch_module.state_dict())(hidden.numpy(), encoder_outputs.numpy())
    for a, e in zip(ours, expected):
        np.testing.assert_allclose(a, e.detach().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("attention", ["additive", "general", "location_sensitive"])
def test_seq2seq_state_call_and_generate(attention, rng):
    sizes = {"source_vocab": 9, "target_vocab": 8, "embed": 4, "hidden": 6, "attention": attention}
    module = Seq2Seq(9, 8, 4, 6, attention=attention, rngs=nnx.Rngs(2))
    _assert_same_tree(_pure(module), attention_jax.init_seq2seq_params(nnx.Rngs(2).params(), **sizes))
    new = attention_jax.init_seq2seq_params(jax.random.key(7), **sizes)
    _write(module, new)
    _assert_same_tree(_pure(module), new)
    source_ids, target_in_ids = rng.integers(0, 9, (2, 5)), rng.integers(0, 8, (2, 4))
    mask = np.array([[True] * 5, [True, True, True, False, False]])
    for a, b in zip(module(source_ids, target_in_ids, source_mask=mask),
                    attention_jax.seq2seq_forward(new, source_ids, target_in_ids, source_mask=mask)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(module.generate(source_ids, bos_id=1, max_length=3, source_mask=mask),
                    attention_jax.greedy_decode(new, source_ids, bos_id=1, max_length=3, source_mask=mask)):
        np.testing.assert_array_equal(a, b)


def test_seq2seq_trains_under_nnx_jit_and_grad(rng):
    module = Seq2Seq(9, 8, 4, 6, rngs=nnx.Rngs(0))
    source_ids, target_in_ids = rng.integers(0, 9, (2, 5)), rng.integers(0, 8, (2, 4))

    def loss(model):
        logits, _ = model(source_ids, target_in_ids)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), target_in_ids[..., None], -1).mean()

    grads = nnx.jit(nnx.grad(loss))(module)
    expected = jax.grad(lambda p: loss(lambda s, t: attention_jax.seq2seq_forward(p, s, t)))(_pure(module))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), nnx.to_pure_dict(grads), expected)


# --- one module for each other mechanism: state == functional dict, call == functional call ----------
def _modules_and_calls(rng):
    B, T, S, E, H, Q = 2, 3, 5, 7, 6, 4
    x, context = rng.normal(size=(B, T, E)).astype(np.float32), rng.normal(size=(B, S, E)).astype(np.float32)
    state, encoder_outputs = rng.normal(size=(B, H)).astype(np.float32), rng.normal(size=(B, S, H)).astype(np.float32)
    prev = rng.random((B, S)).astype(np.float32)
    mask = rng.random((B, S)) < 0.7
    from attention_jax import nnx as ours

    return [
        (lambda r: ours.SelfAttention(E, H, rngs=r), lambda k: attention_jax.init_self_attention_params(k, E, H),
         lambda m, p: (m(x, is_causal=True), attention_jax.self_attention(p, x, is_causal=True))),
        (lambda r: ours.CrossAttention(E, H, rngs=r), lambda k: attention_jax.init_cross_attention_params(k, E, H),
         lambda m, p: (m(x, context), attention_jax.cross_attention(p, x, context))),
        (lambda r: ours.GlobalAttention(H, score="concat", rngs=r), lambda k: attention_jax.init_global_params(k, H, score="concat"),
         lambda m, p: (m(state, encoder_outputs, mask=mask), attention_jax.global_attention(p, state, encoder_outputs, score="concat", mask=mask))),
        (lambda r: ours.LocalAttention(H, window=1, rngs=r), lambda k: attention_jax.init_local_params(k, H),
         lambda m, p: (m(state, encoder_outputs), attention_jax.local_attention(p, state, encoder_outputs, window=1))),
        (lambda r: ours.LocationSensitiveAttention(Q, H, 5, filters=3, width=3, rngs=r),
         lambda k: attention_jax.init_location_sensitive_params(k, Q, H, 5, filters=3, width=3),
         lambda m, p: (m(state[:, :Q], encoder_outputs, prev, mask=mask),
                       attention_jax.location_sensitive_attention(p, state[:, :Q], encoder_outputs, prev, mask=mask))),
    ]


@pytest.mark.parametrize("index", range(5), ids=["self", "cross", "global", "local", "location_sensitive"])
def test_every_mechanism_module_is_its_functional_twin(index, rng):
    make, init, call = _modules_and_calls(rng)[index]
    module = make(nnx.Rngs(4))
    _assert_same_tree(_pure(module), init(nnx.Rngs(4).params()))
    new = init(jax.random.key(11))
    _write(module, new)
    _assert_same_tree(_pure(module), new)
    with highest():
        ours, functional = call(module, new)
    jax.tree.map(np.testing.assert_array_equal, ours, functional)
