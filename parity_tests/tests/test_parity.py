"""Every registered case, every dtype, both halves, against the NumPy float64 reference."""

import dataclasses

import numpy as np
import pytest

import attention_jax
import attention_np
from parity_tests import REGISTRY, ParityCase, run_all, run_case, run_tutorial_golden

MECHANISMS = sorted({case.mechanism for case in REGISTRY.values()})


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_registered_cases(mechanism):
    # every forward row of the mechanism's cases (each dtype, both halves), its JAX rows
    # compiled as one program, as the report runs them
    cases = [case for case in REGISTRY.values() if case.mechanism == mechanism]
    results = run_all(cases, directions=("forward",))
    assert results and not [r for r in results if r.skipped], [r.skipped for r in results if r.skipped]
    failed = [f"{r.case} {r.dtype} {r.half}: max abs {r.comparison.max_abs:.3g}, max rel {r.comparison.max_rel:.3g}, "
              f"tol {r.comparison.tol}: {r.comparison.detail}" for r in results if r.failed]
    assert not failed, "\n".join(failed)


def test_tutorial_golden_both_halves():
    results = run_tutorial_golden()
    assert {r.half for r in results} == {"numpy", "jax"}
    for r in results:
        assert r.comparison.passed and r.comparison.max_abs <= 1e-6, r


# --- the harness itself must be able to fail ------------------------------------------------
def _swap_heads(fn):
    def wrong(*args, **kwargs):
        out, weights = fn(*args, **kwargs)
        return out[:, :, ::-1], weights
    return wrong


def test_harness_catches_a_wrong_implementation():
    case = REGISTRY["scaled_dot_product_attention/plain"]
    wrong = dataclasses.replace(case, name="wrong", jax_fn=_swap_heads(attention_jax.scaled_dot_product_attention))
    result = run_case(wrong, "float32", "jax")
    assert not result.comparison.passed and result.comparison.max_abs > 0.01


def test_harness_catches_a_wrong_dtype():
    case = REGISTRY["additive_attention/plain"]

    def upcast(*args, **kwargs):
        context, weights = attention_np.additive_attention(*args, **kwargs)
        return context.astype(np.float64), weights.astype(np.float64)

    result = run_case(dataclasses.replace(case, name="upcast", numpy_fn=upcast, jax_fn=upcast), "float32", "jax")
    assert not result.comparison.passed and "dtype" in result.comparison.detail


def test_register_rejects_a_duplicate_name():
    from parity_tests import register

    case = next(iter(REGISTRY.values()))
    with pytest.raises(ValueError, match="registered already"):
        register(ParityCase(case.name, "x", "", case.build, case.numpy_fn, case.jax_fn))


def test_report_exits_nonzero_on_a_failure_and_writes_json(tmp_path, monkeypatch, capsys):
    import json

    from parity_tests import __main__ as report

    case = REGISTRY["scaled_dot_product_attention/plain"]
    wrong = dataclasses.replace(case, name="zz-wrong/plain", jax_fn=_swap_heads(attention_jax.scaled_dot_product_attention))
    monkeypatch.setitem(REGISTRY, wrong.name, wrong)
    path = tmp_path / "report.json"
    assert report.main(["--case", "zz-wrong", "--dtype", "float32", "--json", str(path)]) == 1
    data = json.loads(path.read_text())
    assert data["passed"] is False
    assert {r["half"]: r["passed"] for r in data["results"] if r["case"] == wrong.name} == {"numpy": True, "jax": False}
    assert "FAIL" in capsys.readouterr().out
    # the built-in cases alone pass
    assert report.main(["--case", "additive_attention/plain", "--dtype", "float32"]) == 0
