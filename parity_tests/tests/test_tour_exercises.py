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


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# (check, the solution, answers that are wrong in ways a learner might be)
EXERCISES = {
    "masked_softmax": (
        checks.check_masked_softmax, solutions.masked_softmax,
        [lambda x, m: _softmax(x),                                          # forgets the mask
         lambda x, m: _softmax(np.where(m, x, -np.inf)),                    # NaN on the fully masked row
         lambda x, m: np.where(m, np.exp(x), 0) / np.where(m, np.exp(x), 0).sum(-1, keepdims=True)]),  # overflows
    "causal_attention": (
        checks.check_causal_attention, solutions.causal_attention,
        [lambda q, k, v: _softmax(q @ k.T / np.sqrt(q.shape[1])) @ v,      # not causal
         lambda q, k, v: solutions.masked_softmax(q @ k.T, np.tril(np.ones((len(q),) * 2, bool))) @ v,  # no scale
         lambda q, k, v: solutions.masked_softmax(q @ k.T / np.sqrt(q.shape[1]), np.triu(np.ones((len(q),) * 2, bool))) @ v,
         lambda q, k, v: (solutions.causal_attention(q, k, v), None)]),                    # the library's (out, weights)
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
    """``text`` as a regular expression in which each ``#`` stands for one printed number."""
    return "".join(re.escape(part) + (r"(-?[\d.]+(e[-+]\d+)?|nan)" if i < text.count("#") else "")
                   for i, part in enumerate(text.split("#")))


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


@pytest.mark.parametrize("name", ["masked_softmax", "causal_attention", "softmax_backward"])
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


def test_the_tour_states_the_setting_the_check_uses():
    # exercise 5's text and its check say the same sizes and tolerance (one source: the check's constants)
    text = (DOCS / "tour.py").read_text()
    exercise = text[text.index("### Exercise 5"):text.index("## Where next")]
    for said in (f"{checks.SCALE_QUERIES} queries", f"{checks.SCALE_KEYS} keys", f"$H = {checks.SCALE_WIDTH}$",
                 f"within {checks.SCALE_TOLERANCE:.0%}"):
        assert said in " ".join(exercise.replace("# ", "").split()), said


def test_the_tour_offers_five_exercises_with_stubs_and_checks():
    text = (DOCS / "tour.py").read_text()
    exercises = text[text.index("## Exercises"):]
    for n in range(1, 6):
        assert f"### Exercise {n}" in exercises
    for name in ("check_masked_softmax(masked_softmax)", "check_causal_attention(causal_attention)",
                 "check_head_by_hand(by_hand)", "check_softmax_backward(softmax_backward)",
                 "check_scale_prediction(variance_without_scale, variance_with_scale, nearly_one_hot_without_scale)"):
        assert f"print({name})" in exercises
    assert "import tour_solutions" not in text and "from tour_solutions" not in text, "the tour never imports them"
