"""The checks of the tour's exercises: each takes the learner's answer and returns a verdict.

Every check compares the answer with an independent source, the library
(``attention_np``), JAX's own differentiation or a closed form, on inputs the learner has
not seen, and returns ``"right"`` or ``"not yet: <what is wrong, and why>"``: where it can
tell, the verdict names the rule the answer breaks (``row 1 has every key masked: its
weights must all be 0``), not only the element that differs. An answer that is not filled
in yet (a stub that raises ``NotImplementedError`` or returns ``None``) is "not yet", never
an error, so the tour runs top to bottom with every exercise open. The solutions are in
``tour_solutions.py`` beside this file.
"""

import numpy as np

import attention_np

RIGHT = "right"

# Exercise 4: the sizes of the heads to split and merge (primes, so that no two axes can be confused)
SPLIT_B, SPLIT_T, SPLIT_N, SPLIT_HEAD_DIM = 2, 3, 5, 7

# Exercise 6: the setting of the prediction, and how close a predicted variance must be
SCALE_WIDTH, SCALE_KEYS, SCALE_QUERIES = 256, 16, 2000
SCALE_TOLERANCE = 0.15   # relative to the true variance

# Exercise 9: one head, T = S = H = 2, worked by hand. The key's first entry is sqrt(2) ln 3,
# so that after the scale 1/sqrt(2) query 0 scores the two keys ln 3 and 0.
HAND_QUERY = np.array([[1.0, 0.0], [0.0, 1.0]])                     # (T, H)
HAND_KEY = np.array([[np.sqrt(2) * np.log(3), 0.0], [0.0, 0.0]])    # (S, H)
HAND_VALUE = np.array([[4.0, 0.0], [0.0, 8.0]])                     # (S, H)


def _call(candidate, *args):
    """``(result, None)``, or ``(None, verdict)`` when the answer is not there yet."""
    try:
        result = candidate(*args)
    except NotImplementedError:
        return None, "not yet: the function still raises NotImplementedError; fill it in"
    except Exception as error:  # a learner's bug: say what it raised, do not stop the tour
        return None, f"not yet: it raised {type(error).__name__}: {error}"
    if result is None:
        return None, "not yet: it returns None; return the array"
    return result, None


def _array(answer, what, want_shape, layout):
    """``(answer as a float64 array, None)``, or ``(None, verdict)`` when it is not one of
    shape ``want_shape`` (whose axes ``layout`` explains): a tuple such as the library's
    ``(out, weights)``, text, ragged lists."""
    if isinstance(answer, tuple):
        return None, (f"not yet: it returns a tuple of {len(answer)} (like the library's `(out, weights)`); "
                      f"return only {what}, one array of shape {want_shape}")
    try:
        got = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError) as error:
        return None, f"not yet: {what} is not an array of numbers ({type(answer).__name__}: {error})"
    if got.shape != want_shape:
        return None, f"not yet: {what} has shape {got.shape}, expected {want_shape}: {layout}"
    return got, None


def _worst(got, want):
    """The index where ``got`` is furthest from ``want`` (a NaN counts as furthest)."""
    error = np.abs(got - want)
    return np.unravel_index(np.argmax(np.where(np.isnan(error), np.inf, error)), error.shape)


def _answer(candidate, args, what, shape, layout):
    """The candidate's answer on ``args`` as a float64 array of ``shape``: ``(array, None)``,
    or ``(None, verdict)``."""
    result, verdict = _call(candidate, *args)
    return (None, verdict) if verdict else _array(result, what, shape, layout)


def _compare(got, want, what, atol):
    """``"right"`` if ``got`` equals ``want`` within ``atol``, else where it differs most."""
    if not np.all(np.abs(got - want) <= atol):  # also catches NaN
        worst = _worst(got, want)
        where = ", ".join(str(int(i)) for i in worst)
        return f"not yet: {what}[{where}] is {got[worst]:.4g}, expected {want[worst]:.4g}"
    return RIGHT


def _not_yet(reasons):
    return "not yet: " + "; ".join(reasons)


def check_masked_softmax(masked_softmax):
    """Exercise 1: ``masked_softmax(logits (T, S), mask (T, S) bool) -> weights (T, S)``,
    zero weight where the mask is False and all-zero weights for a row with every key masked;
    compared with the weights of ``attention_np.soft_attention``."""
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(5, 7)) * 3                              # (T, S)
    mask = rng.random((5, 7)) < 0.6
    blind, huge = 1, 2                                                # the rows of the two traps
    mask[0] = True                                                    # a row that sees every key
    mask[blind] = False                                               # a row that sees none
    mask[huge, 3] = True                                              # and one key seen at least
    logits[huge, 3] = 1000.0                                          # a huge logit: exp overflows unless you subtract the max
    weights, verdict = _answer(masked_softmax, (logits.copy(), mask.copy()), "the weights", logits.shape,
                               "one row per query, one weight per key")
    if verdict:
        return verdict
    _, want = attention_np.soft_attention(logits[None], np.zeros((1, 7, 1)), mask=mask[None])  # (1, T, S)
    if _compare(weights, want[0], "weights", 1e-6) == RIGHT:
        return RIGHT
    reasons = []
    if not np.all(weights[blind] == 0):
        reasons.append(f"row {blind} has every key masked: its weights must all be 0, "
                       f"not [{', '.join(f'{w:.3g}' for w in weights[blind])}]")
    if not np.all(np.isfinite(weights[huge])):
        reasons.append(f"row {huge} has a logit of {logits[huge, 3]:g} and its weights are not finite: "
                       f"exp({logits[huge, 3]:g}) overflows; subtract the row's maximum before exp")
    seen = mask.any(-1)
    finite = np.isfinite(weights).all(-1)                             # (T,): rows not reported above
    leaks = np.argwhere(~mask & (seen & finite)[:, None] & (weights != 0))
    if len(leaks):
        t, s = leaks[0]
        reasons.append(f"weights[{t}, {s}] is {weights[t, s]:.3g}, but row {t} masks key {s}: "
                       "a masked key gets exactly 0")
    sums = weights.sum(-1)
    off = [int(t) for t in np.flatnonzero(seen & np.isfinite(sums) & (np.abs(sums - 1) > 1e-6))]
    if off:
        reasons.append(f"row {off[0]} sums to {sums[off[0]]:.4g}: the weights of a row that sees a key "
                       "sum to 1")
    return _not_yet(reasons) if reasons else _compare(weights, want[0], "weights", 1e-6)


def check_gumbel_sample(sample):
    """Exercise 2: ``sample(scores (T, S), gumbel_noise (T, S)) -> weights (T, S)``, one-hot at
    ``argmax(scores + gumbel_noise)`` in every row (the Gumbel-max trick: a sample from
    ``softmax(scores)``); compared with the weights of ``attention_np.hard_attention`` given
    the same noise."""
    rng = np.random.default_rng(16)
    scores = rng.normal(size=(5, 7))                                  # (T, S)
    gumbel_noise = rng.gumbel(size=(5, 7))                            # (T, S)
    # with this noise rows 1, 3 and 4 choose another key than their best score: forgetting it shows
    T, S = scores.shape
    layout = f"one row per query (T = {T}), one weight per key (S = {S}), 1 at the chosen key and 0 elsewhere"
    weights, verdict = _answer(sample, (scores.copy(), gumbel_noise.copy()), "the weights", (T, S), layout)
    if verdict:
        return verdict
    _, want = attention_np.hard_attention(scores[None], np.zeros((1, S, 1)), gumbel_noise=gumbel_noise[None])
    want = want[0]                                                    # (T, S), one-hot
    if np.array_equal(weights, want):
        return RIGHT
    again, _ = _answer(sample, (scores.copy(), gumbel_noise.copy()), "the weights", (T, S), layout)
    if again is not None and not np.array_equal(again, weights, equal_nan=True):
        return ("not yet: two calls with the same scores and noise choose differently: use the gumbel_noise "
                "you are given (it is the randomness), do not draw noise of your own")
    ones = weights == 1                                               # (T, S)
    not_one_hot = np.flatnonzero(~(ones | (weights == 0)).all(-1))
    if len(not_one_hot):
        t = int(not_one_hot[0])
        return (f"not yet: row {t} is [{', '.join(f'{w:.3g}' for w in weights[t])}], not one-hot: hard attention "
                "gives one key all the weight, 1, and every other key 0 (weights in between are soft attention)")
    per_row = ones.sum(-1)                                            # (T,)
    if np.any(per_row != 1):
        t = int(np.flatnonzero(per_row != 1)[0])
        if np.all(ones.sum(0) == 1):
            return (f"not yet: every column has one 1, and row {t} has {per_row[t]}: the choice is made for each "
                    f"query among its {S} keys, so take the argmax over the last axis (axis=-1), not over the "
                    "queries (axis=0)")
        return (f"not yet: row {t} has {per_row[t]} ones: exactly one key, the argmax of scores[{t}] + "
                f"gumbel_noise[{t}], gets the weight 1")
    chosen, best = weights.argmax(-1), want.argmax(-1)                # (T,) each
    t = int(np.flatnonzero(chosen != best)[0])
    if np.array_equal(chosen, scores.argmax(-1)):
        return (f"not yet: row {t} chooses key {chosen[t]}, the best score, but with the noise key {best[t]} is "
                "best: add gumbel_noise to the scores before the argmax; without it every call makes the same "
                "choice, the argmax of hard attention above, not a sample")
    if np.array_equal(chosen, (scores - gumbel_noise).argmax(-1)):
        return (f"not yet: row {t} chooses key {chosen[t]}, the argmax of scores - gumbel_noise: the Gumbel-max "
                f"trick adds the noise, and argmax(scores[{t}] + gumbel_noise[{t}]) is key {best[t]}")
    if np.array_equal(chosen, (scores + gumbel_noise).argmin(-1)):
        return (f"not yet: row {t} chooses key {chosen[t]}, the smallest of scores + gumbel_noise: choose the "
                f"largest, key {best[t]} (the argmax)")
    return (f"not yet: row {t} chooses key {chosen[t]}, but scores[{t}] + gumbel_noise[{t}] is largest at "
            f"key {best[t]}")


def check_causal_attention(causal_attention):
    """Exercise 3: ``causal_attention(query (T, H), key (T, H), value (T, H)) -> out (T, H)``,
    scaled dot-product attention where position t sees positions <= t; compared with
    ``attention_np.scaled_dot_product_attention(..., is_causal=True)``."""
    rng = np.random.default_rng(12)
    query, key, value = rng.normal(size=(3, 6, 5))                    # (T, H) each
    T, H = query.shape
    out, verdict = _answer(causal_attention, (query.copy(), key.copy(), value.copy()), "out", (T, H),
                           "one row per position")
    if verdict:
        return verdict

    def reference(scale):
        result, _ = attention_np.scaled_dot_product_attention(
            query[None, :, None], key[None, :, None], value[None, :, None], is_causal=True, scale=scale)
        return result[0, :, 0]                                        # (T, H)

    want = reference(None)
    if _compare(out, want, "out", 1e-6) == RIGHT:
        return RIGHT
    # causal means: changing the keys and values after position t leaves out[t] as it was
    for t in range(T - 1):
        later = np.arange(T) > t                                      # (T,): positions after t
        other_key = np.where(later[:, None], rng.normal(size=(T, H)), key)
        other_value = np.where(later[:, None], rng.normal(size=(T, H)), value)
        changed, problem = _answer(causal_attention, (query.copy(), other_key, other_value), "out", (T, H),
                                   "one row per position")
        if problem is None and not np.allclose(changed[t], out[t], atol=1e-9, equal_nan=True):
            return (f"not yet: out[{t}] changes when the keys and values after position {t} change: "
                    f"position {t} must see only positions s <= {t} (mask the scores above the diagonal)")
    if _compare(out, reference(1.0), "out", 1e-6) == RIGHT:
        return (f"not yet: out is causal but unscaled: divide the scores by sqrt(H) = sqrt({H}) "
                "before the softmax")
    return _compare(out, want, "out", 1e-6)


def _labelled(B, T, F):
    """``(B, T, F)`` numbers that say where they are: ``1000 b + 100 t + f`` (F < 100)."""
    b, t, f = np.meshgrid(np.arange(B), np.arange(T), np.arange(F), indexing="ij")
    return (1000 * b + 100 * t + f).astype(np.float64)               # (B, T, F)


def _where_from(labels):
    """The position ``(b, t)`` and the feature ``f`` each of ``_labelled``'s numbers came from."""
    labels = labels.astype(np.int64)
    return labels // 1000, labels % 1000 // 100, labels % 100


def _moved(got, want, what):
    """Why ``got`` is not ``want`` when the reason is not the order of one position's features:
    numbers that are not ``want``'s (a reshape only moves numbers), or numbers from another
    position; ``None`` when ``got`` holds each position's own features, in another order."""
    if not np.isin(got, want).all():                                 # also catches NaN
        return _compare(got, want, what, 0) + ": a reshape only moves numbers, it changes none"
    got_b, got_t, _ = _where_from(got)
    want_b, want_t, _ = _where_from(want)
    mixed = np.argwhere((got_b != want_b) | (got_t != want_t))
    if len(mixed):
        index = tuple(int(i) for i in mixed[0])
        return (f"not yet: {what}[{index[0]}, {index[1]}] holds features of batch row {got_b[index]}, position "
                f"{got_t[index]}: only the features are split (or merged), each position keeps its own; a reshape "
                "across the positions, as with PyTorch's (B, N, T, head_dim) order, mixes them")
    return None


def check_split_merge_heads(split_heads, merge_heads):
    """Exercise 4: ``split_heads(x (B, T, N*head_dim), N) -> (B, T, N, head_dim)`` and its inverse
    ``merge_heads``, in the library's layout: head n holds the consecutive features
    ``n*head_dim`` to ``(n+1)*head_dim - 1``, as the Flax kernel ``(E, N, head_dim)`` is the flat
    kernel ``(E, N*head_dim)`` reshaped; checked on labelled numbers, then through
    ``attention_np.multi_head_attention`` with flat kernels."""
    B, T, N, D = SPLIT_B, SPLIT_T, SPLIT_N, SPLIT_HEAD_DIM
    x = _labelled(B, T, N * D)                                       # (B, T, N*head_dim)
    want = x.reshape(B, T, N, D)                                      # (B, T, N, head_dim)
    # 1. split_heads
    heads, verdict = _call(split_heads, x.copy(), N)
    if verdict:
        return verdict
    if getattr(heads, "shape", None) == (B, N, T, D):
        return (f"not yet: split_heads(x, N) has shape {(B, N, T, D)}, (B, N, T, head_dim), PyTorch's order with "
                f"the heads before the positions; the library's, and jax.nn.dot_product_attention's, is "
                f"(B, T, N, head_dim) = {(B, T, N, D)}: leave out the transpose")
    heads, verdict = _array(heads, "split_heads(x, N)", (B, T, N, D),
                            f"(B, T, N, head_dim), N = {N} heads of head_dim = {D} features each")
    if verdict:
        return verdict
    if not np.array_equal(heads, want):
        verdict = _moved(heads, want, "split_heads(x, N)")
        if verdict:
            return verdict
        b, t, n = (int(i) for i in np.argwhere(heads != want)[0][:3])  # the first head that is wrong
        features = [int(f) for f in _where_from(heads[b, t, n])[2]]
        return (f"not yet: head {n} holds the features {features} of the {N * D}, but head n holds the "
                f"{D} consecutive features n*head_dim to n*head_dim + {D - 1}, here {n * D} to {n * D + D - 1}: "
                "the library's kernel (E, N, head_dim) is the flat kernel (E, N*head_dim) with head n in columns "
                "n*head_dim to (n+1)*head_dim - 1; reshape to (B, T, N, head_dim) directly, with no transpose "
                "(a reshape to (B, T, head_dim, N) and a transpose deals the features out to the heads in turn)")
    # 2. merge_heads
    merged, verdict = _call(merge_heads, want.copy())
    if verdict:
        return verdict
    if getattr(merged, "shape", None) == (B, T, D):
        return (f"not yet: merge_heads(heads) has shape {(B, T, D)}, one head's width: summing or averaging the "
                f"heads loses what each found; merge_heads puts their features side by side, (B, T, N*head_dim) = "
                f"{(B, T, N * D)}, and the output kernel W^O mixes them")
    merged, verdict = _array(merged, "merge_heads(heads)", (B, T, N * D),
                             "(B, T, N*head_dim), the heads' features side by side")
    if verdict:
        return verdict
    if not np.array_equal(merged, x):
        verdict = _moved(merged, x, "merge_heads(heads)")
        if verdict:
            return verdict
        b, t, f = (int(i) for i in np.argwhere(merged != x)[0])       # the first feature that is wrong
        came_from = int(_where_from(merged[b, t, f])[2])
        return (f"not yet: feature {f} of merge_heads(heads) is feature {came_from % D} of head {came_from // D}, "
                f"but feature f is feature f % head_dim of head f // head_dim, here feature {f % D} of head "
                f"{f // D}: merge_heads undoes split_heads, so reshape (B, T, N, head_dim) to (B, T, N*head_dim) "
                "directly, with no transpose")
    # 3. with flat kernels (E, N*head_dim), the two give the library's multi-head attention
    rng = np.random.default_rng(17)
    E = 11
    params = attention_np.init_multi_head_params(rng, E, N, D, dtype=np.float64)
    for layer in params.values():
        layer["bias"] = rng.normal(size=layer["bias"].shape)
    query = rng.normal(size=(B, T, E))                               # (B, T, E)

    def flat(name, inputs):
        layer = params[name]
        return inputs @ layer["kernel"].reshape(E, N * D) + layer["bias"].reshape(N * D)  # (B, T, N*head_dim)

    want_out, _ = attention_np.multi_head_attention(params, query)   # (B, T, E)
    try:
        q, k, v = (split_heads(flat(name, query), N) for name in ("query", "key", "value"))  # (B, T, N, head_dim)
        heads, _ = attention_np.scaled_dot_product_attention(q, k, v)  # (B, T, N, head_dim)
        out = merge_heads(heads) @ params["out"]["kernel"].reshape(N * D, E) + params["out"]["bias"]  # (B, T, E)
    except Exception as error:  # a learner's bug: say what it raised
        return (f"not yet: on the projections of a multi-head attention it raised {type(error).__name__}: {error}")
    verdict = _compare(np.asarray(out, np.float64), want_out, "out", 1e-9)
    return verdict if verdict == RIGHT else (f"{verdict} (attention_np.multi_head_attention, beside your "
                                            "split_heads and merge_heads around flat kernels)")


def _cross_variant(params, query_from, key_from, value_from, *, scale=True, axis=-1, bias=True):
    """Single-head cross-attention written out, with one of a learner's slips switched on."""
    def project(name, x):
        layer = params[name]
        return x @ layer["kernel"] + (layer["bias"] if bias else 0)  # (., H)

    query, key, value = project("query", query_from), project("key", key_from), project("value", value_from)
    scores = query @ key.T / (np.sqrt(query.shape[-1]) if scale else 1.0)  # (T, S)
    weights = np.exp(scores - scores.max(axis, keepdims=True))
    return weights / weights.sum(axis, keepdims=True) @ value         # (T, H)


def check_cross_attention(cross_attention):
    """Exercise 5: ``cross_attention(params, decoder_states (T, E), encoder_outputs (S, E)) -> out (T, H)``,
    queries from the decoder, keys and values from the encoder, ``T != S``; compared with
    ``attention_np.cross_attention``."""
    rng = np.random.default_rng(18)
    T, S, E, H = 3, 5, 7, 11
    params = {name: {"kernel": rng.normal(size=(E, H)) / np.sqrt(E), "bias": rng.normal(size=H)}
              for name in ("query", "key", "value")}
    decoder_states, encoder_outputs = rng.normal(size=(T, E)), rng.normal(size=(S, E))

    def copies():
        return ({name: {field: array.copy() for field, array in layer.items()} for name, layer in params.items()},
                decoder_states.copy(), encoder_outputs.copy())

    out, verdict = _call(cross_attention, *copies())
    if verdict and "raised" in verdict:  # a product of mismatched shapes, most likely: T != S tells which is which
        params_copy, decoder_copy, encoder_copy = copies()
        as_long, _ = _call(cross_attention, params_copy, decoder_copy, encoder_copy[:T])  # an encoder of T positions
        for key_from, value_from, which in ((decoder_states, encoder_outputs[:T], "keys"),
                                            (encoder_outputs[:T], decoder_states, "values")):
            slip = _cross_variant(params, decoder_states, key_from, value_from)
            if getattr(as_long, "shape", None) == slip.shape and np.allclose(as_long, slip, atol=1e-9):
                return (f"not yet: the {which} come from the decoder_states: the keys and the values both come "
                        f"from the encoder_outputs, so that the scores are (T, S), one row per decoder position "
                        f"and one column per encoder position (with T = {T} and S = {S} the shapes do not fit: "
                        f"{verdict[len('not yet: '):]})")
        return (f"{verdict} (the decoder has T = {T} positions, the encoder S = {S}: the scores are (T, S), one "
                "row per decoder position, one column per encoder position)")
    if verdict:
        return verdict
    if getattr(out, "shape", None) == (S, H):
        return (f"not yet: out has shape {(S, H)}, one row per encoder position: the queries come from the "
                f"decoder_states, one output row for each of its T = {T} positions, and the keys and values from "
                "the encoder_outputs")
    out, verdict = _array(out, "out", (T, H), f"one row per decoder position (T = {T}), one column per feature of a projected value (H = {H})")
    if verdict:
        return verdict
    want, _ = attention_np.cross_attention(params, decoder_states[None], encoder_outputs[None])  # (1, T, H)
    verdict = _compare(out, want[0], "out", 1e-9)
    if verdict == RIGHT:
        return RIGHT
    slips = [
        (_cross_variant(params, decoder_states, decoder_states, decoder_states),
         "out is the decoder attending to itself: the keys and values come from the encoder_outputs (what is "
         "read), only the queries from the decoder_states (what is written)"),
        (_cross_variant(params, decoder_states, encoder_outputs, encoder_outputs, scale=False),
         f"out is unscaled: divide the scores by sqrt(H) = sqrt({H}), H the width of a projected query, before "
         "the softmax"),
        (_cross_variant(params, decoder_states, encoder_outputs, encoder_outputs, axis=0),
         f"the softmax runs over the decoder positions: each decoder position's weights sum to 1 over the "
         f"S = {S} encoder positions, so take it over the last axis"),
        (_cross_variant(params, decoder_states, encoder_outputs, encoder_outputs, bias=False),
         "the biases are missing: q = x W_q + b_q, and the same for k and v"),
    ]
    for slip, why in slips:
        if np.allclose(out, slip, atol=1e-9):
            return f"not yet: {why}"
    return verdict


def _is_number(x):
    """A real number (Python or NumPy, a 0-d array too), not a bool, not text."""
    return np.ndim(x) == 0 and np.asarray(x).dtype.kind in "iuf"


def _is_boolean(x):
    """A real yes or no: Python's ``True``/``False`` or a NumPy bool, nothing Python merely reads as one."""
    return isinstance(x, (bool, np.bool_))


def check_scale_prediction(variance_without_scale, variance_with_scale, nearly_one_hot_without_scale):
    """Exercise 6: predictions for ``SCALE_QUERIES`` random queries over ``SCALE_KEYS``
    random keys of width ``SCALE_WIDTH`` (entries N(0, 1)): the variance of the scores
    ``q.k`` and ``q.k / sqrt(H)``, judged against the true variances (``SCALE_WIDTH`` and 1;
    right within ``SCALE_TOLERANCE``), and whether the unscaled weights are nearly one-hot
    (the largest weight of a row above 0.5 on average), measured on a sample. Only a real
    boolean (``True``/``False``, or a NumPy bool) is a yes-or-no answer."""
    answers = (variance_without_scale, variance_with_scale, nearly_one_hot_without_scale)
    if any(a is None for a in answers):
        return "not yet: fill in all three predictions"
    # the true variances, not a sample's: q.k sums H independent products q_i k_i of variance 1
    truths = {
        "variance_without_scale": (float(SCALE_WIDTH), f"q.k sums H = {SCALE_WIDTH} independent products "
                                   "q_i k_i, each of variance 1"),
        "variance_with_scale": (1.0, f"dividing q.k by sqrt(H) divides its variance, H = {SCALE_WIDTH}, by H"),
    }
    for (name, (value, why)), guess in zip(truths.items(), answers):
        if not _is_number(guess):
            return f"not yet: {name} = {guess!r} is of type {type(guess).__name__}; write the number itself"
        if not abs(float(guess) - value) <= SCALE_TOLERANCE * value:  # also catches NaN
            return (f"not yet: {name} = {guess} is more than {SCALE_TOLERANCE:.0%} off: {why}, "
                    f"so the variance is {value:g}")
    if not _is_boolean(nearly_one_hot_without_scale):
        try:
            read_as = f", and Python reads it as {bool(nearly_one_hot_without_scale)}"
        except ValueError:  # an array of several values has no truth value
            read_as = ""
        return (f"not yet: nearly_one_hot_without_scale = {nearly_one_hot_without_scale!r} is of type "
                f"{type(nearly_one_hot_without_scale).__name__}, not a boolean{read_as}; answer True or False")
    rng = np.random.default_rng(15)
    query = rng.normal(size=(SCALE_QUERIES, SCALE_WIDTH))             # (T, H)
    key = rng.normal(size=(SCALE_KEYS, SCALE_WIDTH))                  # (S, H)
    dots = query @ key.T                                              # (T, S), unscaled
    _, weights = attention_np.soft_attention(dots[None], np.zeros((1, SCALE_KEYS, 1)))  # (1, T, S)
    largest = float(weights.max(-1).mean())
    if bool(nearly_one_hot_without_scale) != (largest > 0.5):
        return (f"not yet: unscaled, the largest weight of a row is {largest:.2f} on average (measured), "
                f"{'above' if largest > 0.5 else 'not above'} 0.5")
    return RIGHT


def _features(prev_weights, kernel, *, flip=False, wrap=False, start=None):
    """``f_s = sum_j kernel_j prev[s + j - start]`` written out one term at a time (``start``
    defaults to ``r // 2``, the centred filter), with one of a learner's slips switched on:
    ``flip`` the kernel (a convolution, not a cross-correlation), ``wrap`` around the ends
    (circular, not zero padding), ``start = 0`` (the filter not centred)."""
    S, r = len(prev_weights), len(kernel)
    kernel = kernel[::-1] if flip else kernel
    start = r // 2 if start is None else start
    f = np.zeros(S)
    for s in range(S):
        for j in range(r):
            source = s + j - start
            if wrap:
                source %= S
            if 0 <= source < S:
                f[s] += kernel[j] * prev_weights[source]
    return f                                                          # (S,)


def check_location_features(location_features):
    """Exercise 7: ``location_features(prev_weights (S,), kernel (r,)) -> f (S,)`` with
    ``f_s = sum_j kernel_j prev_weights[s + j - r // 2]``, zero outside the sequence; compared
    with the location features of ``attention_np.location_sensitive_attention``, recovered
    from its weights: with no content terms, one filter, ``U = 1``, ``b = 0`` and ``v = 1``,
    its scores are ``tanh(f)``."""
    rng = np.random.default_rng(19)
    S, r = 9, 5
    prev_weights = rng.dirichlet(np.ones(S))                          # (S,): a previous alignment
    kernel = rng.normal(size=r)                                       # (r,): no symmetry to hide a flip
    f, verdict = _call(location_features, prev_weights.copy(), kernel.copy())
    if verdict:
        return verdict
    if getattr(f, "shape", None) == (S - r + 1,):
        return (f"not yet: f has shape {(S - r + 1,)}, one feature for each place the whole filter fits "
                f"(np.correlate's or np.convolve's mode 'valid'): one feature per position, S = {S}, needs "
                f"r // 2 = {r // 2} zeros past each end ('same')")
    if getattr(f, "shape", None) == (S + r - 1,):
        return (f"not yet: f has shape {(S + r - 1,)}, one feature for every overlap of filter and weights "
                f"(mode 'full'): one feature per position, S = {S}, with the filter centred on it ('same')")
    f, verdict = _array(f, "f", (S,), "one feature per source position")
    if verdict:
        return verdict
    # the library: scores tanh(U f + b) v with W = V = 0, U = 1, b = 0, v = 1, so weights = softmax(tanh(f))
    params = {"query": {"kernel": np.zeros((1, 1))}, "keys": {"kernel": np.zeros((1, 1))},
              "conv": {"kernel": kernel.reshape(r, 1, 1)}, "location": {"kernel": np.ones((1, 1))},
              "bias": np.zeros(1), "v": np.ones(1)}
    _, weights = attention_np.location_sensitive_attention(params, np.zeros((1, 1)), np.zeros((1, S, 1)),
                                                           prev_weights[None])   # (1, S)
    mine = np.exp(np.tanh(f))
    if np.all(np.isfinite(mine)) and np.allclose(mine / mine.sum(), weights[0], rtol=0, atol=1e-12) \
            and np.allclose(f, _features(prev_weights, kernel), rtol=0, atol=1e-9):
        return RIGHT
    slips = [
        (_features(prev_weights, kernel, flip=True),
         "f is the library's with the filter reversed: np.convolve (like a convolution in a signals course) "
         "flips the filter, but a convolution layer, and Chorowski's F * a, slides it as it is (a "
         "cross-correlation): F_0 reads the position r // 2 before s. Use np.correlate, or flip it back"),
        (_features(prev_weights, kernel, wrap=True),
         "f wraps around the ends: position 0 reads the last positions. Past either end the previous "
         "weights count as 0 (zero padding), not as the other end's"),
        (_features(prev_weights, kernel, start=0),
         f"the filter is not centred: f_s starts reading at position s, but its middle entry j = r // 2 "
         f"= {r // 2} reads position s itself, so F_0 reads s - {r // 2}"),
        (_features(prev_weights, kernel, start=r - 1),
         f"the filter ends at position s: its middle entry j = r // 2 = {r // 2} reads position s itself, "
         f"so the last entry reads s + {r // 2}"),
    ]
    for slip, why in slips:
        if np.allclose(f, slip, rtol=0, atol=1e-9):
            return f"not yet: {why}"
    return _compare(f, _features(prev_weights, kernel), "f", 1e-9)


def check_window_mask(window_mask):
    """Exercise 8: ``window_mask(T, S, left, right) -> (T, S)`` bool, True where
    ``t - left <= s <= t + right``; compared with the keys that
    ``attention_np.scaled_dot_product_attention(..., local_window_size=(left, right))`` weighs."""
    T, S, left, right = 6, 9, 3, 1                                    # T != S, left != right
    mask, verdict = _call(window_mask, T, S, left, right)
    if verdict:
        return verdict
    if getattr(mask, "shape", None) == (S, T):
        return (f"not yet: the mask has shape {(S, T)}, one row per key: it is (T, S) = {(T, S)}, one row per "
                "query, one column per key, as the scores")
    mask, verdict = _array(mask, "the mask", (T, S), "one row per query, one column per key")
    if verdict:
        return verdict
    if not np.all((mask == 0) | (mask == 1)):
        return "not yet: the mask holds numbers other than True/False (or 1/0): True where query t may see key s"
    mask = mask.astype(bool)
    # the library: equal keys give every key in the window the same weight, and every other key 0
    zeros = np.zeros((1, max(T, S), 1, 2))
    _, weights = attention_np.scaled_dot_product_attention(zeros[:, :T], zeros[:, :S], zeros[:, :S],
                                                           local_window_size=(left, right))
    want = weights[0, 0] > 0                                          # (T, S)
    if np.array_equal(mask, want):
        return RIGHT
    t, s = np.arange(T)[:, None], np.arange(S)[None, :]
    slips = [
        ((t - right <= s) & (s <= t + left),
         f"the window is mirrored: left = {left} counts the keys before the query's position (s < t), "
         f"right = {right} those after it (s > t): t - left <= s <= t + right"),
        ((t - left < s) & (s < t + right),
         f"the ends are left out: the window holds s = t - left and s = t + right too, left + 1 + right = "
         f"{left + 1 + right} keys in the middle of the sequence (use <=, not <)"),
        (np.abs(t - s) <= left, f"right = {right} is not used: the window reaches left = {left} keys before "
                                f"the query and right = {right} after it"),
        (np.abs(t - s) <= right, f"left = {left} is not used: the window reaches left = {left} keys before "
                                 f"the query and right = {right} after it"),
        (~((t - left <= s) & (s <= t + right)), "the mask is inverted: True where the query may see the key"),
    ]
    for slip, why in slips:
        if np.array_equal(mask, slip):
            return f"not yet: {why}"
    wrong = np.argwhere(mask != want)[0]
    t0, s0 = (int(i) for i in wrong)
    return (f"not yet: mask[{t0}, {s0}] is {bool(mask[t0, s0])}, expected {bool(want[t0, s0])}: query {t0} sees "
            f"the keys {t0 - left} to {t0 + right} (those that exist)")


def check_head_by_hand(answer):
    """Exercise 9: the output ``(T, H) = (2, 2)`` of one head on ``HAND_QUERY``, ``HAND_KEY``,
    ``HAND_VALUE``, written down as numbers; compared with ``scaled_dot_product_attention``."""
    if answer is None:
        return "not yet: `by_hand` is None; write the two rows of the output as numbers"
    want, weights = attention_np.scaled_dot_product_attention(
        HAND_QUERY[None, :, None], HAND_KEY[None, :, None], HAND_VALUE[None, :, None])  # (1, T, 1, H), (1, 1, T, S)
    want, weights = want[0, :, 0], weights[0, 0]                     # (T, H), (T, S)
    got, verdict = _array(answer, "by_hand", want.shape, "one row per query, one number per feature")
    if verdict:
        return verdict
    verdict = _compare(got, want, "by_hand", 1e-2)
    if verdict == RIGHT:
        return RIGHT
    t = int(_worst(got, want)[0])                                     # the row of the worst entry
    scores = HAND_QUERY[t] @ HAND_KEY.T / np.sqrt(2)                  # (S,)
    return (f"{verdict}: row {t} is query {t}'s output; it scores the keys {scores[0]:.3g} and "
            f"{scores[1]:.3g}, so its weights are {weights[t, 0]:.3g} and {weights[t, 1]:.3g}")


def check_softmax_backward(softmax_backward):
    """Exercise 10: ``softmax_backward(weights (T, S), d_weights (T, S)) -> d_logits (T, S)``,
    the gradient of a loss at the logits given its gradient at ``weights = softmax(logits)``;
    compared with ``jax.vjp`` of ``jax.nn.softmax``."""
    import jax

    rng = np.random.default_rng(14)
    logits = rng.normal(size=(4, 6)).astype(np.float32)              # (T, S)
    d_weights = rng.normal(size=(4, 6)).astype(np.float32)
    weights, vjp = jax.vjp(jax.nn.softmax, logits)
    (want,) = vjp(d_weights)
    d_logits, verdict = _answer(softmax_backward, (np.asarray(weights), d_weights.copy()), "d_logits",
                                logits.shape, "the shape of the logits")
    if verdict:
        return verdict
    verdict = _compare(d_logits, np.asarray(want, np.float64), "d_logits", 1e-5)
    sums = d_logits.sum(-1)                                           # (T,)
    if verdict != RIGHT and not np.all(np.abs(sums) <= 1e-5):
        t = int(np.argmax(np.where(np.isnan(sums), np.inf, np.abs(sums))))
        return (f"not yet: row {t} of d_logits sums to {sums[t]:.4g}, not 0: adding a constant to a row "
                f"of logits leaves its softmax unchanged, so the gradient's row sums are 0")
    return verdict
