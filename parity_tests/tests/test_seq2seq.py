"""Encoder - attention - decoder: the halves agree, the weights are alignments, padding is
invisible, greedy decoding is the argmax of teacher forcing on its own output, and the
GRU and the whole additive model equal PyTorch's modules (torch extra)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_np

from .conftest import HALVES, highest

ATTENTIONS = ("additive", "dot", "general", "concat", "location_sensitive")
B, S, T, V_SRC, V, D, H = 3, 7, 5, 13, 11, 5, 6


def _params(rng, attention, dtype=np.float64):
    return attention_np.init_seq2seq_params(
        rng, source_vocab=V_SRC, target_vocab=V, embed=D, hidden=H, attention=attention, dtype=dtype
    )


def _batch(rng):
    source_ids = rng.integers(0, V_SRC, (B, S))
    mask = np.ones((B, S), bool)
    mask[1, 4:] = False  # 4 real tokens
    mask[2, 1:] = False  # 1 real token
    return source_ids, rng.integers(0, V, (B, T)), mask


def _as(half, params):
    return params if half == "numpy" else jax.tree.map(jnp.asarray, params)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_halves_agree_forward_and_greedy(attention, dtype, tol, rng):
    params = _params(rng, attention, dtype)
    source_ids, target_in_ids, mask = _batch(rng)
    with highest():
        expected = attention_np.seq2seq_forward(params, source_ids, target_in_ids, source_mask=mask)
        actual = HALVES["jax"].seq2seq_forward(_as("jax", params), source_ids, target_in_ids, source_mask=mask)
        ids_np, w_np = attention_np.greedy_decode(params, source_ids, bos_id=1, max_length=6, source_mask=mask)
        ids_jax, w_jax = HALVES["jax"].greedy_decode(_as("jax", params), source_ids, bos_id=1, max_length=6, source_mask=mask)
    for e, a in zip(expected, actual):
        assert a.dtype == dtype and a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol)
    np.testing.assert_array_equal(ids_jax, ids_np)
    assert ids_np.dtype == ids_jax.dtype == np.int32 and ids_np.shape == (B, 6)
    np.testing.assert_allclose(w_jax, w_np, rtol=tol, atol=tol)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_weights_are_alignments_over_real_tokens(attention, half, rng):
    params = _params(rng, attention)
    source_ids, target_in_ids, mask = _batch(rng)
    _, weights = HALVES[half].seq2seq_forward(_as(half, params), source_ids, target_in_ids, source_mask=mask)
    weights = np.asarray(weights)
    assert weights.shape == (B, T, S) and (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(weights[~np.broadcast_to(mask[:, None, :], weights.shape)], 0.0)
    np.testing.assert_array_equal(weights[2, :, 0], 1.0)  # one real token takes all the weight


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_padding_is_invisible(attention, half, rng):
    """A padded row equals the same row run alone without its padding, whatever the pad ids."""
    params = _as(half, _params(rng, attention))
    source_ids, target_in_ids, mask = _batch(rng)
    module = HALVES[half]
    logits, weights = module.seq2seq_forward(params, source_ids, target_in_ids, source_mask=mask)
    other_pads = np.where(mask, source_ids, (source_ids + 5) % V_SRC)
    logits2, weights2 = module.seq2seq_forward(params, other_pads, target_in_ids, source_mask=mask)
    np.testing.assert_array_equal(logits2, logits)
    alone, alone_weights = module.seq2seq_forward(params, source_ids[1:2, :4], target_in_ids[1:2])
    np.testing.assert_allclose(logits[1], alone[0], atol=1e-12)
    np.testing.assert_allclose(weights[1, :, :4], alone_weights[0], atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_greedy_is_the_argmax_of_teacher_forcing_on_its_own_output(attention, half, rng):
    params = _as(half, _params(rng, attention))
    source_ids, _, mask = _batch(rng)
    module = HALVES[half]
    ids, weights = module.greedy_decode(params, source_ids, bos_id=0, max_length=T, source_mask=mask)
    target_in_ids = np.concatenate([np.zeros((B, 1), np.int32), np.asarray(ids)[:, :-1]], axis=1)
    logits, forced_weights = module.seq2seq_forward(params, source_ids, target_in_ids, source_mask=mask)
    np.testing.assert_array_equal(np.asarray(logits).argmax(-1), ids)
    np.testing.assert_allclose(forced_weights, weights, atol=1e-12)


def test_jax_compiles_to_scans_and_differentiates(rng):
    import attention_jax

    params = attention_jax.init_seq2seq_params(jax.random.key(0), source_vocab=V_SRC, target_vocab=V, embed=D, hidden=H)
    source_ids, target_in_ids, mask = _batch(rng)
    jaxpr = str(jax.make_jaxpr(attention_jax.seq2seq_forward)(params, source_ids, target_in_ids, source_mask=mask))
    assert jaxpr.count("scan[") >= 2  # encoder and decoder loops are lax.scan, not unrolled

    def loss(p):
        logits, _ = attention_jax.seq2seq_forward(p, source_ids, target_in_ids, source_mask=mask)
        return -jax.nn.log_softmax(logits)[..., 0].mean()

    grads = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["attention"]["additive"]["v"]).max()) > 0
    np.testing.assert_array_equal(grads["source_embed"]["embedding"][np.setdiff1d(np.arange(V_SRC), source_ids)], 0)


@pytest.mark.parametrize("half", HALVES)
def test_bad_input(half, rng):
    module = HALVES[half]
    params = _as(half, _params(rng, "additive"))
    source_ids, target_in_ids, mask = _batch(rng)
    with pytest.raises(TypeError, match="source_ids must have an integer dtype \\(token ids\\); got float64"):
        module.seq2seq_forward(params, source_ids.astype(np.float64), target_in_ids)
    with pytest.raises(ValueError, match=r"target_in_ids must have shape \(B, T\) with B=3 from source_ids; got \(2, 5\)"):
        module.seq2seq_forward(params, source_ids, target_in_ids[:2])
    with pytest.raises(ValueError, match=r"source_mask must have shape \(B, S\) with B=3, S=7 from source_ids; got \(3, 6\)"):
        module.seq2seq_forward(params, source_ids, target_in_ids, source_mask=mask[:, :6])
    with pytest.raises(TypeError, match="source_mask must have a boolean dtype"):
        module.greedy_decode(params, source_ids, bos_id=0, max_length=3, source_mask=mask.astype(np.float32))
    with pytest.raises(ValueError, match=r"source_ids must hold at least one position \(S >= 1\)"):
        module.seq2seq_forward(params, source_ids[:, :0], target_in_ids)
    with pytest.raises(ValueError, match=r"bos_id must be an int in \[0, 11\)"):
        module.greedy_decode(params, source_ids, bos_id=11, max_length=3)
    with pytest.raises(ValueError, match="max_length must be a non-negative int; got -1"):
        module.greedy_decode(params, source_ids, bos_id=0, max_length=-1)
    with pytest.raises(ValueError, match=r"params\['out'\] is missing"):
        module.seq2seq_forward({k: v for k, v in params.items() if k != "out"}, source_ids, target_in_ids)
    with pytest.raises(ValueError, match="attention must be one of 'additive', 'dot', 'general', 'concat', 'location_sensitive'; got 'cosine'"):
        module.init_seq2seq_params(np.random.default_rng(0) if half == "numpy" else jax.random.key(0),
                                   source_vocab=3, target_vocab=3, embed=2, hidden=2, attention="cosine")


def test_out_of_range_ids_raise_in_numpy_and_give_nan_in_jax(rng):
    import attention_jax

    params = _params(rng, "dot")
    source_ids, target_in_ids, _ = _batch(rng)
    source_ids[0, 2] = V_SRC
    with pytest.raises(ValueError, match=r"source_ids must be token ids in \[0, 13\); got values in \[0, 13\]"):
        attention_np.seq2seq_forward(params, source_ids, target_in_ids)
    logits, _ = attention_jax.seq2seq_forward(_as("jax", params), source_ids, target_in_ids)
    assert np.isnan(np.asarray(logits[0])).all() and np.isfinite(np.asarray(logits[1:])).all()


def test_empty_target_and_zero_max_length(rng):
    params = _params(rng, "general")
    source_ids, target_in_ids, mask = _batch(rng)
    for module in HALVES.values():
        p = _as("jax" if module is not attention_np else "numpy", params)
        logits, weights = module.seq2seq_forward(p, source_ids, target_in_ids[:, :0], source_mask=mask)
        assert logits.shape == (B, 0, V) and weights.shape == (B, 0, S)
        ids, weights = module.greedy_decode(p, source_ids, bos_id=0, max_length=0, source_mask=mask)
        assert ids.shape == (B, 0) and weights.shape == (B, 0, S)


# --- PyTorch as the oracle (torch extra) ---------------------------------------------------------------
def _torch_gru(torch, gru_params):
    cell = torch.nn.GRUCell(gru_params["input"]["kernel"].shape[0], gru_params["hidden"]["kernel"].shape[0]).double()
    with torch.no_grad():
        cell.weight_ih.copy_(torch.tensor(gru_params["input"]["kernel"].T))
        cell.bias_ih.copy_(torch.tensor(gru_params["input"]["bias"]))
        cell.weight_hh.copy_(torch.tensor(gru_params["hidden"]["kernel"].T))
        cell.bias_hh.copy_(torch.tensor(gru_params["hidden"]["bias"]))
    return cell


@pytest.mark.parametrize("half", HALVES)
def test_gru_cell_is_torch_grucell(half, rng):
    torch = pytest.importorskip("torch")
    from attention_jax import seq2seq as jax_seq2seq
    from attention_np import seq2seq as np_seq2seq

    gru = _params(rng, "additive")["decoder"]
    x, h = rng.normal(size=(B, D + H)) * 3, rng.normal(size=(B, H))
    expected = _torch_gru(torch, gru)(torch.tensor(x), torch.tensor(h)).detach().numpy()
    cell = np_seq2seq.gru_cell if half == "numpy" else jax_seq2seq.gru_cell
    np.testing.assert_allclose(cell(_as(half, gru), x, h), expected, atol=1e-12)


@pytest.mark.parametrize("half", HALVES)
def test_additive_model_is_the_tutorial_class_inside_torch_grus(half, rng):
    """The Bahdanau decoder written with the tutorial's own ``Attention`` class, ``nn.GRUCell``,
    ``nn.Embedding`` and ``nn.Linear``, on our parameters."""
    torch = pytest.importorskip("torch")
    from parity_tests.golden.make_tutorial_golden import tutorial_attention_class

    params = _params(rng, "additive")
    source_ids, target_in_ids, mask = _batch(rng)
    attention = tutorial_attention_class()(H).double()
    a = params["attention"]["additive"]
    with torch.no_grad():
        attention.attn.weight.copy_(torch.tensor(a["attn"]["kernel"].T))
        attention.attn.bias.copy_(torch.tensor(a["attn"]["bias"]))
        attention.v.copy_(torch.tensor(a["v"]))
    encoder, decoder = _torch_gru(torch, params["encoder"]), _torch_gru(torch, params["decoder"])
    src_embed = torch.tensor(params["source_embed"]["embedding"])
    tgt_embed = torch.tensor(params["target_embed"]["embedding"])
    out_w, out_b = torch.tensor(params["out"]["kernel"]), torch.tensor(params["out"]["bias"])
    expected_logits, expected_weights = np.zeros((B, T, V)), np.zeros((B, T, S))
    with torch.no_grad():
        for b in range(B):  # one sequence at a time, without its padding: no mask needed in torch
            n = int(mask[b].sum())
            h = torch.zeros(1, H, dtype=torch.float64)
            outputs = []
            for s in range(n):
                h = encoder(src_embed[source_ids[b, s]][None], h)
                outputs.append(h)
            encoder_outputs = torch.stack(outputs, 1)  # (1, n, H)
            for t in range(T):
                context, weights = attention(h, encoder_outputs)
                h = decoder(torch.cat([tgt_embed[target_in_ids[b, t]][None], context[:, 0]], -1), h)
                expected_logits[b, t] = (torch.cat([h, context[:, 0]], -1) @ out_w + out_b)[0].numpy()
                expected_weights[b, t, :n] = weights[0].numpy()
    logits, weights = HALVES[half].seq2seq_forward(_as(half, params), source_ids, target_in_ids, source_mask=mask)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-12)
    np.testing.assert_allclose(weights, expected_weights, atol=1e-12)


# --- hard attention (both halves; JAX trains it with the straight-through estimator) -------------------
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_hard_attention_halves_agree_and_are_one_hot_at_the_soft_argmax(attention, rng):
    params = _params(rng, attention)
    source_ids, target_in_ids, mask = _batch(rng)
    expected = attention_np.seq2seq_forward(params, source_ids, target_in_ids, source_mask=mask, hard=True)
    actual = HALVES["jax"].seq2seq_forward(_as("jax", params), source_ids, target_in_ids, source_mask=mask, hard=True)
    for e, a in zip(expected, actual):
        np.testing.assert_allclose(a, e, atol=1e-12)
    ids = [m.greedy_decode(_as(h, params), source_ids, bos_id=0, max_length=4, source_mask=mask, hard=True)[0] for h, m in HALVES.items()]
    np.testing.assert_array_equal(ids[1], ids[0])
    hard_weights = expected[1]
    np.testing.assert_array_equal(np.sort(hard_weights, -1)[..., -1], 1.0)
    np.testing.assert_array_equal(hard_weights.sum(-1), 1.0)
    assert not hard_weights[~np.broadcast_to(mask[:, None, :], hard_weights.shape)].any()
    # the first step's attention does not depend on earlier contexts: one-hot at the soft argmax
    _, soft_weights = attention_np.seq2seq_forward(params, source_ids, target_in_ids, source_mask=mask)
    np.testing.assert_array_equal(hard_weights[:, 0].argmax(-1), soft_weights[:, 0].argmax(-1))


@pytest.mark.parametrize("attention", ["additive", "general"])
def test_hard_attention_trains_by_straight_through_gradients(attention, rng):
    import attention_jax

    params = _as("jax", _params(rng, attention))
    source_ids, target_in_ids, mask = _batch(rng)

    def loss(p, hard):
        logits, _ = attention_jax.seq2seq_forward(p, source_ids, target_in_ids, source_mask=mask, hard=hard)
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), target_in_ids[..., None], -1).mean()

    grads = jax.grad(loss)(params, True)
    attention_grads = jax.tree.leaves(grads["attention"])
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert max(float(jnp.abs(g).max()) for g in attention_grads) > 1e-4  # argmax alone would give exactly 0
