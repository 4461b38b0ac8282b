r"""Encoder - attention - decoder: the tutorial's architecture, with GRUs.

The encoder reads the source into one state per position (the ``encoder_outputs``); at
every target step the decoder's state is the query of an attention over them, and the
context it returns informs the next prediction. Two classic decoders, chosen by
``attention=``:

* Bahdanau et al. 2015 (``"additive"``, the tutorial's class; ``"location_sensitive"``,
  Chorowski et al. 2015): attend from the *previous* decoder state :math:`s_{t-1}`, feed the
  context into the GRU, predict from :math:`[s_t; c_t]`.
* Luong et al. 2015 (``"dot"``, ``"general"``, ``"concat"``): step the GRU first (input
  feeding: its input carries the previous attentional state :math:`\tilde h_{t-1}`), attend
  from the *new* state with :func:`global_attention`, predict from
  :math:`\tilde h_t = \tanh(W_c [c_t; h_t])`.

``hard=True`` replaces the soft weights by one-hot weights at their argmax (hard attention,
Xu et al. 2015); the JAX half trains it with the straight-through estimator.

Shape letters: B batch, S source length, T target length, H hidden size (the attention's H),
D embedding size, V target vocabulary.
"""

import numpy as np

from ._dtypes import cast_params, compute_dtype
from ._validate import SEQ2SEQ_ATTENTIONS, check_choice, check_decode_options, check_seq2seq
from .additive import additive_attention, init_additive_params
from .global_attention import attentional_hidden_state, global_attention, init_global_params
from .hard import hard_attention
from .location import init_location_sensitive_params, location_sensitive_attention

BAHDANAU = ("additive", "location_sensitive")  # attend before the GRU step; the rest: Luong, after it


def sigmoid(x):
    """The logistic function, written with ``tanh`` so that no ``exp`` can overflow:
    ``1 / (1 + e^-x) = (1 + tanh(x / 2)) / 2``.

    >>> sigmoid(np.array([0.0, np.log(3), -1000.0]))     # 1 / (1 + 1/3) = 0.75; no overflow
    array([0.5 , 0.75, 0.  ])
    """
    return 0.5 * (1 + np.tanh(0.5 * x))


def gru_cell(params, x, h):
    r"""One GRU step in PyTorch's ``nn.GRUCell`` form (Cho et al. 2014; gate order r, z, n).

    .. math::
        r = \sigma(x W_{ir} + b_{ir} + h W_{hr} + b_{hr}), \quad
        z = \sigma(x W_{iz} + b_{iz} + h W_{hz} + b_{hz}), \\
        n = \tanh(x W_{in} + b_{in} + r \odot (h W_{hn} + b_{hn})), \quad
        h' = (1 - z) \odot n + z \odot h

    Args:
      params: ``{"input": {"kernel": (I, 3H), "bias": (3H,)}, "hidden": {"kernel": (H, 3H),
        "bias": (3H,)}}``: PyTorch's ``weight_ih``/``weight_hh`` transposed, gates r, z, n.
      x: input ``(B, I)``. h: state ``(B, H)``.

    Returns:
      the new state ``(B, H)``.

    Example: with every weight and bias zero, both gates are ``sigmoid(0) = 0.5`` and the
    candidate is ``tanh(0) = 0``, so the new state is half the old one.

    >>> H, I = 2, 3
    >>> zeros = {"input": {"kernel": np.zeros((I, 3 * H)), "bias": np.zeros(3 * H)},
    ...          "hidden": {"kernel": np.zeros((H, 3 * H)), "bias": np.zeros(3 * H)}}
    >>> gru_cell(zeros, np.ones((1, I)), np.array([[2.0, -4.0]]))
    array([[ 1., -2.]])
    """
    i_r, i_z, i_n = np.split(x @ params["input"]["kernel"] + params["input"]["bias"], 3, axis=-1)   # 3 x (B, H)
    h_r, h_z, h_n = np.split(h @ params["hidden"]["kernel"] + params["hidden"]["bias"], 3, axis=-1)  # 3 x (B, H)
    r = sigmoid(i_r + h_r)                                                 # reset gate
    z = sigmoid(i_z + h_z)                                                 # update gate
    n = np.tanh(i_n + r * h_n)                                             # candidate state
    return (1 - z) * n + z * h                                             # (B, H)


def embed(table, ids, name):
    """Rows of ``table (V, D)`` for ``ids``; an id outside ``[0, V)`` is a ``ValueError``.

    >>> embed(np.array([[0.0, 0.0], [1.0, 2.0], [3.0, 4.0]]), np.array([[2, 1]]), "ids")   # (V, D) = (3, 2)
    array([[[3., 4.],
            [1., 2.]]])
    """
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"{name} must be token ids in [0, {table.shape[0]}); got values in [{ids.min()}, {ids.max()}]")
    return table[ids]                                                      # (*ids.shape, D)


def encode(params, source_ids, source_mask):
    """The GRU encoder: ``source_ids (B, S)`` -> ``(encoder_outputs (B, S, H), state (B, H))``.

    A padded position (``source_mask`` False) leaves the state as it was and has a zero
    output, so the final state is the state after the last real token.

    >>> params = init_seq2seq_params(np.random.default_rng(0), source_vocab=5, target_vocab=6, embed=3, hidden=4)
    >>> source_ids = np.array([[2, 3, 0]])                        # (B, S) = (1, 3); 0 is padding
    >>> outputs, state = encode(params, source_ids, source_ids != 0)
    >>> outputs.shape, bool((outputs[:, 2] == 0).all()), bool((state == outputs[:, 1]).all())
    ((1, 3, 4), True, True)
    """
    x = embed(params["source_embed"]["embedding"], source_ids, "source_ids")  # (B, S, D)
    B, S, _ = x.shape
    h = np.zeros((B, params["encoder"]["hidden"]["kernel"].shape[0]), x.dtype)  # (B, H)
    encoder_outputs = np.zeros((B, S, h.shape[1]), x.dtype)                # (B, S, H)
    for s in range(S):
        h_new = gru_cell(params["encoder"], x[:, s], h)                    # (B, H)
        if source_mask is not None:  # padding: keep the state, output zero
            h_new = np.where(source_mask[:, s, None], h_new, h)
        h = h_new
        encoder_outputs[:, s] = h if source_mask is None else np.where(source_mask[:, s, None], h, 0)
    return encoder_outputs, h


def init_decoder_state(encoder_state, source_length):
    """The decoder starts from the encoder's final state, with a zero attentional state
    (Luong's input feeding) and zero previous weights (Chorowski's location features).

    >>> state = init_decoder_state(np.array([[1.0, 2.0]]), 3)     # (B, H) = (1, 2); S = 3
    >>> state["hidden"], state["attentional"], state["weights"]
    (array([[1., 2.]]), array([[0., 0.]]), array([[0., 0., 0.]]))
    """
    B, H = encoder_state.shape
    zeros = np.zeros((B, H), encoder_state.dtype)
    return {"hidden": encoder_state, "attentional": zeros, "weights": np.zeros((B, source_length), encoder_state.dtype)}


def harden(weights, encoder_outputs, source_mask):
    """Hard attention on the mechanism's own scores: one-hot weights at the best source
    position and its encoder output as the context (Xu et al. 2015, section 4.1).

    ``log(weights)`` are the mechanism's scores up to a per-row constant, so they have the
    same argmax and the same softmax; clamping at the smallest normal float keeps them finite
    at masked positions (which ``hard_attention`` never chooses).

    >>> weights = np.array([[0.2, 0.5, 0.3]])                     # (B, S) = (1, 3)
    >>> encoder_outputs = np.array([[[10.0], [20.0], [30.0]]])    # (B, S, H) = (1, 3, 1)
    >>> harden(weights, encoder_outputs, None)                    # the largest weight, 0.5: position 1
    (array([[20.]]), array([[0., 1., 0.]]))
    """
    scores = np.log(np.maximum(weights, np.finfo(weights.dtype).tiny))[:, None, :]  # (B, 1, S)
    mask = None if source_mask is None else source_mask[:, None, :]
    context, weights = hard_attention(scores, encoder_outputs, mask=mask)
    return context[:, 0], weights[:, 0]                                    # (B, H), (B, S)


def decoder_step(params, state, prev_ids, encoder_outputs, source_mask, hard=False):
    """One decoder step: ``prev_ids (B,)`` and ``state`` -> ``(logits (B, V), new state)``;
    the new state's ``"weights" (B, S)`` are this step's attention weights (one-hot if ``hard``).

    >>> params = init_seq2seq_params(np.random.default_rng(0), source_vocab=5, target_vocab=6, embed=3, hidden=4)
    >>> outputs, final = encode(params, np.array([[2, 3, 4]]), None)       # (B, S, H) = (1, 3, 4)
    >>> logits, state = decoder_step(params, init_decoder_state(final, 3), np.array([1]), outputs, None)
    >>> logits.shape, state["hidden"].shape, state["weights"].sum().round(6)  # (B, V), (B, H); weights sum to 1
    ((1, 6), (1, 4), np.float32(1.0))
    """
    (kind, attention), = params["attention"].items()
    x = embed(params["target_embed"]["embedding"], prev_ids, "target_in_ids")   # (B, D)
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
        hidden = gru_cell(params["decoder"], np.concatenate([x, context], -1), state["hidden"])  # (B, H)
        # 3. predict from the new state and the context
        features, attentional = np.concatenate([hidden, context], -1), state["attentional"]  # (B, 2H)
    else:
        # 1. the GRU reads the previous token and the previous attentional state (input feeding)
        hidden = gru_cell(params["decoder"], np.concatenate([x, state["attentional"]], -1), state["hidden"])  # (B, H)
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
    source_ids = np.asarray(source_ids)
    source_mask = None if source_mask is None else np.asarray(source_mask)
    shapes = check_seq2seq(params, source_ids, target_ids, source_mask, target_name=target_name)
    dtype = np.asarray(params["out"]["kernel"]).dtype
    return source_ids, source_mask, shapes, dtype, cast_params(params, compute_dtype(dtype))


def seq2seq_forward(params, source_ids, target_in_ids, *, source_mask=None, hard=False):
    r"""The encoder - attention - decoder with teacher forcing: the true previous token at
    every step.

    .. math::
        (\bar h_1..\bar h_S) = \mathrm{GRU_{enc}}(x), \qquad
        a_t = \mathrm{attention}(s, \bar h), \quad c_t = \textstyle\sum_s a_{ts} \bar h_s, \qquad
        p(y_t \mid y_{<t}, x) = \mathrm{softmax}(W_o f_t + b_o)

    with :math:`f_t = [s_t; c_t]` (Bahdanau et al. 2015, ``"additive"``,
    ``"location_sensitive"``) or :math:`f_t = \tilde h_t` (Luong et al. 2015, ``"dot"``,
    ``"general"``, ``"concat"``); see the module docstring.

    Args:
      params: from :func:`init_seq2seq_params`; ``params["attention"]`` is a one-entry dict
        whose key names the mechanism.
      source_ids: int ``(B, S)``.
      target_in_ids: int ``(B, T)``: the decoder's inputs (BOS, then the target shifted right).
      source_mask: optional bool ``(B, S)``, True = a real token (False = padding).
      hard: hard attention (one-hot weights at the argmax of the mechanism's weights)
        instead of soft.

    Returns:
      ``(logits, weights)``: ``(B, T, V)`` and ``(B, T, S)`` (rows sum to 1 over the real
      source tokens, 0 on padding), in the dtype of the parameters.

    Example: an untrained model, a source of three tokens and one padding, two target steps.

    >>> params = init_seq2seq_params(np.random.default_rng(0), source_vocab=5, target_vocab=6, embed=3, hidden=4)
    >>> source_ids = np.array([[2, 3, 4, 0]])                     # (B, S) = (1, 4); 0 is padding
    >>> logits, weights = seq2seq_forward(params, source_ids, np.array([[1, 2]]), source_mask=source_ids != 0)
    >>> logits.shape, weights.shape                               # (B, T, V), (B, T, S)
    ((1, 2, 6), (1, 2, 4))
    >>> weights.sum(-1).round(6), weights[:, :, 3]                # each step sums to 1; the padding gets 0
    (array([[1., 1.]], dtype=float32), array([[0., 0.]], dtype=float32))
    """
    source_ids, source_mask, shapes, dtype, p = _prepare(params, source_ids, np.asarray(target_in_ids), source_mask)
    target_in_ids = np.asarray(target_in_ids)
    B, S, T = shapes["B"], shapes["S"], shapes["T"]
    # 1. encode the source
    encoder_outputs, encoder_state = encode(p, source_ids, source_mask)    # (B, S, H), (B, H)
    # 2. decode, one target step at a time, feeding the true previous token
    state = init_decoder_state(encoder_state, S)
    logits = np.zeros((B, T, p["out"]["kernel"].shape[1]), encoder_outputs.dtype)  # (B, T, V)
    weights = np.zeros((B, T, S), encoder_outputs.dtype)                   # (B, T, S)
    for t in range(T):
        logits[:, t], state = decoder_step(p, state, target_in_ids[:, t], encoder_outputs, source_mask, hard)
        weights[:, t] = state["weights"]
    return logits.astype(dtype), weights.astype(dtype)


def greedy_decode(params, source_ids, *, bos_id, max_length, source_mask=None, hard=False):
    """Decode without a target: start from ``bos_id``, feed back the most likely token.

    Args:
      params: from :func:`init_seq2seq_params`.
      source_ids: int ``(B, S)``.
      bos_id: the token the decoder starts from (an int).
      max_length: the number of tokens to produce (an int >= 0).
      source_mask: optional bool ``(B, S)``, True = a real token.
      hard: hard attention (one-hot weights at the argmax of the mechanism's weights)
        instead of soft.

    Returns:
      ``(ids, weights)``: int32 ``(B, max_length)`` (BOS not included) and ``(B, max_length, S)``
      in the dtype of the parameters.

    Example: each id is the argmax of the logits that :func:`seq2seq_forward` gives when the
    decoder is fed BOS and the ids before it.

    >>> params = init_seq2seq_params(np.random.default_rng(0), source_vocab=5, target_vocab=6, embed=3, hidden=4)
    >>> source_ids = np.array([[2, 3, 4]])                        # (B, S) = (1, 3)
    >>> ids, weights = greedy_decode(params, source_ids, bos_id=1, max_length=3)
    >>> ids.shape, weights.shape                                  # (B, max_length), (B, max_length, S)
    ((1, 3), (1, 3, 3))
    >>> logits, _ = seq2seq_forward(params, source_ids, np.concatenate([[[1]], ids[:, :-1]], axis=1))
    >>> bool((logits.argmax(-1) == ids).all())
    True
    """
    source_ids, source_mask, shapes, dtype, p = _prepare(params, source_ids, None, source_mask)
    B, S = shapes["B"], shapes["S"]
    check_decode_options(bos_id, max_length, p["target_embed"]["embedding"].shape[0])
    encoder_outputs, encoder_state = encode(p, source_ids, source_mask)    # (B, S, H), (B, H)
    state = init_decoder_state(encoder_state, S)
    ids = np.zeros((B, max_length), np.int32)                                 # (B, max_length)
    weights = np.zeros((B, max_length, S), encoder_outputs.dtype)             # (B, max_length, S)
    prev = np.full((B,), bos_id, np.int32)                                 # (B,)
    for t in range(max_length):
        logits, state = decoder_step(p, state, prev, encoder_outputs, source_mask, hard)
        prev = logits.argmax(-1).astype(np.int32)                          # the most likely token
        ids[:, t], weights[:, t] = prev, state["weights"]
    return ids, weights.astype(dtype)


def init_seq2seq_params(rng, *, source_vocab, target_vocab, embed, hidden, attention="additive", dtype=np.float32):
    """Parameters of the encoder - attention - decoder, initialised as PyTorch does.

    Embeddings ``N(0, 1)`` (``nn.Embedding``); GRU kernels and biases uniform in
    ``+-1/sqrt(H)`` (``nn.GRUCell``); the output layer uniform in ``+-1/sqrt(fan_in)``
    (``nn.Linear``); the attention by its own ``init_*_params``.

    Args:
      rng: a ``numpy.random.Generator``.
      source_vocab, target_vocab: vocabulary sizes. embed: D. hidden: H.
      attention: ``"additive"`` (the tutorial's class), ``"dot"``, ``"general"``,
        ``"concat"`` or ``"location_sensitive"``.

    Returns:
      ``{"source_embed": {"embedding": (V_src, D)}, "target_embed": {"embedding": (V, D)},
      "encoder": GRU(D -> H), "decoder": GRU(D + H -> H), "attention": {attention: ...},
      "out": {"kernel": (2H or H, V), "bias": (V,)}}``.

    Example: D = 3, H = 4. A GRU has three gates, so its kernels have ``3H = 12`` columns;
    the Bahdanau decoder predicts from ``[s_t; c_t]``, ``2H = 8`` features.

    >>> params = init_seq2seq_params(np.random.default_rng(0), source_vocab=5, target_vocab=6, embed=3, hidden=4)
    >>> params["encoder"]["input"]["kernel"].shape, params["decoder"]["input"]["kernel"].shape
    ((3, 12), (7, 12))
    >>> list(params["attention"]), params["out"]["kernel"].shape
    (['additive'], (8, 6))
    """
    check_choice("attention", attention, SEQ2SEQ_ATTENTIONS)
    D, H = embed, hidden

    def uniform(shape, fan_in):
        bound = 1 / np.sqrt(fan_in)
        return np.asarray(rng.uniform(-bound, bound, shape)).astype(dtype)

    def gru(in_features):
        return {
            "input": {"kernel": uniform((in_features, 3 * H), H), "bias": uniform((3 * H,), H)},
            "hidden": {"kernel": uniform((H, 3 * H), H), "bias": uniform((3 * H,), H)},
        }

    if attention == "additive":
        attention_params = init_additive_params(rng, H, dtype=dtype)
    elif attention == "location_sensitive":
        attention_params = init_location_sensitive_params(rng, H, H, H, dtype=dtype)
    else:
        attention_params = init_global_params(rng, H, score=attention, dtype=dtype)
    features = 2 * H if attention in BAHDANAU else H
    return {
        "source_embed": {"embedding": np.asarray(rng.normal(size=(source_vocab, D))).astype(dtype)},
        "target_embed": {"embedding": np.asarray(rng.normal(size=(target_vocab, D))).astype(dtype)},
        "encoder": gru(D),
        "decoder": gru(D + H),
        "attention": {attention: attention_params},
        "out": {"kernel": uniform((features, target_vocab), features), "bias": uniform((target_vocab,), features)},
    }
