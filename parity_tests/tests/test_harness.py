"""The harness as a tool for other people's code: one rule for "equal" (Tolerance and
compare_elements, against closed forms), gradient rows that can fail, per-case and per-call
tolerances, float64 skipped (not raised) without x64, the pytest entry point, cases loaded
from an outside module into the report, a summary that fits a screen; and the "how attention
learns" example."""

import dataclasses
import json
import sys
import textwrap

import jax
import numpy as np
import pytest

import attention_jax
import parity_tests
from parity_tests import (
    REGISTRY,
    Comparison,
    Result,
    Tolerance,
    assert_parity,
    compare,
    compare_elements,
    planned_rows,
    pytest_params,
    run_case,
)
from parity_tests import __main__ as report
from parity_tests.registry import FINITE_DIFFERENCES, NUMPY_VJP

SDPA = REGISTRY["scaled_dot_product_attention/plain"]
SOFT = REGISTRY["soft_attention/plain"]  # a finite-differences case


def _stop_key_gradient(*args, **kwargs):  # same forward, no gradient through the key
    query, key, value = args
    return attention_jax.scaled_dot_product_attention(query, jax.lax.stop_gradient(key), value, **kwargs)


@pytest.mark.parametrize(
    "expected, actual, tol, passed",
    [
        (np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-6]), 1e-5, True),
        (np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-4]), 1e-5, False),
        (np.array([1e6]), np.array([1e6 + 1.0]), 1e-5, True),  # relative 1e-6
        (np.array([1.0]), np.array([1.0 + 1.5e-5]), 1e-5, False),  # relative 1.5e-5: just outside
        (np.array([1e-3]), np.array([1e-3 + 2e-5]), 1e-5, False),  # absolute 2e-5, relative 2e-2
        (np.array([np.nan, 1.0]), np.array([np.nan, 1.0]), 1e-5, True),
        (np.array([0.0, 1.0]), np.array([np.nan, 1.0]), 1e-5, False),   # NaN on one side only
        (np.array([np.nan, 1.0]), np.array([1.0, np.nan]), 1e-5, False),  # NaN in other places
        (np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0]), 1e-5, False),
        (np.array([np.inf, -np.inf]), np.array([np.inf, -np.inf]), 1e-5, True),  # the same inf
        (np.array([np.inf, 1.0]), np.array([1.0, 1.0]), 1e-5, False),   # inf in the reference only
        (np.array([np.inf]), np.array([-np.inf]), 1e-5, False),         # the other inf
    ],
)
def test_compare_tolerances_nan_placement_and_shapes(expected, actual, tol, passed):
    assert compare(expected, actual, tol).passed is passed


@pytest.mark.parametrize("expected, actual, detail", [
    (np.array([0.0, 1.0]), np.array([np.nan, 1.0]), "output 0: NaN at different positions"),
    (np.array([np.nan, 1.0]), np.array([1.0, np.nan]), "output 0: NaN at different positions"),  # as many NaN
    (np.array([np.inf, 1.0]), np.array([1.0, 1.0]), "output 0: inf at different positions"),
    (np.array([1.0, 2.0]), np.array([1.0, 2.5]), "outside tolerance"),
])
def test_compare_says_why_a_row_fails(expected, actual, detail):
    assert compare(expected, actual, 1e-5).detail == detail


def test_compare_reports_the_largest_errors():
    """max_abs over every element; max_rel over the elements whose abs error exceeds tol:
    here 2e-5 / 1e-3 (the 1e6 element is off by 1.0 abs, but only 1e-6 rel)."""
    expected = np.array([1.0, 1e-3, 1e6, 5.0])
    actual = np.array([1.0 + 1.5e-5, 1e-3 + 2e-5, 1e6 + 1.0, 5.0])
    c = compare(expected, actual, 1e-5)
    assert c.max_abs == pytest.approx(1.0, rel=1e-9)
    assert c.max_rel == pytest.approx(2e-5 / 1e-3, rel=1e-9)
    assert not c.passed  # 1.5e-5 at 1.0 is beyond 1e-5 both ways


# --- one rule for "equal": Tolerance and compare_elements ------------------------------------------
@pytest.mark.parametrize("short, pairs, factor, combine", [
    # check_port's short forms; the numbers are docs/ports.md's table
    ("dtype", {"float64": (1e-10, 1e-10), "float32": (1e-5, 1e-4), "float16": (2e-3, 1e-2), "bfloat16": (2e-2, 5e-2)},
     None, "sum"),
    ("source", {"float64": (1e-12, 1e-10), "float32": (1e-7, 1e-6), "float16": (1e-4, 1e-3), "bfloat16": (1e-3, 1e-2)},
     4.0, "sum"),
    ((0.0, 2e-5), {"float32": (0.0, 2e-5), "bfloat16": (0.0, 2e-5)}, None, "sum"),
    ({"float32": (1e-6, 2e-5)}, {"float32": (1e-6, 2e-5)}, None, "sum"),
    # the registry's: one number, abs or rel (docs/design.md section 5)
    (1e-5, {"float32": (1e-5, 1e-5), "float64": (1e-5, 1e-5)}, None, "or"),
    ({"float16": 1e-2}, {"float16": (1e-2, 1e-2)}, None, "or"),
])
def test_every_short_form_of_a_tolerance_is_one_tolerance(short, pairs, factor, combine):
    tolerance = Tolerance.of(short)
    assert {d: tolerance.pair(d) for d in pairs} == pairs
    assert (tolerance.factor, tolerance.combine) == (factor, combine)
    assert Tolerance.of(tolerance) is tolerance


def test_tolerances_compare_equal_across_forms():
    assert Tolerance.of((0.0, 2e-5)) == Tolerance(atol=0.0, rtol=2e-5)
    assert Tolerance.of({"float32": (0.0, 2e-5)}) == Tolerance(atol={"float32": 0.0}, rtol={"float32": 2e-5})
    assert Tolerance.of(1e-5) == Tolerance.abs_or_rel(1e-5) == Tolerance(1e-5, 1e-5, combine="or")
    assert Tolerance.of("source") == Tolerance.source() and Tolerance.source(2.0).factor == 2.0


@pytest.mark.parametrize("bad, message", [
    ("loose", "tolerance must be 'source', 'dtype'"),
    ((1e-5, 1e-4, 1e-3), "tolerance must be"),
    ({}, "tolerance must be"),
    ({"float32": (0.0, 1e-5), "float16": 1e-2}, "tolerance must be"),  # the two dict forms mixed
])
def test_a_tolerance_in_no_known_form_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        Tolerance.of(bad)


def test_a_tolerance_checks_its_own_fields():
    with pytest.raises(ValueError, match="combine must be one of 'sum', 'or'; got 'max'"):
        Tolerance(1e-5, 1e-5, combine="max")
    with pytest.raises(ValueError, match="factor .* needs combine='sum'"):
        Tolerance(1e-5, 1e-5, factor=4.0, combine="or")
    with pytest.raises(TypeError, match="atol must be a number or"):
        Tolerance("1e-5", 1e-5)
    with pytest.raises(ValueError, match="the tolerance has no atol for bfloat16; it has float32"):
        Tolerance({"float32": 1e-5}, {"float32": 1e-4}).pair("bfloat16")


def test_at_least_raises_every_number_to_the_floor():
    raised = Tolerance({"float32": 1e-7, "float64": 1e-3}, 1e-9).at_least(1e-6)
    assert raised.pair("float32") == (1e-6, 1e-6) and raised.pair("float64") == (1e-3, 1e-6)


def _just(reference, bound, factors):
    """``reference`` moved by ``factor * bound`` (up and down alternately): inside the bound
    for a factor below 1, outside above."""
    signs = np.where(np.arange(reference.size) % 2, -1.0, 1.0)
    return reference + signs * np.asarray(factors) * bound


def test_compare_elements_sum_rule_against_its_closed_form():
    """|x - r| <= atol + rtol |r|, element by element, just inside and just outside."""
    reference = np.array([0.0, 1.0, -4.0, 1e3, 0.5, -7.0])
    atol, rtol = 1e-3, 1e-2
    bound = atol + rtol * np.abs(reference)  # [1e-3, 1.1e-2, 4.1e-2, 10.001, 6e-3, 7.1e-2]
    factors = [0.999, 1.001, 0.999, 1.001, 1.001, 0.999]
    found = compare_elements(_just(reference, bound, factors), reference, Tolerance(atol, rtol), "float32")
    np.testing.assert_allclose(found.bound, bound, rtol=1e-15)
    np.testing.assert_allclose(found.error, np.asarray(factors) * bound, rtol=1e-9)
    assert found.outside.tolist() == [False, True, False, True, True, False]
    assert not found.misplaced.any() and not found.passed


def test_compare_elements_or_rule_against_its_closed_form():
    """|x - r| <= atol or |x - r| / |r| <= rtol, i.e. |x - r| <= tol max(1, |r|) for atol = rtol
    = tol; the sum rule on the same numbers allows tol (1 + |r|), so a row between the two
    passes one and fails the other: the registry keeps its rule, check_port its own."""
    tol = 1e-5
    reference = np.array([0.0, 0.5, 1.0, 100.0, -100.0, 1e6])
    allowed = tol * np.maximum(1.0, np.abs(reference))  # [1e-5, 1e-5, 1e-5, 1e-3, 1e-3, 10]
    factors = [0.99, 1.01, 0.99, 1.01, 0.99, 1.01]
    actual = _just(reference, allowed, factors)
    found = compare_elements(actual, reference, Tolerance.abs_or_rel(tol))
    assert found.outside.tolist() == [False, True, False, True, False, True]
    np.testing.assert_allclose(found.bound, allowed, rtol=1e-15)
    between = np.array([100.0 + 1.005e-3])  # beyond 1e-3 (or), within 1e-5 + 1e-5 * 100 (sum)
    assert not compare_elements(between, np.array([100.0]), Tolerance.abs_or_rel(tol)).passed
    assert compare_elements(between, np.array([100.0]), Tolerance(tol, tol)).passed


def test_compare_elements_source_factor_adds_the_sources_error():
    """|x - r| <= factor * e + atol + rtol |r|, e the source's largest error in the leaf."""
    reference = np.array([1.0, -2.0, 3.0, 0.0])
    tolerance = Tolerance(atol=1e-7, rtol=1e-6, factor=4.0)
    source_error = 1e-3
    bound = 4.0 * source_error + 1e-7 + 1e-6 * np.abs(reference)
    factors = [0.999, 1.001, 1.001, 0.999]
    found = compare_elements(_just(reference, bound, factors), reference, tolerance, "float32", source_error=source_error)
    np.testing.assert_allclose(found.bound, bound, rtol=1e-15)
    assert found.outside.tolist() == [False, True, True, False]
    assert compare_elements(_just(reference, bound, factors), reference, tolerance, "float32").outside.all()  # e = 0


def test_compare_elements_nan_and_inf_must_sit_where_the_reference_has_them():
    reference = np.array([np.nan, 1.0, np.inf, -np.inf, 2.0, np.nan])
    actual = np.array([np.nan, np.nan, np.inf, np.inf, 2.0, 3.0])
    found = compare_elements(actual, reference, Tolerance.dtype(), "float32")
    assert found.misplaced.tolist() == [False, True, False, True, False, True]
    assert not found.outside.any()  # a misplaced element is not also outside
    assert found.error[[0, 2, 4]].tolist() == [0.0, 0.0, 0.0]  # both NaN, the same inf, equal
    assert compare_elements(reference, reference, Tolerance.dtype(), "float32").passed


def test_backward_row_catches_a_wrong_jax_gradient():
    wrong = dataclasses.replace(SDPA, name="wrong-grad", jax_fn=_stop_key_gradient)
    assert run_case(wrong, "float64", "jax").comparison.passed  # the forward cannot tell
    result = run_case(wrong, "float64", "jax", "backward")
    assert result.reference == NUMPY_VJP and result.failed and result.comparison.max_abs > 1e-3


def test_backward_row_catches_a_wrong_numpy_vjp():
    def off_by_one_percent(args, kwargs, cotangent):
        return tuple(g * 1.01 for g in SDPA.numpy_vjp(args, kwargs, cotangent))

    wrong = dataclasses.replace(SDPA, name="wrong-vjp", numpy_vjp=off_by_one_percent)
    result = run_case(wrong, "float64", "numpy", "backward")
    assert result.reference == FINITE_DIFFERENCES and result.failed


def test_finite_differences_catch_a_wrong_jax_gradient():
    def stop_values(scores, values, **kwargs):
        return attention_jax.soft_attention(scores, jax.lax.stop_gradient(values), **kwargs)

    assert run_case(SOFT, "float64", "jax", "backward").comparison.passed
    result = run_case(dataclasses.replace(SOFT, name="wrong-fd", jax_fn=stop_values), "float64", "jax", "backward")
    assert result.reference == FINITE_DIFFERENCES and result.failed


def test_per_case_and_per_call_tolerances():
    strict = dataclasses.replace(SDPA, name="strict", tolerances={"float32": 1e-12}, grad_tolerances={"float32": 1e-12})
    assert run_case(SDPA, "float32", "jax").comparison.passed
    assert run_case(strict, "float32", "jax").failed and run_case(strict, "float32", "jax", "backward").failed
    assert run_case(strict, "float32", "jax", tolerance=1e-5).comparison.passed  # the call overrides the case
    assert run_case(SDPA, "float32", "jax", tolerance=1e-12).failed
    assert strict.tolerance("float16") == 5e-3  # dtypes the case leaves alone keep docs/design.md's


def test_float64_is_skipped_not_raised_without_x64():
    with jax.enable_x64(False):
        for direction in ("forward", "backward"):
            result = run_case(SDPA, "float64", "jax", direction)
            assert result.skipped and "jax_enable_x64" in result.skipped and not result.failed
        with pytest.raises(pytest.skip.Exception, match="jax_enable_x64"):
            assert_parity(SDPA, "float64", "jax")


def test_planned_rows():
    def backward(case):
        return {(dtype, half) for c, dtype, half, direction in planned_rows([case]) if direction == "backward"}

    assert backward(SOFT) == {("float64", "jax")}  # finite differences: float64, JAX half
    assert backward(SDPA) == {(d, h) for d in ("float64", "float32", "float16", "bfloat16") for h in ("numpy", "jax")}
    assert backward(REGISTRY["chunked_attention/plain q2 k2"]) == {(d, "jax") for d in ("float64", "float32", "float16", "bfloat16")}
    forward = [r for r in planned_rows([SDPA]) if r[3] == "forward"]
    assert len(forward) == 7  # 4 dtypes x 2 halves, less NumPy float64 against itself


def test_pytest_params_have_readable_ids():
    ids = [p.id for p in pytest_params([SDPA], directions=("backward",), dtypes=("float32",))]
    assert ids == ["scaled_dot_product_attention/plain-backward-float32-numpy", "scaled_dot_product_attention/plain-backward-float32-jax"]


# --- the report: one's own cases, failures, the summary -------------------------------------------
@pytest.fixture
def restore_registry():
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


EXTERNAL = '''
import attention_jax, attention_np
from parity_tests import ParityCase, register

def numpy_version(query, keys):
    return attention_np.soft_attention(attention_np.dot_scores(query, keys), keys)

def jax_version(query, keys):
    return attention_jax.soft_attention(attention_jax.dot_scores(query, keys), keys)

register(ParityCase("zz_dot_soft/basic", "zz_dot_soft", "B=2 T=3 S=5 H=11",
                    build=lambda rng: ((rng.normal(size=(2, 3, 11)), rng.normal(size=(2, 5, 11))), {}),
                    numpy_fn=numpy_version, jax_fn=jax_version, differentiable=(0, 1),
                    tolerances={"float32": 2e-5}))
'''


def test_report_runs_cases_from_an_outside_module(tmp_path, monkeypatch, capsys, restore_registry):
    (tmp_path / "zz_external_cases.py").write_text(textwrap.dedent(EXTERNAL))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zz_external_cases", raising=False)
    path = tmp_path / "report.json"
    argv = ["--cases", "zz_external_cases", "--only-external", "--dtype", "float64", "--dtype", "float32", "--json", str(path)]
    assert report.main(argv) == 0
    out = capsys.readouterr().out
    assert "zz_dot_soft" in out and "1 from --cases" in out
    rows = json.loads(path.read_text())["results"]
    assert {r["case"] for r in rows} == {"zz_dot_soft/basic"}
    assert {(r["direction"], r["dtype"], r["half"]) for r in rows} == {
        ("forward", "float32", "numpy"), ("forward", "float64", "jax"), ("forward", "float32", "jax"), ("backward", "float64", "jax")}
    assert {r["tol"] for r in rows if r["dtype"] == "float32"} == {2e-5}


def test_report_exits_nonzero_on_a_gradient_failure(monkeypatch, capsys):
    wrong = dataclasses.replace(SDPA, name="zz-wrong-grad/plain", mechanism="zz_wrong", jax_fn=_stop_key_gradient)
    monkeypatch.setitem(REGISTRY, wrong.name, wrong)
    assert report.main(["--case", "zz-wrong-grad", "--dtype", "float64", "--direction", "backward"]) == 1
    out = capsys.readouterr().out
    assert "failing rows:" in out and "FAIL" in out
    summary_line = next(line for line in out.splitlines() if line.startswith("zz_wrong"))
    assert "F" in summary_line.split()  # the backward jax float64 cell


def test_summary_of_the_whole_registry_fits_a_screen():
    """Without running anything: a passing result for every planned row."""
    results = [
        Result(c.name, c.mechanism, c.shapes, dtype, half, Comparison(1e-7, 0.0, c.tolerance(dtype), True), direction)
        for c, dtype, half, direction in planned_rows()
    ]
    text = report._render(report.summary_rows(results))
    lines = text.splitlines()
    assert len(lines) <= 2 + len({r.mechanism for r in results}) <= 30
    assert max(map(len, lines)) <= 80
    assert len(results) > 400  # the full table would not fit: that is what --verbose is for


# --- how attention learns -------------------------------------------------------------------------
def test_how_attention_learns_example_fits_the_target():
    from examples import how_attention_learns as example

    _, losses, before, after = example.fit(steps=100)
    assert losses[-1] < 0.4 * losses[0]
    assert np.abs(after - example.TARGET).max() < 0.1 < np.abs(before - example.TARGET).max()
    assert "jax" not in example.__dict__ and "attention_jax" not in example.__dict__  # NumPy only


# --- the filters select the rows, the tutorial golden's included -----------------------------------
@pytest.mark.parametrize("argv, named", [
    (["--case", "no-such-case"], "--case 'no-such-case'"),
    (["--case", "soft_attention/plain", "--direction", "backward", "--dtype", "float32"], "--dtype float32 --direction backward"),
])
def test_report_rejects_a_selection_of_no_row(argv, named, capsys):
    assert report.main(argv) == 2
    captured = capsys.readouterr()
    assert "passed" not in captured.out
    assert f"{named} selects no row" in captured.err
    assert "scaled_dot_product_attention/plain" in captured.err and "additive_attention/tutorial golden" in captured.err


def test_tutorial_golden_rows_obey_the_filters(capsys):
    assert report.main(["--case", "tutorial golden", "--dtype", "float32"]) == 0
    assert "\n2 passed, 0 failed, 0 skipped (0 cases" in capsys.readouterr().out
    assert report.main(["--case", "tutorial golden", "--dtype", "float16"]) == 2  # the golden is float32
    assert report.main(["--case", "tutorial golden", "--direction", "backward"]) == 2
    assert report.main(["--case", "dot_scores/plain", "--dtype", "float32", "--direction", "forward", "--json", "/dev/null"]) == 0
    assert "tutorial" not in capsys.readouterr().out


# --- the report compiles once a mechanism --------------------------------------------------------
def test_run_all_compiles_each_mechanism_once_with_the_results_of_run_case():
    """Four dtypes x two directions of two cases: one XLA compilation, and every row equal to
    the same row run alone (which compiles its own program)."""
    from jax._src import monitoring

    cases = [SDPA, REGISTRY["scaled_dot_product_attention/causal"]]
    compiles, progress = [], []
    listener = lambda event, duration, **_: compiles.append(event) if event.endswith("backend_compile_duration") else None
    monitoring.register_event_duration_secs_listener(listener)
    try:
        results = parity_tests.run_all(cases, dtypes=("float32", "bfloat16"), halves=("jax",),
                                       progress=lambda m, rs, s: progress.append((m, len(rs))))
    finally:
        monitoring.unregister_event_duration_listener(listener)
    assert len(compiles) == 1
    assert progress == [("scaled_dot_product_attention", 8)]
    for r in results:
        alone = run_case(REGISTRY[r.case], r.dtype, r.half, r.direction)
        assert (r.comparison.max_abs, r.comparison.passed) == (alone.comparison.max_abs, alone.comparison.passed)


def test_run_all_reports_the_failing_row_of_a_group():
    wrong = dataclasses.replace(SDPA, name="wrong-grad-group", jax_fn=_stop_key_gradient)
    results = parity_tests.run_all([SDPA, wrong], dtypes=("float32",), halves=("jax",))
    assert [(r.case, r.direction) for r in results if r.failed] == [("wrong-grad-group", "backward")]


def test_report_keeps_its_compiled_programs_with_compilation_cache(tmp_path, capsys):
    cache = tmp_path / "jax-cache"
    try:
        assert report.main(["--case", "dot_scores/plain", "--dtype", "float32", "--compilation-cache", str(cache)]) == 0
    finally:  # later tests compile as before, without the cache
        from jax._src import compilation_cache

        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()
    assert any(cache.iterdir())  # the mechanism's program, written for the next run
    assert "  dot_scores: 2 rows, 0 failed" in capsys.readouterr().err  # the progress line (forward numpy and jax)


EXTERNAL_PORTS = '''
import jax, numpy as np
from parity_tests import register_port

def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

x = np.random.default_rng(0).normal(size=(2, 5))
register_port("zz_softmax numpy->jax", softmax, lambda x: jax.nn.softmax(x, axis=-1), (x,), frameworks=("numpy", "jax"))
register_port("zz_softmax wrong axis", softmax, lambda x: jax.nn.softmax(x, axis=0), (x,), frameworks=("numpy", "jax"),
              dtypes=("float32", "bfloat16"))
'''


def test_report_runs_ports_from_an_outside_module(tmp_path, monkeypatch, capsys):
    from parity_tests import PORTS

    (tmp_path / "zz_external_ports.py").write_text(EXTERNAL_PORTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zz_external_ports", raising=False)
    saved = dict(PORTS)
    try:
        path = tmp_path / "report.json"
        assert report.main(["--cases", "zz_external_ports", "--only-external", "--json", str(path)]) == 1
        out = capsys.readouterr().out
        assert "port zz_softmax numpy->jax: check_port: passed, 2 of 2 leaves pass" in out
        assert "port zz_softmax wrong axis: check_port: FAILED" in out and "FAIL bfloat16 output (2, 5)" in out
        assert "ports: 1 passed, 1 failed" in out
        ports = json.loads(path.read_text())["ports"]
        assert [(p["name"], p["passed"]) for p in ports] == [("zz_softmax numpy->jax", True), ("zz_softmax wrong axis", False)]
        # --case selects ports by name; --dtype narrows their dtypes (none left: no row, exit 2)
        for argv, status in ((["--case", "numpy->jax"], 0), (["--dtype", "float16"], 2)):
            PORTS.clear()
            PORTS.update(saved)
            sys.modules.pop("zz_external_ports")  # imported afresh: it registers its ports again
            assert report.main(["--cases", "zz_external_ports", "--only-external", *argv]) == status
    finally:
        PORTS.clear()
        PORTS.update(saved)
