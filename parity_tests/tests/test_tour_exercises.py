"""The tour's exercises: every check says "right" to the solutions, "not yet" to a wrong or
unfilled answer, and the tour offers each exercise with its stub, its check and nothing more.

The checks and solutions live beside the tour (``docs/tour_checks.py``, ``docs/tour_solutions.py``),
where the notebook imports them from its own folder.
"""

import importlib.util
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
         lambda q, k, v: solutions.masked_softmax(q @ k.T / np.sqrt(q.shape[1]), np.triu(np.ones((len(q),) * 2, bool))) @ v]),
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
        [(16, 1, True), (256, 16, True), (256, 1, False)]),
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
    assert verdict == "not yet: by_hand[1, 0] is 4, expected 2"
    assert "raised ZeroDivisionError" in checks.check_causal_attention(lambda q, k, v: 1 / 0)
    assert "variance_without_scale = 16, but" in checks.check_scale_prediction(16, 1, True)


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
