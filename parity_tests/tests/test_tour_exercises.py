"""The tour's exercises: every check says "right" to the solutions, "not yet" to a wrong or
unfilled answer, and the tour offers each exercise with its stub, its check and nothing more.

The checks and solutions live beside the tour (``docs/tour_checks.py``, ``docs/tour_solutions.py``),
where the notebook imports them from its own folder.
"""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_tour_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checks, solutions = _load("tour_checks"), _load("tour_solutions")


def _not_implemented(*args):
    raise NotImplementedError


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _one_hot(index, S):
    """``(T, S)`` weights with a 1 in row t at key ``index[t]``."""
    return (np.arange(S) == index[:, None]).astype(float)


def _own_noise():
    """A Gumbel sample that ignores the noise it is given and draws its own (seeded, so the test is repeatable)."""
    rng = np.random.default_rng(0)
    return lambda e, g: _one_hot((e + rng.gumbel(size=e.shape)).argmax(-1), e.shape[-1])


def _transposed_split(x, N):
    """Reshape to (B, T, head_dim, N), then swap: deals the features out to the heads in turn."""
    B, T, F = x.shape
    return x.reshape(B, T, F // N, N).swapaxes(-1, -2)


def _split_through_positions(x, N):
    """Reshape to (B, N, T, head_dim), then move the heads after the positions: mixes positions."""
    B, T, F = x.shape
    return x.reshape(B, N, T, F // N).transpose(0, 2, 1, 3)


def _transposed_merge(heads):
    B, T, N, D = heads.shape
    return heads.swapaxes(-1, -2).reshape(B, T, N * D)


def _features(prev_weights, kernel, start):
    """``f_s = sum_j kernel_j prev[s + j - start]``, zero outside: a filter read from ``start`` before s."""
    padded = np.concatenate([np.zeros(len(kernel)), prev_weights, np.zeros(len(kernel))])
    offset = len(kernel) - start
    return np.array([padded[s + offset:s + offset + len(kernel)] @ kernel for s in range(len(prev_weights))])


def _circular(prev_weights, kernel):
    """The centred filter, wrapping around the ends (circular, not zero, padding)."""
    r = len(kernel)
    return np.array([sum(kernel[j] * prev_weights[(s + j - r // 2) % len(prev_weights)] for j in range(r))
                     for s in range(len(prev_weights))])


def _positions(T, S):
    return np.arange(T)[:, None], np.arange(S)[None, :]               # (T, 1), (1, S)


def _mirrored_window(T, S, left, right):
    t, s = _positions(T, S)
    return (t - right <= s) & (s <= t + left)


def _open_window(T, S, left, right):
    t, s = _positions(T, S)
    return (t - left < s) & (s < t + right)


def _symmetric_window(T, S, left, right):
    t, s = _positions(T, S)
    return np.abs(t - s) <= left


def _project(params, name, x):
    return x @ params[name]["kernel"] + params[name]["bias"]


def _cross(params, query_from, key_from, value_from, *, scale=True, axis=-1, bias=True):
    """Single-head cross-attention, with a slip switched on (an independent copy of the check's own)."""
    zero = {name: {"kernel": layer["kernel"], "bias": 0 * layer["bias"]} for name, layer in params.items()}
    p = params if bias else zero
    q, k, v = _project(p, "query", query_from), _project(p, "key", key_from), _project(p, "value", value_from)
    scores = q @ k.T / (np.sqrt(q.shape[-1]) if scale else 1.0)
    return _softmax(scores, axis) @ v


# (check, the solution, answers that are wrong in ways a learner might be)
EXERCISES = {
    "masked_softmax": (
        checks.check_masked_softmax, solutions.masked_softmax,
        [lambda x, m: _softmax(x),                                          # forgets the mask
         lambda x, m: _softmax(np.where(m, x, -np.inf)),                    # NaN on the fully masked row
         lambda x, m: np.where(m, np.exp(x), 0) / np.where(m, np.exp(x), 0).sum(-1, keepdims=True)]),  # overflows
    "gumbel_sample": (
        checks.check_gumbel_sample, solutions.sample,
        [lambda e, g: _one_hot(e.argmax(-1), e.shape[-1]),                 # forgets the noise
         lambda e, g: ((e + g) == (e + g).max(0, keepdims=True)).astype(float),  # argmax over the queries
         lambda e, g: _one_hot((e - g).argmax(-1), e.shape[-1]),           # subtracts the noise
         _own_noise(),                                                      # draws noise of its own
         lambda e, g: _softmax(e + g)]),                                    # soft, not one-hot
    "causal_attention": (
        checks.check_causal_attention, solutions.causal_attention,
        [lambda q, k, v: _softmax(q @ k.T / np.sqrt(q.shape[1])) @ v,      # not causal
         lambda q, k, v: solutions.masked_softmax(q @ k.T, np.tril(np.ones((len(q),) * 2, bool))) @ v,  # no scale
         lambda q, k, v: solutions.masked_softmax(q @ k.T / np.sqrt(q.shape[1]), np.triu(np.ones((len(q),) * 2, bool))) @ v,
         lambda q, k, v: (solutions.causal_attention(q, k, v), None)]),                    # the library's (out, weights)
    "split_merge_heads": (
        lambda answer: checks.check_split_merge_heads(*answer), (solutions.split_heads, solutions.merge_heads),
        [(_transposed_split, _transposed_merge),                            # mixes features across heads
         (_split_through_positions, solutions.merge_heads),                 # mixes positions
         (lambda x, N: solutions.split_heads(x, N).transpose(0, 2, 1, 3), solutions.merge_heads),  # PyTorch's order
         (solutions.split_heads, _transposed_merge),                        # merges in the other order
         (solutions.split_heads, lambda h: h.sum(2))]),                     # sums the heads
    "cross_attention": (
        checks.check_cross_attention, solutions.cross_attention,
        [lambda p, d, e: _cross(p, d, d, d),                                # the decoder attends to itself
         lambda p, d, e: _cross(p, d, d, e),                                # keys from the decoder
         lambda p, d, e: _cross(p, e, d, d),                                # queries from the encoder
         lambda p, d, e: _cross(p, d, e, e, scale=False),
         lambda p, d, e: _cross(p, d, e, e, axis=0),                        # softmax over the queries
         lambda p, d, e: _cross(p, d, e, e, bias=False)]),
    "location_features": (
        checks.check_location_features, solutions.location_features,
        [lambda a, k: np.convolve(a, k, "same"),                            # flips the filter
         lambda a, k: np.correlate(a, k, "valid"),                          # one feature where the filter fits
         lambda a, k: np.correlate(a, k, "full"),
         _circular,                                                         # wraps around the ends
         lambda a, k: _features(a, k, 0),                                   # the filter starts at s
         lambda a, k: _features(a, k, len(k) - 1),                          # the filter ends at s
         lambda a, k: a * k[len(k) // 2]]),                                 # the middle entry only
    "window_mask": (
        checks.check_window_mask, solutions.window_mask,
        [_mirrored_window, _open_window, _symmetric_window,
         lambda T, S, left, right: solutions.window_mask(S, T, left, right),  # (S, T)
         lambda T, S, left, right: ~solutions.window_mask(T, S, left, right),  # inverted
         lambda T, S, left, right: np.tril(np.triu(np.ones((T, S), bool), -right), left),  # numpy's k reversed
         lambda T, S, left, right: np.tril(np.ones((T, S), bool), right)]),  # causal up to right, no left end
    "head_by_hand": (
        checks.check_head_by_hand, solutions.by_hand,
        [np.array([[3.0, 2.0], [4.0, 2.0]]), np.array([3.0, 2.0, 2.0, 4.0]), np.zeros((2, 2))]),
    "softmax_backward": (
        checks.check_softmax_backward, solutions.softmax_backward,
        [lambda w, d: w * d,                                                # forgets the normalisation
         lambda w, d: w * (1 - w) * d,                                      # the diagonal of the Jacobian only
         lambda w, d: d - (d * w).sum(-1, keepdims=True)]),
    "scale_prediction": (
        lambda answer: checks.check_scale_prediction(*answer),
        (solutions.variance_without_scale, solutions.variance_with_scale, solutions.nearly_one_hot_without_scale),
        [(16, 1, True), (256, 16, True), (256, 1, False), (217, 1, True),
         (256, 1, "False"), (256, 1, [False]), (256, 1, float("nan"))]),                     # not booleans
}


@pytest.mark.parametrize("name", EXERCISES)
def test_the_solution_is_right(name):
    check, solution, _ = EXERCISES[name]
    assert check(solution) == checks.RIGHT


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the wrong answers overflow and divide by zero
@pytest.mark.parametrize("name", EXERCISES)
def test_wrong_answers_are_not_yet_right(name):
    check, _, wrong = EXERCISES[name]
    for answer in wrong:
        verdict = check(answer)
        assert verdict.startswith("not yet: "), (name, verdict)


@pytest.mark.parametrize("name", EXERCISES)
def test_an_unfilled_stub_is_not_yet_right_and_raises_nothing(name):
    check, solution, _ = EXERCISES[name]
    if name == "scale_prediction":
        stubs = [(None, None, None)]
    elif name == "split_merge_heads":
        stubs = [(_not_implemented, _not_implemented), (lambda *args: None, solutions.merge_heads),
                 (solutions.split_heads, _not_implemented), (solutions.split_heads, lambda heads: 1 / 0)]
    elif callable(solution):
        stubs = [_not_implemented, lambda *args: None, lambda *args: 1 / 0]
    else:
        stubs = [None]
    for stub in stubs:
        assert check(stub).startswith("not yet: "), name


def test_the_checks_say_what_is_wrong():
    verdict = checks.check_head_by_hand(np.array([[3.0, 2.0], [4.0, 2.0]]))
    assert verdict == ("not yet: by_hand[1, 0] is 4, expected 2: row 1 is query 1's output; it scores the keys "
                       "0 and 0, so its weights are 0.5 and 0.5")
    assert "raised ZeroDivisionError" in checks.check_causal_attention(lambda q, k, v: 1 / 0)


def _verdict_pattern(text):
    """``text`` as a regular expression in which each ``#`` stands for one printed number and each
    ``...`` for any text (an error message of NumPy's, whose words are NumPy's to change)."""
    def numbers(text):
        return "".join(re.escape(part) + (r"(-?[\d.]+(e[-+]\d+)?|nan)" if i < text.count("#") else "")
                       for i, part in enumerate(text.split("#")))

    return ".+".join(numbers(part) for part in text.split("..."))


def _causal_mask(q):
    return np.tril(np.ones((len(q), len(q)), bool))


# (check, a wrong answer, the verdict it gets: it says why, not only where; # is a number)
WHY = {
    "masked_softmax forgets the mask": (
        checks.check_masked_softmax, lambda x, m: _softmax(x),
        "not yet: row 1 has every key masked: its weights must all be 0, not [#, #, #, #, #, #, #]; "
        "weights[#, #] is #, but row # masks key #: a masked key gets exactly 0"),
    "masked_softmax fills with -inf": (
        checks.check_masked_softmax, lambda x, m: _softmax(np.where(m, x, -np.inf)),
        "not yet: row 1 has every key masked: its weights must all be 0, not [nan, nan, nan, nan, nan, nan, nan]"),
    "masked_softmax overflows": (
        checks.check_masked_softmax,
        lambda x, m: np.where(m, np.exp(x), 0) / np.where(m, np.exp(x), 0).sum(-1, keepdims=True),
        "not yet: row 1 has every key masked: its weights must all be 0, not [nan, nan, nan, nan, nan, nan, nan]; "
        "row 2 has a logit of 1000 and its weights are not finite: exp(1000) overflows; subtract the row's "
        "maximum before exp"),
    "masked_softmax leaves a masked key a weight": (
        checks.check_masked_softmax, lambda x, m: np.where(m.any(-1, keepdims=True), _softmax(x), 0.0),
        "not yet: weights[#, #] is #, but row # masks key #: a masked key gets exactly 0"),
    "masked_softmax does not normalise": (
        checks.check_masked_softmax, lambda x, m: solutions.masked_softmax(x, m) * 2,
        "not yet: row 0 sums to 2: the weights of a row that sees a key sum to 1"),
    "sample forgets the noise": (
        checks.check_gumbel_sample, lambda e, g: _one_hot(e.argmax(-1), e.shape[-1]),
        "not yet: row 1 chooses key 6, the best score, but with the noise key 1 is best: add gumbel_noise to "
        "the scores before the argmax; without it every call makes the same choice, the argmax of hard "
        "attention above, not a sample"),
    "sample takes the argmax over the queries": (
        checks.check_gumbel_sample, lambda e, g: ((e + g) == (e + g).max(0, keepdims=True)).astype(float),
        "not yet: every column has one 1, and row 0 has 2: the choice is made for each query among its 7 keys, "
        "so take the argmax over the last axis (axis=-1), not over the queries (axis=0)"),
    "sample takes the argmax over the queries, one-hot over the keys": (
        checks.check_gumbel_sample, lambda e, g: np.eye(e.shape[1])[(e + g).argmax(0)],
        "not yet: the weights has shape (7, 7), expected (5, 7): one row per query (T = 5), one weight per key "
        "(S = 7), 1 at the chosen key and 0 elsewhere"),
    "sample subtracts the noise": (
        checks.check_gumbel_sample, lambda e, g: _one_hot((e - g).argmax(-1), e.shape[-1]),
        "not yet: row 0 chooses key 1, the argmax of scores - gumbel_noise: the Gumbel-max trick adds the noise, "
        "and argmax(scores[0] + gumbel_noise[0]) is key 4"),
    "sample takes the argmin": (
        checks.check_gumbel_sample, lambda e, g: _one_hot((e + g).argmin(-1), e.shape[-1]),
        "not yet: row 0 chooses key 0, the smallest of scores + gumbel_noise: choose the largest, key 4 (the argmax)"),
    "sample draws noise of its own": (
        checks.check_gumbel_sample, _own_noise(),
        "not yet: two calls with the same scores and noise choose differently: use the gumbel_noise you are "
        "given (it is the randomness), do not draw noise of your own"),
    "sample returns soft weights": (
        checks.check_gumbel_sample, lambda e, g: _softmax(e + g),
        "not yet: row 0 is [#, #, #, #, #, #, #], not one-hot: hard attention gives one key all the weight, 1, "
        "and every other key 0 (weights in between are soft attention)"),
    "split_heads mixes features across heads": (
        lambda split: checks.check_split_merge_heads(split, solutions.merge_heads), _transposed_split,
        "not yet: head 0 holds the features [0, 5, 10, 15, 20, 25, 30] of the 35, but head n holds the 7 "
        "consecutive features n*head_dim to n*head_dim + 6, here 0 to 6: the library's kernel (E, N, head_dim) "
        "is the flat kernel (E, N*head_dim) with head n in columns n*head_dim to (n+1)*head_dim - 1; reshape to "
        "(B, T, N, head_dim) directly, with no transpose (a reshape to (B, T, head_dim, N) and a transpose deals "
        "the features out to the heads in turn)"),
    "split_heads mixes positions": (
        lambda split: checks.check_split_merge_heads(split, solutions.merge_heads), _split_through_positions,
        "not yet: split_heads(x, N)[0, 0] holds features of batch row 0, position 1: only the features are split "
        "(or merged), each position keeps its own; a reshape across the positions, as with PyTorch's "
        "(B, N, T, head_dim) order, mixes them"),
    "split_heads returns PyTorch's order": (
        lambda split: checks.check_split_merge_heads(split, solutions.merge_heads),
        lambda x, N: solutions.split_heads(x, N).transpose(0, 2, 1, 3),
        "not yet: split_heads(x, N) has shape (2, 5, 3, 7), (B, N, T, head_dim), PyTorch's order with the heads "
        "before the positions; the library's, and jax.nn.dot_product_attention's, is (B, T, N, head_dim) = "
        "(2, 3, 5, 7): leave out the transpose"),
    "split_heads swaps N and head_dim": (
        lambda split: checks.check_split_merge_heads(split, solutions.merge_heads),
        lambda x, N: x.reshape(*x.shape[:2], -1, N),
        "not yet: split_heads(x, N) has shape (2, 3, 7, 5), expected (2, 3, 5, 7): (B, T, N, head_dim), N = 5 "
        "heads of head_dim = 7 features each"),
    "split_heads changes the numbers": (
        lambda split: checks.check_split_merge_heads(split, solutions.merge_heads),
        lambda x, N: solutions.split_heads(x, N) / 2,
        "not yet: split_heads(x, N)[1, 2, 4, 6] is 617, expected 1234: a reshape only moves numbers, it changes none"),
    "split_heads rounds to whole numbers": (
        lambda split: checks.check_split_merge_heads(split, solutions.merge_heads),
        lambda x, N: np.round(solutions.split_heads(x, N)),                 # right on the labels, wrong on floats
        "not yet: out[#, #, #] is #, expected # (attention_np.multi_head_attention, beside your split_heads "
        "and merge_heads around flat kernels)"),
    "merge_heads mixes features across heads": (
        lambda merge: checks.check_split_merge_heads(solutions.split_heads, merge), _transposed_merge,
        "not yet: feature 1 of merge_heads(heads) is feature 0 of head 1, but feature f is feature f % head_dim "
        "of head f // head_dim, here feature 1 of head 0: merge_heads undoes split_heads, so reshape "
        "(B, T, N, head_dim) to (B, T, N*head_dim) directly, with no transpose"),
    "merge_heads mixes positions": (
        lambda merge: checks.check_split_merge_heads(solutions.split_heads, merge),
        lambda h: h.transpose(0, 2, 1, 3).reshape(h.shape[0], h.shape[1], -1),
        "not yet: merge_heads(heads)[0, 0] holds features of batch row 0, position 1: only the features are "
        "split (or merged), each position keeps its own; a reshape across the positions, as with PyTorch's "
        "(B, N, T, head_dim) order, mixes them"),
    "merge_heads sums the heads": (
        lambda merge: checks.check_split_merge_heads(solutions.split_heads, merge), lambda h: h.sum(2),
        "not yet: merge_heads(heads) has shape (2, 3, 7), one head's width: summing or averaging the heads loses "
        "what each found; merge_heads puts their features side by side, (B, T, N*head_dim) = (2, 3, 35), and the "
        "output kernel W^O mixes them"),
    "cross_attention lets the decoder attend to itself": (
        checks.check_cross_attention, lambda p, d, e: _cross(p, d, d, d),
        "not yet: out is the decoder attending to itself: the keys and values come from the encoder_outputs "
        "(what is read), only the queries from the decoder_states (what is written)"),
    "cross_attention takes the keys from the decoder": (
        checks.check_cross_attention, lambda p, d, e: _cross(p, d, d, e),
        "not yet: the keys come from the decoder_states: the keys and the values both come from the "
        "encoder_outputs, so that the scores are (T, S), one row per decoder position and one column per encoder "
        "position (with T = 3 and S = 5 the shapes do not fit: it raised ValueError: ...)"),
    "cross_attention takes the values from the decoder": (
        checks.check_cross_attention, lambda p, d, e: _cross(p, d, e, d),
        "not yet: the values come from the decoder_states: the keys and the values both come from the "
        "encoder_outputs, so that the scores are (T, S), one row per decoder position and one column per encoder "
        "position (with T = 3 and S = 5 the shapes do not fit: it raised ValueError: ...)"),
    "cross_attention takes the queries from the encoder": (
        checks.check_cross_attention, lambda p, d, e: _cross(p, e, d, d),
        "not yet: out has shape (5, 11), one row per encoder position: the queries come from the decoder_states, "
        "one output row for each of its T = 3 positions, and the keys and values from the encoder_outputs"),
    "cross_attention forgets the scale": (
        checks.check_cross_attention, lambda p, d, e: _cross(p, d, e, e, scale=False),
        "not yet: out is unscaled: divide the scores by sqrt(H) = sqrt(11), H the width of a projected query, "
        "before the softmax"),
    "cross_attention softmaxes over the queries": (
        checks.check_cross_attention, lambda p, d, e: _cross(p, d, e, e, axis=0),
        "not yet: the softmax runs over the decoder positions: each decoder position's weights sum to 1 over the "
        "S = 5 encoder positions, so take it over the last axis"),
    "cross_attention forgets the biases": (
        checks.check_cross_attention, lambda p, d, e: _cross(p, d, e, e, bias=False),
        "not yet: the biases are missing: q = x W_q + b_q, and the same for k and v"),
    "cross_attention does not project": (
        checks.check_cross_attention, lambda p, d, e: _softmax(d @ e.T / np.sqrt(d.shape[1])) @ e,
        "not yet: out has shape (3, 7), expected (3, 11): one row per decoder position (T = 3), one column per "
        "feature of a projected value (H = 11)"),
    "causal_attention returns (out, weights), the library's convention": (
        checks.check_causal_attention,
        lambda q, k, v: (solutions.causal_attention(q, k, v), solutions.masked_softmax(q @ k.T, _causal_mask(q))),
        "not yet: it returns a tuple of 2 (like the library's `(out, weights)`); return only out, one array "
        "of shape (6, 5)"),
    "causal_attention is not causal": (
        checks.check_causal_attention, lambda q, k, v: _softmax(q @ k.T / np.sqrt(q.shape[1])) @ v,
        "not yet: out[0] changes when the keys and values after position 0 change: position 0 must see "
        "only positions s <= 0 (mask the scores above the diagonal)"),
    "causal_attention masks the other triangle": (
        checks.check_causal_attention,
        lambda q, k, v: solutions.masked_softmax(q @ k.T / np.sqrt(q.shape[1]), _causal_mask(q).T) @ v,
        "not yet: out[0] changes when the keys and values after position 0 change: position 0 must see "
        "only positions s <= 0 (mask the scores above the diagonal)"),
    "causal_attention forgets the scale": (
        checks.check_causal_attention, lambda q, k, v: solutions.masked_softmax(q @ k.T, _causal_mask(q)) @ v,
        "not yet: out is causal but unscaled: divide the scores by sqrt(H) = sqrt(5) before the softmax"),
    "causal_attention returns the wrong shape": (
        checks.check_causal_attention, lambda q, k, v: solutions.causal_attention(q, k, v).T,
        "not yet: out has shape (5, 6), expected (6, 5): one row per position"),
    "by_hand is flat": (
        checks.check_head_by_hand, np.array([3.0, 2.0, 2.0, 4.0]),
        "not yet: by_hand has shape (4,), expected (2, 2): one row per query, one number per feature"),
    "by_hand gets query 0 wrong": (
        checks.check_head_by_hand, np.array([[2.0, 4.0], [2.0, 4.0]]),
        "not yet: by_hand[0, 1] is 4, expected 2: row 0 is query 0's output; it scores the keys 1.1 and 0, "
        "so its weights are 0.75 and 0.25"),
    "location_features flips the filter": (
        checks.check_location_features, lambda a, k: np.convolve(a, k, "same"),
        "not yet: f is the library's with the filter reversed: np.convolve (like a convolution in a signals "
        "course) flips the filter, but a convolution layer, and Chorowski's F * a, slides it as it is (a "
        "cross-correlation): F_0 reads the position r // 2 before s. Use np.correlate, or flip it back"),
    "location_features pads nothing": (
        checks.check_location_features, lambda a, k: np.correlate(a, k, "valid"),
        "not yet: f has shape (5,), one feature for each place the whole filter fits (np.correlate's or "
        "np.convolve's mode 'valid'): one feature per position, S = 9, needs r // 2 = 2 zeros past each end "
        "('same')"),
    "location_features keeps every overlap": (
        checks.check_location_features, lambda a, k: np.correlate(a, k, "full"),
        "not yet: f has shape (13,), one feature for every overlap of filter and weights (mode 'full'): one "
        "feature per position, S = 9, with the filter centred on it ('same')"),
    "location_features wraps around": (
        checks.check_location_features, _circular,
        "not yet: f wraps around the ends: position 0 reads the last positions. Past either end the previous "
        "weights count as 0 (zero padding), not as the other end's"),
    "location_features starts the filter at s": (
        checks.check_location_features, lambda a, k: _features(a, k, 0),
        "not yet: the filter is not centred: f_s starts reading at position s, but its middle entry j = r // 2 "
        "= 2 reads position s itself, so F_0 reads s - 2"),
    "location_features ends the filter at s": (
        checks.check_location_features, lambda a, k: _features(a, k, len(k) - 1),
        "not yet: the filter ends at position s: its middle entry j = r // 2 = 2 reads position s itself, so "
        "the last entry reads s + 2"),
    "location_features uses the middle entry only": (
        checks.check_location_features, lambda a, k: a * k[len(k) // 2],
        "not yet: f[#] is #, expected #"),
    "window_mask mirrors the window": (
        checks.check_window_mask, _mirrored_window,
        "not yet: the window is mirrored: left = 3 counts the keys before the query's position (s < t), "
        "right = 1 those after it (s > t): t - left <= s <= t + right"),
    "window_mask leaves the ends out": (
        checks.check_window_mask, _open_window,
        "not yet: the ends are left out: the window holds s = t - left and s = t + right too, left + 1 + right "
        "= 5 keys in the middle of the sequence (use <=, not <)"),
    "window_mask ignores right": (
        checks.check_window_mask, _symmetric_window,
        "not yet: right = 1 is not used: the window reaches left = 3 keys before the query and right = 1 after it"),
    "window_mask has a row per key": (
        checks.check_window_mask, lambda T, S, left, right: solutions.window_mask(S, T, left, right),
        "not yet: the mask has shape (9, 6), one row per key: it is (T, S) = (6, 9), one row per query, one "
        "column per key, as the scores"),
    "window_mask is inverted": (
        checks.check_window_mask, lambda T, S, left, right: ~solutions.window_mask(T, S, left, right),
        "not yet: the mask is inverted: True where the query may see the key"),
    "window_mask has no left end": (
        checks.check_window_mask, lambda T, S, left, right: np.tril(np.ones((T, S), bool), right),
        "not yet: mask[#, #] is True, expected False: query # sees the keys # to # (those that exist)"),
    "softmax_backward forgets the normalisation": (
        checks.check_softmax_backward, lambda w, d: w * d,
        "not yet: row # of d_logits sums to #, not 0: adding a constant to a row of logits leaves its "
        "softmax unchanged, so the gradient's row sums are 0"),
    "softmax_backward takes the Jacobian's diagonal only": (
        checks.check_softmax_backward, lambda w, d: w * (1 - w) * d,
        "not yet: row # of d_logits sums to #, not 0: adding a constant to a row of logits leaves its "
        "softmax unchanged, so the gradient's row sums are 0"),
    "softmax_backward forgets the outer weight": (
        checks.check_softmax_backward, lambda w, d: d - (d * w).sum(-1, keepdims=True),
        "not yet: row # of d_logits sums to #, not 0: adding a constant to a row of logits leaves its "
        "softmax unchanged, so the gradient's row sums are 0"),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the wrong answers overflow and divide by zero
@pytest.mark.parametrize("case", WHY)
def test_a_wrong_answer_is_told_why(case):
    check, answer, says = WHY[case]
    verdict = check(answer)
    assert re.fullmatch(_verdict_pattern(says), verdict), verdict


@pytest.mark.parametrize("name", ["masked_softmax", "gumbel_sample", "causal_attention", "cross_attention",
                                  "location_features", "window_mask", "softmax_backward"])
def test_returning_a_tuple_says_return_only_the_array(name):
    # the library returns (out, weights); an exercise that does the same is told what to drop,
    # not shown a NumPy error about an inhomogeneous shape
    check, solution, _ = EXERCISES[name]
    verdict = check(lambda *args: (solution(*args), solution(*args)))
    assert verdict.startswith("not yet: it returns a tuple of 2 (like the library's `(out, weights)`); return only ")


@pytest.mark.parametrize("answer", ["False", "True", [False], float("nan"), 1, 0, np.array(True)],
                         ids=["str False", "str True", "list", "nan", "int 1", "int 0", "0-d array"])
def test_only_a_real_boolean_is_a_yes_or_no_prediction(answer):
    verdict = checks.check_scale_prediction(256, 1, answer)
    assert verdict == (f"not yet: nearly_one_hot_without_scale = {answer!r} is of type {type(answer).__name__}, "
                       f"not a boolean, and Python reads it as {bool(answer)}; answer True or False")


@pytest.mark.parametrize("answer", [True, np.True_, np.bool_(True)])
def test_a_python_or_numpy_bool_is_a_prediction(answer):
    assert checks.check_scale_prediction(256, 1, answer) == checks.RIGHT


def test_the_wrong_boolean_is_told_what_was_measured():
    verdict = checks.check_scale_prediction(256, 1, False)
    assert re.fullmatch(_verdict_pattern(
        "not yet: unscaled, the largest weight of a row is # on average (measured), above 0.5"), verdict), verdict


@pytest.mark.parametrize("prediction", [(220, 1), (256, 0.86), (294, 1.14), (np.float64(256.0), np.array(1.0))],
                         ids=["220", "0.86", "294 and 1.14", "NumPy numbers"])
def test_a_variance_within_the_tolerance_of_the_true_variance_is_right(prediction):
    # 220 is 14% under the true 256, and 17% under this sample's 264.5: judged against the truth
    assert checks.check_scale_prediction(*prediction, True) == checks.RIGHT


@pytest.mark.parametrize(("prediction", "says"), [
    ((16, 1), "variance_without_scale = 16 is more than 15% off: q.k sums H = 256 independent products q_i k_i, "
              "each of variance 1, so the variance is 256"),
    ((217, 1), "variance_without_scale = 217 is more than 15% off: q.k sums H = 256 independent products "
               "q_i k_i, each of variance 1, so the variance is 256"),
    ((256, 16), "variance_with_scale = 16 is more than 15% off: dividing q.k by sqrt(H) divides its variance, "
                "H = 256, by H, so the variance is 1"),
    ((256, 0.84), "variance_with_scale = 0.84 is more than 15% off: dividing q.k by sqrt(H) divides its "
                  "variance, H = 256, by H, so the variance is 1"),
    ((float("nan"), 1), "variance_without_scale = nan is more than 15% off: q.k sums H = 256 independent "
                        "products q_i k_i, each of variance 1, so the variance is 256"),
    (("256", 1), "variance_without_scale = '256' is of type str; write the number itself"),
    ((True, 1), "variance_without_scale = True is of type bool; write the number itself"),
], ids=["16", "217", "with scale 16", "with scale 0.84", "nan", "str", "bool"])
def test_a_variance_outside_the_tolerance_or_not_a_number_is_told_why(prediction, says):
    assert checks.check_scale_prediction(*prediction, True) == "not yet: " + says


# (exercise, the section it ends, the next section, its check cell)
SECTIONS = [
    (1, "### 1. Soft attention", "### 2. Hard attention", "check_masked_softmax(masked_softmax)"),
    (2, "### 2. Hard attention", "### 3. Self-attention", "check_gumbel_sample(sample)"),
    (3, "### 3. Self-attention", "### 4. Multi-head attention", "check_causal_attention(causal_attention)"),
    (4, "### 4. Multi-head attention", "### 5. Cross-attention", "check_split_merge_heads(split_heads, merge_heads)"),
    (5, "### 5. Cross-attention", "### 6. Scaled dot-product attention", "check_cross_attention(cross_attention)"),
    (6, "### 6. Scaled dot-product attention", "### 7. Location-based attention",
     "check_scale_prediction(variance_without_scale, variance_with_scale, nearly_one_hot_without_scale)"),
    (7, "### 7. Location-based attention", "### 8. Global attention", "check_location_features(location_features)"),
    (8, "### 8. Global attention", "## How attention works, in three lines", "check_window_mask(window_mask)"),
    (9, "## How attention works, in three lines", "## The architecture", "check_head_by_hand(by_hand)"),
    (10, "## How attention learns: one backward pass", "## Finishing on a Transformer layer",
     "check_softmax_backward(softmax_backward)"),
]


def _section(text, start, end):
    """The tour's cells from the heading ``start`` up to the cell of the heading ``end``."""
    return text[text.index(start):text.rindex("# %%", 0, text.index(end))]


def test_the_tour_states_the_setting_the_check_uses():
    # exercise 6's text and its check say the same sizes and tolerance (one source: the check's constants)
    text = (DOCS / "tour.py").read_text()
    section = _section(text, "### 6. Scaled dot-product attention", "### 7. Location-based attention")
    exercise = section[section.index("Exercise 6:"):]
    for said in (f"{checks.SCALE_QUERIES} queries", f"{checks.SCALE_KEYS} keys", f"$H = {checks.SCALE_WIDTH}$",
                 f"within {checks.SCALE_TOLERANCE:.0%}"):
        assert said in " ".join(exercise.replace("# ", "").split()), said


@pytest.mark.parametrize(("n", "start", "end", "call"), SECTIONS, ids=[f"exercise {n}" for n, *_ in SECTIONS])
def test_each_exercise_ends_its_section_with_a_stub_and_a_check(n, start, end, call):
    # right after the section it practises, not gathered at the end: the heading, the cell to
    # fill in, the check cell, and nothing of the section after them
    section = _section((DOCS / "tour.py").read_text(), start, end)
    assert section.count("Exercise ") == 1 and f"Exercise {n}:" in section, (start, n)
    exercise = section[section.index(f"Exercise {n}:"):]
    assert exercise.rstrip().endswith(f"print({call})"), (n, exercise[-200:])
    stubs = re.findall(r"^def (\w+)\(.*\):\n    raise NotImplementedError", exercise, re.M)
    fill_ins = re.findall(r"^(\w+) = None", exercise, re.M)
    assert stubs or fill_ins, n
    assert len(re.findall(r"^# %%$", exercise, re.M)) == 2, "one cell to fill in, one check cell"


def test_the_tour_offers_ten_exercises_in_order_and_never_imports_the_solutions():
    text = (DOCS / "tour.py").read_text()
    assert re.findall(r"^# #+ Exercise (\d+):", text, re.M) == [str(n) for n in range(1, 11)]
    assert "import tour_solutions" not in text and "from tour_solutions" not in text, "the tour never imports them"
