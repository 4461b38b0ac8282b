r"""How attention learns: the backward passes, written out by hand.

The forward files say how attention *computes*; this file says how its gradients *flow*.
Each function is a vector-Jacobian product (VJP): given the gradient of a loss with
respect to the outputs (``d_out``, the "cotangent"), it returns the gradient of the same
loss with respect to every input and parameter. Training is then plain gradient descent:
``params -= learning_rate * d_params`` (see ``examples/how_attention_learns.py``).

Every VJP first runs the forward pass again (recomputing is cheap and keeps the function
pure), then walks the forward steps in reverse, one chain-rule step each. Three rules do
all the work (Rumelhart, Hinton & Williams 1986, "Learning representations by
back-propagating errors"):

- a matmul ``Y = X W`` sends back ``dX = dY W^T`` and ``dW = X^T dY``;
- an elementwise ``y = tanh(x)`` sends back ``dx = dy (1 - y^2)``;
- a softmax ``P = softmax(L)`` over the last axis sends back
  ``dL = P * (dP - rowsum(dP * P))``: its Jacobian is ``diag(P) - P P^T``, so a VJP never
  builds the ``(S, S)`` matrix. The row sum equals ``rowsum(dO * O)`` for ``O = P V``, the
  ``D_i`` of FlashAttention-2 (Dao 2023, section 3.1.2).

Masked entries have weight exactly zero, so the softmax rule gives them zero gradient, and
a query with every key masked (an all-zero row of weights) gets zero gradients everywhere;
padding that the forward pass replaced by zeros gets zero gradient. NumPy only: the JAX
half gets the same numbers from ``jax.vjp``, and the parity harness checks that it does.

Shape letters (docs/design.md): B batch, T query length, S key/value length, N query heads,
K key/value heads, H features per head, E model width.
"""

import math

import numpy as np

from ._dtypes import cast_params, compute_dtype
from ._masking import attended_keys, combine_masks, masked_softmax
from ._validate import check_additive, check_multi_head, check_sdpa, multi_head_used
from .dot_product import scaled_dot_product_attention
from .multi_head import LAYER_NORM_EPSILON, _dense, _layer_norm


def _softmax_vjp(weights, d_weights):
    """``dL = P * (dP - rowsum(dP * P))``: the softmax Jacobian-vector product, last axis."""
    return weights * (d_weights - (d_weights * weights).sum(axis=-1, keepdims=True))


def _like(grads, params):
    """Each gradient in the dtype of the parameter it belongs to (same nested dict)."""
    if isinstance(grads, dict):
        return {name: _like(g, params[name]) for name, g in grads.items()}
    return grads.astype(np.asarray(params).dtype)


def _one_batch_axis(query, letters):
    """The forward functions take any number of batch axes; the VJPs are written for one."""
    if query.ndim != len(letters.split(",")):
        raise ValueError(
            f"query must have shape {letters}: the VJPs take exactly one batch axis "
            f"(reshape the others into B); got {tuple(query.shape)}"
        )


def scaled_dot_product_attention_vjp(
    query, key, value, d_out, *, bias=None, mask=None, is_causal=False, scale=None
):
    r"""Gradients of :func:`scaled_dot_product_attention` with respect to query, key and value.

    Forward (per batch element and head): :math:`L = s\,Q K^\top + \text{bias}`,
    :math:`P = \mathrm{softmax}(L)` over the keys, :math:`O = P V`. Backward, given
    :math:`dO`:

    .. math::
        dV = P^\top dO, \qquad dP = dO\, V^\top, \qquad
        dL = P \odot \big(dP - \mathrm{rowsum}(dP \odot P)\big), \qquad
        dQ = s\, dL\, K, \qquad dK = s\, dL^\top Q

    With grouped key/value heads (K < N) a key/value head serves G = N / K query heads, so
    its gradient is the sum of theirs. Masked weights are exactly zero, so ``dL`` is zero
    there and a query with every key masked gets zero gradients. The bias is not
    differentiated here (its gradient would be ``dL`` summed over its broadcast axes).

    Vaswani et al. 2017, "Attention is all you need", eq. (1); the backward pass as in
    Dao 2023, "FlashAttention-2", section 3.1.2 (here without tiling).

    Args:
      query: ``(B, T, N, H)``.
      key: ``(B, S, K, H)``.
      value: ``(B, S, K, H)``.
      d_out: gradient of the loss with respect to ``out``, ``(B, T, N, H)``.
      bias, mask, is_causal, scale: as in :func:`scaled_dot_product_attention`.

    Returns:
      ``(d_query, d_key, d_value)``: ``(B, T, N, H)``, ``(B, S, K, H)``, ``(B, S, K, H)``,
      each in the dtype of its input.

    Example: one query ``q = 0`` over two keys, so ``P = [0.5, 0.5]``; values ``[1, 3]``,
    ``dO = 1``. Then ``dV = P^T dO = [0.5, 0.5]``, ``dP = dO V^T = [1, 3]``, ``dL = 0.5 ([1,
    3] - 2) = [-0.5, 0.5]``, ``dQ = dL K = -0.5 * 0 + 0.5 * 2 = 1`` and ``dK = dL^T Q = 0``
    (H = 1, so s = 1).

    >>> query = np.zeros((1, 1, 1, 1))                            # (B, T, N, H)
    >>> key = np.array([0.0, 2.0]).reshape(1, 2, 1, 1)            # (B, S, K, H)
    >>> value = np.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    >>> d_query, d_key, d_value = scaled_dot_product_attention_vjp(query, key, value, np.ones((1, 1, 1, 1)))
    >>> d_query.ravel(), d_key.ravel(), d_value.ravel()
    (array([1.]), array([0., 0.]), array([0.5, 0.5]))
    """
    query, key, value, d_out = (np.asarray(x) for x in (query, key, value, d_out))
    shapes = check_sdpa(query, key, value, bias, mask, scale)
    _one_batch_axis(query, "(B, T, N, H)")
    shapes.check("d_out", d_out, "BTNH")
    B, T, N, H = query.shape
    S, K = shapes["S"], shapes["K"]
    G = N // K  # query heads per key/value head
    compute = compute_dtype(query.dtype)
    scale = 1.0 / math.sqrt(H) if scale is None else scale
    # 0. the forward pass again, exactly as scaled_dot_product_attention computes it
    q = query.astype(compute).transpose(0, 2, 1, 3)                        # (B, N, T, H)
    k = np.repeat(key.astype(compute), G, axis=2).transpose(0, 2, 1, 3)    # (B, N, S, H)
    v = np.repeat(value.astype(compute), G, axis=2).transpose(0, 2, 1, 3)  # (B, N, S, H)
    mask = combine_masks(mask, is_causal, T, S)
    if mask is not None:
        keep = attended_keys(mask, (B, N, T, S))[..., None]                 # (B, N, S, 1)
        k, v = np.where(keep, k, 0), np.where(keep, v, 0)
    logits = np.einsum("BNTH,BNSH->BNTS", q, k) * scale                    # (B, N, T, S)
    if bias is not None:
        logits = logits + np.asarray(bias).astype(compute)
    weights = masked_softmax(logits, mask)                                 # (B, N, T, S)
    d_out = d_out.astype(compute).transpose(0, 2, 1, 3)                    # (B, N, T, H)
    # 1. out = weights @ value: each value gets the weights it was given; each weight the
    #    match between the output's gradient and its value
    d_v = np.einsum("BNTS,BNTH->BNSH", weights, d_out)                     # (B, N, S, H)
    d_weights = np.einsum("BNTH,BNSH->BNTS", d_out, v)                     # (B, N, T, S)
    # 2. weights = softmax(logits): dL = P * (dP - rowsum(dP * P)); zero where P is zero
    d_logits = _softmax_vjp(weights, d_weights)                            # (B, N, T, S)
    # 3. logits = scale * query @ key^T
    d_q = np.einsum("BNTS,BNSH->BNTH", d_logits, k) * scale                # (B, N, T, H)
    d_k = np.einsum("BNTS,BNTH->BNSH", d_logits, q) * scale                # (B, N, S, H)
    # 4. padding keys were replaced by zeros in the forward pass: no gradient reaches them
    if mask is not None:
        d_k, d_v = np.where(keep, d_k, 0), np.where(keep, d_v, 0)
    # 5. back to (B, S, K, H): a key/value head served G query heads, its gradient is their sum
    d_query = d_q.transpose(0, 2, 1, 3)                                    # (B, T, N, H)
    d_key = d_k.transpose(0, 2, 1, 3).reshape(B, S, K, G, H).sum(axis=3)   # (B, S, K, H)
    d_value = d_v.transpose(0, 2, 1, 3).reshape(B, S, K, G, H).sum(axis=3)  # (B, S, K, H)
    return d_query.astype(query.dtype), d_key.astype(key.dtype), d_value.astype(value.dtype)


def additive_attention_vjp(params, hidden, encoder_outputs, d_context, d_weights=None, *, mask=None):
    r"""Gradients of :func:`additive_attention` (the tutorial's class) for its params and inputs.

    Forward: :math:`x_s = [h; \bar h_s]`, :math:`u_s = \tanh(x_s^\top W + b)`,
    :math:`e_s = u_s^\top v`, :math:`a = \mathrm{softmax}(e)`, :math:`c = \sum_s a_s \bar h_s`.
    Backward, given :math:`dc` (and optionally :math:`da`, a loss on the weights themselves,
    e.g. supervised alignment):

    .. math::
        da_s \mathrel{+}= dc^\top \bar h_s, \quad
        de = a \odot (da - \textstyle\sum_s a_s\, da_s), \quad
        du_s = de_s\, v, \quad dz_s = du_s \odot (1 - u_s^2),

        dv = \textstyle\sum_s de_s u_s, \quad dW = \sum_s x_s dz_s^\top, \quad db = \sum_s dz_s, \quad
        dx_s = W dz_s, \quad dh = \textstyle\sum_s dx_s[{:}H], \quad
        d\bar h_s = a_s\, dc + dx_s[H{:}]

    (all summed over the batch for the parameters). Bahdanau, Cho & Bengio 2015, "Neural
    machine translation by jointly learning to align and translate", eq. (6).

    Args:
      params: ``{"attn": {"kernel": (2H, H), "bias": (H,)}, "v": (H,)}``.
      hidden: decoder state, ``(B, H)``.
      encoder_outputs: ``(B, S, H)``.
      d_context: gradient of the loss with respect to ``context``, ``(B, 1, H)``.
      d_weights: optional gradient with respect to ``weights``, ``(B, S)``; default zero.
      mask: optional bool ``(B, S)``, True = attend, as in the forward call.

    Returns:
      ``(d_params, d_hidden, d_encoder_outputs)``: ``d_params`` with the same nested dict
      structure as ``params``, ``(B, H)`` and ``(B, S, H)``, each in its input's dtype.

    Example: two equal encoder outputs. The context is ``[1, 2]`` whatever the weights, so
    no gradient reaches the parameters or the decoder state; each encoder output gets its
    weight, 0.5, times ``dc``.

    >>> params = {"attn": {"kernel": np.ones((4, 2)), "bias": np.zeros(2)}, "v": np.ones(2)}
    >>> hidden = np.array([[1.0, -1.0]])                          # (B, H) = (1, 2)
    >>> encoder_outputs = np.array([[[1.0, 2.0], [1.0, 2.0]]])    # (B, S, H) = (1, 2, 2)
    >>> d_params, d_hidden, d_encoder_outputs = additive_attention_vjp(
    ...     params, hidden, encoder_outputs, d_context=np.array([[[1.0, 10.0]]]))
    >>> float(np.abs(d_params["attn"]["kernel"]).max()), d_params["attn"]["bias"], d_params["v"], d_hidden
    (0.0, array([0., 0.]), array([0., 0.]), array([[0., 0.]]))
    >>> d_encoder_outputs
    array([[[0.5, 5. ],
            [0.5, 5. ]]])
    """
    hidden, encoder_outputs, d_context = np.asarray(hidden), np.asarray(encoder_outputs), np.asarray(d_context)
    shapes = check_additive(params, hidden, encoder_outputs, mask)
    shapes.check("d_context", d_context, ("B", "1", "H"))
    if d_weights is not None:
        d_weights = np.asarray(d_weights)
        shapes.check("d_weights", d_weights, "BS")
    B, S, H = encoder_outputs.shape
    compute = compute_dtype(encoder_outputs.dtype)
    W, b, v = (np.asarray(p, compute) for p in (params["attn"]["kernel"], params["attn"]["bias"], params["v"]))
    # 0. the forward pass again, exactly as additive_attention computes it (padding zeroed first)
    enc = encoder_outputs.astype(compute)
    if mask is not None:
        enc = np.where(mask[:, :, None], enc, 0)
    x = np.concatenate([np.repeat(hidden.astype(compute)[:, None, :], S, axis=1), enc], axis=-1)  # (B, S, 2H)
    energy = np.tanh(x @ W + b)                                            # (B, S, H)
    weights = masked_softmax(energy @ v, mask)                             # (B, S)
    d_context = d_context.astype(compute)[:, 0, :]                         # (B, H)
    d_weights = np.zeros((B, S), compute) if d_weights is None else d_weights.astype(compute)
    # 1. context = weights @ encoder_outputs
    d_weights = d_weights + np.einsum("BH,BSH->BS", d_context, enc)        # (B, S)
    d_enc = weights[:, :, None] * d_context[:, None, :]                    # (B, S, H)
    # 2. weights = softmax(scores): dL = P * (dP - rowsum(dP * P))
    d_scores = _softmax_vjp(weights, d_weights)                            # (B, S)
    # 3. scores = energy @ v
    d_v = np.einsum("BS,BSH->H", d_scores, energy)                         # (H,)
    d_energy = d_scores[:, :, None] * v                                    # (B, S, H)
    # 4. energy = tanh(x @ W + b): through tanh, then the dense layer
    d_pre = d_energy * (1 - energy**2)                                     # (B, S, H)
    d_W = np.einsum("BSI,BSH->IH", x, d_pre)                               # (2H, H)
    d_b = d_pre.sum(axis=(0, 1))                                           # (H,)
    d_x = d_pre @ W.T                                                      # (B, S, 2H)
    # 5. x = [hidden repeated S times; encoder_outputs]: split the gradient, sum the repeats
    d_hidden = d_x[:, :, :H].sum(axis=1)                                   # (B, H)
    d_enc = d_enc + d_x[:, :, H:]                                          # (B, S, H)
    # 6. padding was replaced by zeros in the forward pass: no gradient reaches it
    if mask is not None:
        d_enc = np.where(mask[:, :, None], d_enc, 0)
    d_params = _like({"attn": {"kernel": d_W, "bias": d_b}, "v": d_v}, params)
    return d_params, d_hidden.astype(hidden.dtype), d_enc.astype(encoder_outputs.dtype)


def _layer_norm_vjp(x, scale, d_y):
    r"""Gradients of ``y = xhat * scale`` with ``xhat = (x - mean) / sqrt(var + eps)`` over the
    last axis (``multi_head._layer_norm``): ``d_scale = sum(d_y * xhat)`` over every other
    axis, and, with :math:`g = d_y \odot \gamma`,
    :math:`dx = (g - \bar g - \hat x\, \overline{g \hat x}) / \sqrt{\mathrm{var} + \epsilon}`
    (bars: means over the last axis): the Jacobian of ``xhat`` is
    :math:`(I - \mathbf{1}\mathbf{1}^\top / H - \hat x \hat x^\top / H) / \sqrt{\mathrm{var} + \epsilon}`."""
    mean = x.mean(axis=-1, keepdims=True)
    inv_std = 1 / np.sqrt(((x - mean) ** 2).mean(axis=-1, keepdims=True) + LAYER_NORM_EPSILON)
    x_hat = (x - mean) * inv_std
    d_scale = (d_y * x_hat).reshape(-1, x.shape[-1]).sum(axis=0)           # (H,)
    g = d_y * scale
    d_x = inv_std * (g - g.mean(axis=-1, keepdims=True) - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))
    return d_x, d_scale


def _grads_like(grads, params):
    """``grads`` in the structure of ``params``, as ``jax.vjp`` gives it: None where ``params``
    holds None (a bias or a norm given as None), absent where it is absent, entries that
    the function does not use left out; each in its parameter's dtype."""
    if isinstance(grads, dict):
        return {name: None if params[name] is None else _grads_like(grads[name], params[name])
                for name in params if params[name] is None or name in grads}
    return grads.astype(np.asarray(params).dtype)


def multi_head_attention_vjp(params, query, key, value, d_out, *, mask=None, is_causal=False):
    r"""Gradients of :func:`multi_head_attention` for its params, query, key and value.

    Forward: :math:`q = x_q W^Q + b^Q`, :math:`k = x_k W^K + b^K`, :math:`v = x_v W^V + b^V`
    (per head; with ``query_ln``/``key_ln``, :math:`q` and :math:`k` are then layer-normalised
    over H), heads :math:`= \mathrm{Attention}(q, k, v)`,
    :math:`\mathrm{out} = \sum_n \mathrm{head}_n W^O_n + b^O`. Backward, given
    :math:`d\mathrm{out}`: the output projection is a matmul
    (:math:`dW^O = \mathrm{head}^\top d\mathrm{out}`, :math:`d\mathrm{head} = d\mathrm{out}\, {W^O}^\top`),
    the attention core is :func:`scaled_dot_product_attention_vjp`, the layer norms have their
    own rule (``_layer_norm_vjp``), and each input projection is a matmul again
    (:math:`dW^Q = x_q^\top dq`, :math:`dx_q = dq\, {W^Q}^\top`). A query with no key to
    attend to has a zero output (not the output bias), so no gradient flows from it.

    For self-attention pass the same array as query, key and value; its gradient is
    ``d_query + d_key + d_value``.

    Vaswani et al. 2017, "Attention is all you need", section 3.2.2; grouped key/value
    heads after Ainslie et al. 2023 (GQA); QK layer-norm after Dehghani et al. 2023.

    Args:
      params: Flax ``nnx.MultiHeadAttention``'s dict, as in :func:`multi_head_attention`
        (biases optional, ``query_ln``/``key_ln`` optional).
      query: ``(B, T, E)``.
      key: ``(B, S, E_kv)``.
      value: ``(B, S, E_kv)``.
      d_out: gradient of the loss with respect to ``out``, ``(B, T, F)``.
      mask, is_causal: as in :func:`multi_head_attention`.

    Returns:
      ``(d_params, d_query, d_key, d_value)``: ``d_params`` with the structure of the entries
      of ``params`` that :func:`multi_head_attention` uses (None for a bias given as None;
      other entries left out), as ``jax.vjp`` gives it; then ``(B, T, E)``, ``(B, S, E_kv)``,
      ``(B, S, E_kv)``, each in its input's dtype.

    Example: the two heads of :func:`multi_head_attention`'s example, ``d_out = 1``.
    ``dW^O`` of head n is its output summed over the positions (head 0: ``4 + 4``, head 1:
    ``3 + 4``). Both heads read their values from feature 0, so a position's ``d_value`` is
    the weight it is given, summed over queries and heads: position 0 gets ``0.5 + 0.5``
    from head 0 and ``0.75 + 0.5`` from head 1, 2.25; position 1 gets ``1 + 0.75 = 1.75``.

    >>> ln3 = np.log(3)
    >>> params = {                                                # no biases, as use_bias=False
    ...     "query": {"kernel": np.array([[[0.0], [0.0]], [[0.0], [1.0]]])},  # (E, N, H) = (2, 2, 1)
    ...     "key": {"kernel": np.array([[[0.0], [0.0]], [[0.0], [ln3]]])},
    ...     "value": {"kernel": np.array([[[1.0], [1.0]], [[0.0], [0.0]]])},
    ...     "out": {"kernel": np.array([[[1.0, 0.0]], [[0.0, 1.0]]])}}        # (N, H, F) = (2, 1, 2)
    >>> x = np.array([[[2.0, 1.0], [6.0, 0.0]]])                  # (B, T, E) = (1, 2, 2)
    >>> d_params, d_query, d_key, d_value = multi_head_attention_vjp(params, x, x, x, np.ones((1, 2, 2)))
    >>> d_params["out"]["kernel"]                                 # (N, H, F)
    array([[[8., 8.]],
    <BLANKLINE>
           [[7., 7.]]])
    >>> d_value                                                   # (B, S, E): only feature 0 is read
    array([[[2.25, 0.  ],
            [1.75, 0.  ]]])
    """
    query, key, value, d_out = (np.asarray(x) for x in (query, key, value, d_out))
    shapes = check_multi_head(params, query, key, value, mask)
    _one_batch_axis(query, "(B, T, E)")
    shapes.check("d_out", d_out, "BTF")
    B, T, S, N = (shapes[c] for c in "BTSN")
    compute = compute_dtype(query.dtype)
    p = cast_params(multi_head_used(params), compute)
    # 0. the forward pass again, exactly as multi_head_attention computes it (padding zeroed first)
    x_q, x_k, x_v = (x.astype(compute) for x in (query, key, value))
    if mask is not None:
        keep = attended_keys(mask, (B, N, T, S)).any(axis=1)[..., None]    # (B, S, 1): any head
        x_k, x_v = np.where(keep, x_k, 0), np.where(keep, x_v, 0)
    q_lin = _dense("BTE,ENH->BTNH", x_q, p["query"])                        # (B, T, N, H)
    k_lin = _dense("BSE,EKH->BSKH", x_k, p["key"])                          # (B, S, K, H); E is E_kv here
    v = _dense("BSE,EKH->BSKH", x_v, p["value"])                            # (B, S, K, H)
    q = _layer_norm(q_lin, p["query_ln"]["scale"]) if "query_ln" in p else q_lin  # (B, T, N, H)
    k = _layer_norm(k_lin, p["key_ln"]["scale"]) if "key_ln" in p else k_lin      # (B, S, K, H)
    heads, _ = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)  # (B, T, N, H)
    d_out = d_out.astype(compute)                                          # (B, T, F)
    # 1. a query with no key to attend to had its output set to zero: no gradient from it
    if mask is not None:
        attends = np.broadcast_to(combine_masks(mask, is_causal, T, S), (B, N, T, S)).any(axis=(1, 3))  # (B, T)
        d_out = np.where(attends[..., None], d_out, 0)
    # 2. out = heads @ W_out + b_out
    d_out_kernel = np.einsum("BTNH,BTF->NHF", heads, d_out)               # (N, H, F)
    d_out_bias = d_out.sum(axis=(0, 1))                                    # (F,)
    d_heads = np.einsum("BTF,NHF->BTNH", d_out, p["out"]["kernel"])        # (B, T, N, H)
    # 3. heads = attention(q, k, v) in every head at once
    d_q, d_k, d_v = scaled_dot_product_attention_vjp(q, k, v, d_heads, mask=mask, is_causal=is_causal)
    d_params = {"out": {"kernel": d_out_kernel, "bias": d_out_bias}}
    # 4. the layer norms of normalize_qk, back to the projections
    if "query_ln" in p:
        d_q, d_scale = _layer_norm_vjp(q_lin, p["query_ln"]["scale"], d_q)  # (B, T, N, H), (H,)
        d_params["query_ln"] = {"scale": d_scale}
    if "key_ln" in p:
        d_k, d_scale = _layer_norm_vjp(k_lin, p["key_ln"]["scale"], d_k)    # (B, S, K, H), (H,)
        d_params["key_ln"] = {"scale": d_scale}
    # 5. the three input projections: x @ W + b, each a matmul
    d_params |= {
        "query": {"kernel": np.einsum("BTE,BTNH->ENH", x_q, d_q), "bias": d_q.sum(axis=(0, 1))},  # (E, N, H), (N, H)
        "key": {"kernel": np.einsum("BSE,BSKH->EKH", x_k, d_k), "bias": d_k.sum(axis=(0, 1))},    # (E_kv, K, H), (K, H)
        "value": {"kernel": np.einsum("BSE,BSKH->EKH", x_v, d_v), "bias": d_v.sum(axis=(0, 1))},  # (E_kv, K, H), (K, H)
    }
    d_query = np.einsum("BTNH,ENH->BTE", d_q, p["query"]["kernel"])       # (B, T, E)
    d_key = np.einsum("BSKH,EKH->BSE", d_k, p["key"]["kernel"])           # (B, S, E_kv)
    d_value = np.einsum("BSKH,EKH->BSE", d_v, p["value"]["kernel"])       # (B, S, E_kv)
    # 6. padding keys and values were replaced by zeros in the forward pass
    if mask is not None:
        d_key, d_value = np.where(keep, d_key, 0), np.where(keep, d_value, 0)
    return (
        _grads_like(d_params, params),
        d_query.astype(query.dtype),
        d_key.astype(key.dtype),
        d_value.astype(value.dtype),
    )
