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

# Exercise 3: one head, T = S = H = 2, worked by hand. The key's first entry is sqrt(2) ln 3,
# so that after the scale 1/sqrt(2) query 0 scores the two keys ln 3 and 0.
HAND_QUERY = np.array([[1.0, 0.0], [0.0, 1.0]])                     # (T, H)
HAND_KEY = np.array([[np.sqrt(2) * np.log(3), 0.0], [0.0, 0.0]])    # (S, H)
HAND_VALUE = np.array([[4.0, 0.0], [0.0, 8.0]])                     # (S, H)

# Exercise 5: the setting of the prediction, and how close a predicted variance must be
SCALE_WIDTH, SCALE_KEYS, SCALE_QUERIES = 256, 16, 2000
SCALE_TOLERANCE = 0.15   # relative to the true variance


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


def check_causal_attention(causal_attention):
    """Exercise 2: ``causal_attention(query (T, H), key (T, H), value (T, H)) -> out (T, H)``,
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


def check_head_by_hand(answer):
    """Exercise 3: the output ``(T, H) = (2, 2)`` of one head on ``HAND_QUERY``, ``HAND_KEY``,
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
    """Exercise 4: ``softmax_backward(weights (T, S), d_weights (T, S)) -> d_logits (T, S)``,
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


def _is_number(x):
    """A real number (Python or NumPy, a 0-d array too), not a bool, not text."""
    return np.ndim(x) == 0 and np.asarray(x).dtype.kind in "iuf"


def _is_boolean(x):
    """A real yes or no: Python's ``True``/``False`` or a NumPy bool, nothing Python merely reads as one."""
    return isinstance(x, (bool, np.bool_))


def check_scale_prediction(variance_without_scale, variance_with_scale, nearly_one_hot_without_scale):
    """Exercise 5: predictions for ``SCALE_QUERIES`` random queries over ``SCALE_KEYS``
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
