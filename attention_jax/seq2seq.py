r"""Encoder - attention - decoder, the tutorial's architecture: mirror of ``attention_np/seq2seq.py``.

The NumPy half loops over time steps; here each loop is a ``lax.scan`` whose carry is the
GRU state (encoder) or the decoder-state pytree ``{"hidden", "attentional", "weights"}``, so
the whole model is one compiled program. Bahdanau decoder for ``"additive"`` and
``"location_sensitive"``, Luong decoder for ``"dot"``, ``"general"``, ``"concat"`` (see the
NumPy module).

Shape letters: B batch, S source length, T target length, H hidden size, D embedding size,
V target vocabulary.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from attention_np import seq2seq as _np_seq2seq
from attention_np._validate import check_decode_options, check_seq2seq

from ._dtypes import cast_params, compute_dtype
from ._random import init_from_numpy
from .additive import additive_attention
from .global_attention import attentional_hidden_state, global_attention
from .hard import hard_attention
from .location import location_sensitive_attention

BAHDANAU = _np_seq2seq.BAHDANAU


def gru_cell(params, x, h):
    r"""One GRU step in PyTorch's ``nn.GRUCell`` form (Cho et al. 2014; gate order r, z, n).

    .. math::
        r = \sigma(x W_{ir} + b_{ir} + h W_{hr} + b_{hr}), \quad
        z = \sigma(x W_{iz} + b_{iz} + h W_{hz} + b_{hz}), \\
        n = \tanh(x W_{in} + b_{in} + r \odot (h W_{hn} + b_{hn})), \quad
        h' = (1 - z) \odot n + z \odot h

    Args:
      params: ``{"input": {"kernel": (I, 3H), "bias": (3H,)}, "hidden": {"kernel": (H, 3H),
        "bias": (3H,)}}``. x: input ``(B, I)``. h: state ``(B, H)``.

    Returns:
      the new state ``(B, H)``.
    """
    i_r, i_z, i_n = jnp.split(x @ params["input"]["kernel"] + params["input"]["bias"], 3, axis=-1)   # 3 x (B, H)
    h_r, h_z, h_n = jnp.split(h @ params["hidden"]["kernel"] + params["hidden"]["bias"], 3, axis=-1)  # 3 x (B, H)
    r = jax.nn.sigmoid(i_r + h_r)                                          # reset gate
    z = jax.nn.sigmoid(i_z + h_z)                                          # update gate
    n = jnp.tanh(i_n + r * h_n)                                            # candidate state
    return (1 - z) * n + z * h                                             # (B, H)


def embed(table, ids, name):
    """Rows of ``table (V, D)`` for ``ids``. Values cannot raise under ``jit``: an id outside
    ``[0, V)`` gives a row of NaN (never a silently clamped row)."""
    del name  # the NumPy half names it in its ValueError
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)  # (*ids.shape, D)


def encode(params, source_ids, source_mask):
    """The GRU encoder: ``source_ids (B, S)`` -> ``(encoder_outputs (B, S, H), state (B, H))``;
    a padded position keeps the state and has a zero output."""
    x = embed(params["source_embed"]["embedding"], source_ids, "source_ids")  # (B, S, D)
    B, S, _ = x.shape
    h = jnp.zeros((B, params["encoder"]["hidden"]["kernel"].shape[0]), x.dtype)  # (B, H)
    mask = jnp.ones((B, S), bool) if source_mask is None else source_mask

    def step(h, inputs):
        x_s, mask_s = inputs                                               # (B, D), (B,)
        h_new = gru_cell(params["encoder"], x_s, h)                        # (B, H)
        if source_mask is not None:  # padding: keep the state, output zero
            h_new = jnp.where(mask_s[:, None], h_new, h)
        return h_new, (h_new if source_mask is None else jnp.where(mask_s[:, None], h_new, 0))

    h, encoder_outputs = lax.scan(step, h, (x.swapaxes(0, 1), mask.swapaxes(0, 1)))  # (B, H), (S, B, H)
    return encoder_outputs.swapaxes(0, 1), h


def init_decoder_state(encoder_state, source_length):
    """The decoder starts from the encoder's final state, with a zero attentional state
    (Luong's input feeding) and zero previous weights (Chorowski's location features)."""
    B, H = encoder_state.shape
    zeros = jnp.zeros((B, H), encoder_state.dtype)
    return {"hidden": encoder_state, "attentional": zeros, "weights": jnp.zeros((B, source_length), encoder_state.dtype)}


def harden(weights, encoder_outputs, source_mask):
    """Hard attention on the mechanism's own scores: one-hot weights at the best source
    position and its encoder output as the context (Xu et al. 2015, section 4.1).

    ``log(weights)`` are the mechanism's scores up to a per-row constant, so they have the
    same argmax and the same softmax; clamping at the smallest normal float keeps them finite
    at masked positions (which ``hard_attention`` never chooses).
    Trained with the straight-through estimator: the forward pass is one-hot, the gradient
    is the soft weights' (``hard_attention(..., straight_through=True)``).
    """
    scores = jnp.log(jnp.maximum(weights, jnp.finfo(weights.dtype).tiny))[:, None, :]  # (B, 1, S)
    mask = None if source_mask is None else source_mask[:, None, :]
    context, weights = hard_attention(scores, encoder_outputs, mask=mask, straight_through=True)
    return context[:, 0], weights[:, 0]                                    # (B, H), (B, S)


def decoder_step(params, state, prev_ids, encoder_outputs, source_mask, hard=False):
    """One decoder step: ``prev_ids (B,)`` and ``state`` -> ``(logits (B, V), new state)``;
    the new state's ``"weights" (B, S)`` are this step's attention weights (one-hot if ``hard``)."""
    (kind, attention), = params["attention"].items()
    x = embed(params["target_embed"]["embedding"], prev_ids, "target_in_ids")  # (B, D)
    if kind in BAHDANAU:
        # 1. attend from the previous decoder state
        if kind == "additive":
            context, weights = additive_attention(attention, state["hidden"], encoder_outputs, mask=source_mask)
            context = context[:, 0]                                        # (B, H)
        else:
            context, weights = location_sensitive_attention(
                attention, state["hidden"], encoder_outputs, state["weights"], mask=source_mask
            )                                                              # (B, H), (B, S)
        if hard:
            context, weights = harden(weights, encoder_outputs, source_mask)
        # 2. the GRU reads the previous token and the context
        hidden = gru_cell(params["decoder"], jnp.concatenate([x, context], -1), state["hidden"])  # (B, H)
        # 3. predict from the new state and the context
        features, attentional = jnp.concatenate([hidden, context], -1), state["attentional"]  # (B, 2H)
    else:
        # 1. the GRU reads the previous token and the previous attentional state (input feeding)
        hidden = gru_cell(params["decoder"], jnp.concatenate([x, state["attentional"]], -1), state["hidden"])  # (B, H)
        # 2. attend from the new state: h~ = tanh(W_c [c; h])
        attentional, weights = global_attention(attention, hidden, encoder_outputs, score=kind, mask=source_mask)
        if hard:
            context, weights = harden(weights, encoder_outputs, source_mask)
            attentional = attentional_hidden_state(attention["combine"], context, hidden)  # (B, H)
        # 3. predict from h~
        features = attentional                                             # (B, H)
    logits = features @ params["out"]["kernel"] + params["out"]["bias"]   # (B, V)
    return logits, {"hidden": hidden, "attentional": attentional, "weights": weights}


def _prepare(params, source_ids, target_ids, source_mask, target_name="target_in_ids"):
    source_ids = jnp.asarray(source_ids)
    source_mask = None if source_mask is None else jnp.asarray(source_mask)
    shapes = check_seq2seq(params, source_ids, target_ids, source_mask, target_name=target_name)
    dtype = jnp.asarray(params["out"]["kernel"]).dtype
    return source_ids, source_mask, shapes, dtype, cast_params(params, compute_dtype(dtype))


@functools.partial(jax.jit, static_argnames=("hard",))
def seq2seq_forward(params, source_ids, target_in_ids, *, source_mask=None, hard=False):
    r"""The encoder - attention - decoder with teacher forcing: the true previous token at
    every step.

    .. math::
        (\bar h_1..\bar h_S) = \mathrm{GRU_{enc}}(x), \qquad
        a_t = \mathrm{attention}(s, \bar h), \quad c_t = \textstyle\sum_s a_{ts} \bar h_s, \qquad
        p(y_t \mid y_{<t}, x) = \mathrm{softmax}(W_o f_t + b_o)

    with :math:`f_t = [s_t; c_t]` (Bahdanau et al. 2015) or :math:`f_t = \tilde h_t` (Luong
    et al. 2015); see ``attention_np.seq2seq``.

    Args:
      params: from :func:`init_seq2seq_params`; ``params["attention"]`` is a one-entry dict
        whose key names the mechanism.
      source_ids: int ``(B, S)``.
      target_in_ids: int ``(B, T)``: the decoder's inputs (BOS, then the target shifted right).
      source_mask: optional bool ``(B, S)``, True = a real token (False = padding).
      hard: hard attention (one-hot weights at the argmax of the mechanism's weights),
        trained with the straight-through estimator (static).

    Returns:
      ``(logits, weights)``: ``(B, T, V)`` and ``(B, T, S)`` (rows sum to 1 over the real
      source tokens, 0 on padding), in the dtype of the parameters.
    """
    source_ids, source_mask, shapes, dtype, p = _prepare(params, source_ids, jnp.asarray(target_in_ids), source_mask)
    target_in_ids = jnp.asarray(target_in_ids)
    S = shapes["S"]
    # 1. encode the source
    encoder_outputs, encoder_state = encode(p, source_ids, source_mask)    # (B, S, H), (B, H)

    # 2. decode, one target step at a time, feeding the true previous token
    def step(state, prev_ids):
        logits, state = decoder_step(p, state, prev_ids, encoder_outputs, source_mask, hard)
        return state, (logits, state["weights"])

    _, (logits, weights) = lax.scan(step, init_decoder_state(encoder_state, S), target_in_ids.T)  # (T, B, V), (T, B, S)
    return logits.swapaxes(0, 1).astype(dtype), weights.swapaxes(0, 1).astype(dtype)


@functools.partial(jax.jit, static_argnames=("bos_id", "max_length", "hard"))
def greedy_decode(params, source_ids, *, bos_id, max_length, source_mask=None, hard=False):
    """Decode without a target: start from ``bos_id``, feed back the most likely token.

    Args:
      params: from :func:`init_seq2seq_params`.
      source_ids: int ``(B, S)``.
      bos_id: the token the decoder starts from (an int; static).
      max_length: the number of tokens to produce (an int >= 0; static).
      source_mask: optional bool ``(B, S)``, True = a real token.
      hard: hard attention (one-hot weights at the argmax of the mechanism's weights),
        trained with the straight-through estimator (static).

    Returns:
      ``(ids, weights)``: int32 ``(B, max_length)`` (BOS not included) and ``(B, max_length, S)``
      in the dtype of the parameters.
    """
    source_ids, source_mask, shapes, dtype, p = _prepare(params, source_ids, None, source_mask)
    B, S = shapes["B"], shapes["S"]
    check_decode_options(bos_id, max_length, p["target_embed"]["embedding"].shape[0])
    encoder_outputs, encoder_state = encode(p, source_ids, source_mask)    # (B, S, H), (B, H)

    def step(carry, _):
        state, prev = carry
        logits, state = decoder_step(p, state, prev, encoder_outputs, source_mask, hard)
        prev = logits.argmax(-1).astype(jnp.int32)                         # the most likely token
        return (state, prev), (prev, state["weights"])

    start = (init_decoder_state(encoder_state, S), jnp.full((B,), bos_id, jnp.int32))
    _, (ids, weights) = lax.scan(step, start, None, length=max_length)       # (max_length, B), (max_length, B, S)
    return ids.T, weights.swapaxes(0, 1).astype(dtype)


def init_seq2seq_params(rng, *, source_vocab, target_vocab, embed, hidden, attention="additive", dtype=jnp.float32):
    """As ``attention_np.init_seq2seq_params``, drawing from the JAX PRNG key ``rng``."""
    return init_from_numpy(
        _np_seq2seq.init_seq2seq_params, rng, source_vocab=source_vocab, target_vocab=target_vocab,
        embed=embed, hidden=hidden, attention=attention, dtype=dtype,
    )
