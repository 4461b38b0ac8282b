"""The checks of the tour's exercises: each takes the learner's answer and returns a verdict.

Every check compares the answer with an independent source, the library
(``attention_np``) or JAX's own differentiation, on inputs the learner has not seen, and
returns ``"right"`` or ``"not yet: <what is wrong>"``. An answer that is not filled in yet
(a stub that raises ``NotImplementedError`` or returns ``None``) is "not yet", never an
error, so the tour runs top to bottom with every exercise open. The solutions are in
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

# Exercise 5: the setting of the prediction
SCALE_WIDTH, SCALE_KEYS, SCALE_QUERIES = 256, 16, 2000


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


def _compare(got, want, what, atol):
    """``"right"`` if ``got`` equals ``want`` within ``atol``, else where it differs."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        return f"not yet: {what} has shape {got.shape}, expected {want.shape}"
    error = np.abs(got - want)
    if not np.all(error <= atol):  # also catches NaN
        worst = np.unravel_index(np.nanargmax(np.where(np.isnan(error), np.inf, error)), error.shape)
        where = ", ".join(str(int(i)) for i in worst)
        return f"not yet: {what}[{where}] is {got[worst]:.4g}, expected {want[worst]:.4g}"
    return RIGHT


def check_masked_softmax(masked_softmax):
    """Exercise 1: ``masked_softmax(logits (T, S), mask (T, S) bool) -> weights (T, S)``,
    zero weight where the mask is False and all-zero weights for a row with every key masked;
    compared with the weights of ``attention_np.soft_attention``."""
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(5, 7)) * 3                              # (T, S)
    mask = rng.random((5, 7)) < 0.6
    mask[0] = True                                                    # a row that sees every key
    mask[1] = False                                                   # a row that sees none
    mask[2, 3] = True                                                 # and one key seen at least
    logits[2, 3] = 1000.0                                             # a huge logit: exp overflows unless you subtract the max
    weights, verdict = _call(masked_softmax, logits.copy(), mask.copy())
    if verdict:
        return verdict
    _, want = attention_np.soft_attention(logits[None], np.zeros((1, 7, 1)), mask=mask[None])  # (1, T, S)
    return _compare(weights, want[0], "weights", 1e-6)


def check_causal_attention(causal_attention):
    """Exercise 2: ``causal_attention(query (T, H), key (T, H), value (T, H)) -> out (T, H)``,
    scaled dot-product attention where position t sees positions <= t; compared with
    ``attention_np.scaled_dot_product_attention(..., is_causal=True)``."""
    rng = np.random.default_rng(12)
    query, key, value = rng.normal(size=(3, 6, 5))                    # (T, H) each
    out, verdict = _call(causal_attention, query.copy(), key.copy(), value.copy())
    if verdict:
        return verdict
    want, _ = attention_np.scaled_dot_product_attention(
        query[None, :, None], key[None, :, None], value[None, :, None], is_causal=True)  # (1, T, 1, H)
    return _compare(out, want[0, :, 0], "out", 1e-6)


def check_head_by_hand(answer):
    """Exercise 3: the output ``(T, H) = (2, 2)`` of one head on ``HAND_QUERY``, ``HAND_KEY``,
    ``HAND_VALUE``, written down as numbers; compared with ``scaled_dot_product_attention``."""
    if answer is None:
        return "not yet: `by_hand` is None; write the two rows of the output as numbers"
    want, _ = attention_np.scaled_dot_product_attention(
        HAND_QUERY[None, :, None], HAND_KEY[None, :, None], HAND_VALUE[None, :, None])  # (1, T, 1, H)
    return _compare(answer, want[0, :, 0], "by_hand", 1e-2)


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
    d_logits, verdict = _call(softmax_backward, np.asarray(weights), d_weights.copy())
    if verdict:
        return verdict
    return _compare(d_logits, np.asarray(want, np.float64), "d_logits", 1e-5)


def check_scale_prediction(variance_without_scale, variance_with_scale, nearly_one_hot_without_scale):
    """Exercise 5: predictions for ``SCALE_QUERIES`` random queries over ``SCALE_KEYS``
    random keys of width ``SCALE_WIDTH`` (entries N(0, 1)), measured here: the variance of
    the scores ``q.k`` and ``q.k / sqrt(H)`` (right within 15%), and whether the unscaled
    weights are nearly one-hot (the largest weight of a row above 0.5 on average)."""
    answers = (variance_without_scale, variance_with_scale, nearly_one_hot_without_scale)
    if any(a is None for a in answers):
        return "not yet: fill in all three predictions"
    rng = np.random.default_rng(15)
    query = rng.normal(size=(SCALE_QUERIES, SCALE_WIDTH))             # (T, H)
    key = rng.normal(size=(SCALE_KEYS, SCALE_WIDTH))                  # (S, H)
    dots = query @ key.T                                              # (T, S)
    _, weights = attention_np.soft_attention(dots[None], np.zeros((1, SCALE_KEYS, 1)))  # unscaled, (1, T, S)
    measured = (dots.var(), (dots / np.sqrt(SCALE_WIDTH)).var(), bool(weights.max(-1).mean() > 0.5))
    for name, guess, value in zip(("variance_without_scale", "variance_with_scale"), answers, measured):
        if not abs(float(guess) - value) <= 0.15 * value:
            return f"not yet: {name} = {guess}, but the measured variance is {value:.1f}"
    if bool(nearly_one_hot_without_scale) != measured[2]:
        largest = float(weights.max(-1).mean())
        return f"not yet: unscaled, the largest weight of a row is {largest:.2f} on average"
    return RIGHT
