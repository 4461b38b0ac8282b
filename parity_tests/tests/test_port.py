"""check_port: ports between NumPy, JAX and PyTorch, values and gradients, against a float64
reference; failures located by leaf and element. The PyTorch ports are skipped without torch.
Expected values come from the other framework or the float64 reference, never from the port."""

import collections
import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
import attention_np
from parity_tests import Tolerance, assert_port, check_port, sweep_port

B, T, S, E, N = 2, 3, 5, 12, 3  # H = 4


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_numpy_prototype_to_jax_passes_in_every_dtype_with_gradients():
    x = np.random.default_rng(0).normal(size=(B, S))
    report = check_port(_softmax, lambda x: jax.nn.softmax(x, axis=-1), (x,), frameworks=("numpy", "jax"),
                        dtypes=("float64", "float32", "bfloat16"))
    assert report.passed, str(report)
    names = {(c.dtype, c.name) for c in report.checks}
    assert ("float64", "grad.inputs[0]") in names and ("bfloat16", "output") in names


def test_planted_bug_wrong_softmax_axis_fails_and_says_where():
    """The softmax over the query axis instead of the key axis: same shapes, wrong numbers."""
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(B, T, 4)), rng.normal(size=(B, S, 4))

    def reference(q, k):
        return _softmax(q @ k.transpose(0, 2, 1))

    def wrong_axis(q, k):
        return jax.nn.softmax(q @ k.transpose(0, 2, 1), axis=-2)

    report = check_port(reference, wrong_axis, (q, k), frameworks=("numpy", "jax"), dtypes=("float32",))
    assert not report.passed
    failed = {c.name for c in report.failures}
    assert failed == {"output", "grad.inputs[0]", "grad.inputs[1]"}
    out = next(c for c in report.failures if c.name == "output")
    assert 0 < out.mismatched <= out.total == B * T * S
    # the worst element is reported with the values of both sides and the reference (on the rounded inputs)
    q32, k32 = q.astype(np.float32), k.astype(np.float32)
    np.testing.assert_allclose(out.reference, reference(q32.astype(np.float64), k32.astype(np.float64))[out.index], rtol=1e-12)
    np.testing.assert_allclose(out.port, np.asarray(wrong_axis(q32, k32))[out.index], rtol=1e-6)
    text = str(report)
    assert f"{out.mismatched} of {B * T * S} elements outside tolerance" in text
    assert f"worst at {list(out.index)}" in text and "the port is off" in text
    # the verdict: the output is first in the forward order (gradients after it), the worst is named
    assert report.first_failure is out
    verdict = text.splitlines()[0]
    assert verdict.startswith(f"check_port: FAILED, 0 of 3 leaves pass, 3 fail; first to fail (forward order): "
                              f"float32 output at {list(out.index)}")
    worst = report.worst
    assert f"worst: {worst.brief()}, {worst.ratio:.3g} x its tolerance" in verdict or worst is out
    # the failing leaves follow, worst first
    failing = [line.split()[2] for line in text.splitlines() if line.startswith("FAIL")]
    assert failing == [c.name for c in sorted(report.failures, key=lambda c: -c.ratio)]
    with pytest.raises(AssertionError, match="FAIL float32 output"):
        assert_port(reference, wrong_axis, (q, k), frameworks=("numpy", "jax"), dtypes=("float32",))


def test_nan_placement_and_a_source_that_is_off_are_named():
    x = np.random.default_rng(2).normal(size=(4,))

    def nan_at_2(x):
        return jnp.where(jnp.arange(4) == 2, jnp.nan, x * 2)

    report = check_port(lambda x: x * 2, nan_at_2, (x,), frameworks=("numpy", "jax"), gradients=False)
    (check,) = report.failures
    reference_2 = 2 * float(x.astype(np.float32)[2])
    assert f"the port has NaN at [2] where the reference has {reference_2:.6g}; 1 such element" in check.nonfinite
    assert check.mismatched == check.misplaced == 1 and "1 of 4 elements fail" in str(check)
    # a source far from a given float64 reference: the verdict blames the source as well
    report = check_port(lambda x: x * 2 + 1e-3, lambda x: x * 2, (x,), frameworks=("numpy", "jax", "numpy"),
                        reference=lambda x: x * 2 + 1, gradients=False, tolerance="dtype")
    assert "the source is off from the float64 reference too" in str(report.failures[0])


def test_tolerances_dtype_source_and_explicit():
    """A port with a relative error of 1e-5 in float32: beyond 'source' (the source is exact
    to rounding), within 'dtype' (1e-5 + 1e-4 |ref|), and judged by an explicit (atol, rtol)."""
    x = np.random.default_rng(3).normal(size=(50,))
    source, port = (lambda x: x * 3), (lambda x: x * 3 * (1 + 1e-5))
    kw = dict(frameworks=("numpy", "jax"), gradients=False)
    assert not check_port(source, port, (x,), **kw).passed
    assert check_port(source, port, (x,), tolerance="dtype", **kw).passed
    assert not check_port(source, port, (x,), tolerance=(0.0, 1e-6), **kw).passed
    assert check_port(source, port, (x,), tolerance={"float32": (0.0, 2e-5)}, **kw).passed


@pytest.mark.parametrize("kwargs, error, message", [
    ({"frameworks": ("numpy",)}, ValueError, "frameworks must name 2 or 3"),
    ({"frameworks": ("numpy", "tensorflow")}, ValueError, "port's framework must be one of numpy, jax, torch; got 'tensorflow'"),
    ({"dtypes": ("float8",)}, ValueError, "dtypes must be among"),
    ({"tolerance": "loose"}, ValueError, "tolerance must be 'source', 'dtype'"),
    ({"params": {"w": 1}}, TypeError, "params must be a callable"),
    ({"params": lambda p: p}, ValueError, "params: a parameter map needs a module source"),
    ({"ignore_params": ("norm.bias",)}, ValueError, "ignore_params names source parameters .* it needs params="),
])
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        check_port(np.tanh, jnp.tanh, (np.ones(3),), **{"frameworks": ("numpy", "jax"), **kwargs})
    with pytest.raises(TypeError, match="inputs must be a tuple"):
        check_port(np.tanh, jnp.tanh, np.ones(3), frameworks=("numpy", "jax"))


def test_torch_is_imported_only_for_a_torch_side():
    code = ("import sys, numpy as np, jax.numpy as jnp, parity_tests; "
            "assert parity_tests.check_port(np.tanh, jnp.tanh, (np.ones(3),), frameworks=('numpy', 'jax')).passed; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nan_placement_says_which_side_has_nan_where():
    """Three placements, each with its expected line: the reference has NaN where the port has
    a number (4 elements in a column); the port has NaN where the reference has a number; and
    source and port both NaN where a given float64 reference has numbers (the source is off
    too, the port no further)."""
    y = np.random.default_rng(11).normal(size=(4, 6))
    y32 = y.astype(np.float32).astype(np.float64)
    column_3 = np.arange(6) == 3
    kw = dict(frameworks=("numpy", "jax"), gradients=False)
    report = check_port(lambda y: np.where(column_3, np.nan, y * 2), lambda y: y * 2, (y,), **kw)
    (check,) = report.failures
    assert (check.mismatched, check.misplaced, check.total) == (4, 4, 24) and check.index == (0, 3)
    text = str(check)
    assert "4 of 24 elements fail: 4 where NaN/inf do not match the reference's" in text
    assert (f"the reference has NaN at [0, 3] where the port has {2 * y32[0, 3]:.6g} (also at [1, 3], [2, 3], ...); "
            "4 such elements") in text
    assert "worst at" not in text and "nan)" not in text and "the port is off" in text

    report = check_port(lambda y: y * 2, lambda y: jnp.where(column_3, jnp.nan, y * 2) + (jnp.arange(6) == 0), (y,), **kw)
    (check,) = report.failures
    assert (check.mismatched, check.misplaced) == (8, 4)  # column 3 NaN, column 0 off by 1
    text = str(check)
    assert f"the port has NaN at [0, 3] where the reference has {2 * y32[0, 3]:.6g}" in text and "; 4 such elements" in text
    assert "8 of 24 elements fail: 4 where NaN/inf do not match the reference's, 4 outside tolerance" in text
    assert check.index[1] == 0 and "worst at [" in text  # the worst finite element

    both_nan = lambda y: np.where(column_3, np.nan, y * 2)
    report = check_port(both_nan, lambda y: jnp.where(column_3, jnp.nan, y * 2), (y,), frameworks=("numpy", "jax", "numpy"),
                        reference=lambda y: y * 2, gradients=False)
    text = str(report.failures[0])
    assert "the source is off from the float64 reference too" in text and "the source has NaN at [0, 3]" in text
    assert "the port has its NaN/inf at the same elements" in text


def test_python_options_reach_a_jax_side_as_they_are():
    """``is_causal=True`` and ``local_window_size=(1, 0)`` are static arguments of a jitted JAX
    port: they arrive as the Python values they are, while an array option (``bias``) is
    rounded and converted. The source writes the band out by hand; the same port called with
    another window fails, so the options are not ignored either."""
    rng = np.random.default_rng(10)
    q, k, v = (rng.normal(size=(B, S, 2, 4)) for _ in range(3))
    bias = rng.normal(size=(B, 2, S, S))

    def band(q, k, v, *, is_causal, local_window_size, bias):
        left, right = local_window_size
        t, s = np.arange(q.shape[1])[:, None], np.arange(k.shape[1])[None, :]
        allowed = (s >= t - left) & (s <= t + right) & ((s <= t) | (not is_causal))
        logits = np.einsum("BTNH,BSNH->BNTS", q, k) / np.sqrt(q.shape[-1]) + bias
        return np.einsum("BNTS,BSNH->BTNH", _softmax(np.where(allowed, logits, -np.inf)), v)

    jitted = jax.jit(jax.nn.dot_product_attention, static_argnames=("is_causal", "local_window_size"))
    options = {"is_causal": True, "local_window_size": (1, 0), "bias": bias}
    for port, dtypes in ((jitted, ("float32",)), (attention_jax.dot_product_attention, ("float64", "float32"))):
        # (jax.nn's float64 is good to about 1e-7 only: it is checked in float32)
        report = check_port(band, port, (q, k, v), kwargs=options, frameworks=("numpy", "jax"), dtypes=dtypes)
        assert report.passed, str(report)
    wider = check_port(band, jitted, (q, k, v), kwargs=options, port_kwargs={**options, "local_window_size": (2, 0)},
                       frameworks=("numpy", "jax"), gradients=False)
    assert [c.name for c in wider.failures] == ["output"]


class ModelOutput(collections.OrderedDict):
    """Hugging Face's ``ModelOutput``, in miniature: a dataclass that is also an ``OrderedDict``
    of its fields that are not None."""

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) is not None:
                self[field.name] = getattr(self, field.name)


@dataclasses.dataclass
class AttentionOutput(ModelOutput):
    last_hidden_state: object = None
    hidden_states: object = None  # None: not an output
    attentions: object = None


@dataclasses.dataclass(frozen=True)
class Frozen:
    last_hidden_state: object
    attentions: object


Pair = collections.namedtuple("Pair", "last_hidden_state attentions")


class Ordered(collections.OrderedDict):
    pass


@pytest.mark.parametrize("container", [
    lambda out, w: AttentionOutput(last_hidden_state=out, attentions=w),
    lambda out, w: Ordered(last_hidden_state=out, attentions=w),
    Frozen,
    Pair,
], ids=["ModelOutput", "OrderedDict subclass", "dataclass", "namedtuple"])
def test_outputs_in_mappings_dataclasses_and_namedtuples_are_compared_leaf_by_leaf(container):
    """Each side returns its outputs in the container (the first three are one leaf to
    ``jax.tree``): they are compared as the dict or tuple it is, each field a leaf named by
    its field, with the gradients; a port whose weights are off fails in that field alone."""
    rng = np.random.default_rng(12)
    q, k = rng.normal(size=(B, T, 4)), rng.normal(size=(B, S, 4))

    def source(q, k):
        weights = _softmax(q @ k.transpose(0, 2, 1))
        return container(weights @ k, weights)

    def port(q, k, *, off=0.0):
        weights = jax.nn.softmax(q @ jnp.swapaxes(k, 1, 2), axis=-1)
        return container(weights @ k, weights + off)

    report = check_port(source, port, (q, k), frameworks=("numpy", "jax"), dtypes=("float64", "float32"))
    assert report.passed, str(report)
    assert {c.name for c in report.checks} == {"output.attentions", "output.last_hidden_state", "grad.inputs[0]", "grad.inputs[1]"}
    report = check_port(source, lambda q, k: port(q, k, off=1e-3), (q, k), frameworks=("numpy", "jax"), gradients=False)
    assert [c.name for c in report.failures] == ["output.attentions"]


def test_outputs_of_a_torch_side_in_a_model_output_or_a_namedtuple_are_compared_leaf_by_leaf():
    """A PyTorch source returning a ``ModelOutput`` (an ``OrderedDict`` subclass and a
    dataclass), and one returning a namedtuple; the JAX port returns a plain dict, and a
    tuple."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    q, k = rng.normal(size=(B, T, 4)), rng.normal(size=(B, S, 4))

    def source(q, k, *, container):
        weights = torch.softmax(q @ k.transpose(1, 2), dim=-1)
        return container(last_hidden_state=weights @ k, attentions=weights)

    def port(q, k, *, container):
        weights = jax.nn.softmax(q @ jnp.swapaxes(k, 1, 2), axis=-1)
        return {"last_hidden_state": weights @ k, "attentions": weights} if container is AttentionOutput else (weights @ k, weights)

    for container in (AttentionOutput, Pair):
        report = check_port(source, port, (q, k), kwargs={"container": container}, dtypes=("float32", "bfloat16"))
        assert report.passed, str(report)
        assert {c.name for c in report.checks} == {"output.attentions", "output.last_hidden_state", "grad.inputs[0]", "grad.inputs[1]"}


def test_a_parameter_map_that_leaves_out_source_parameters_fails_and_names_them():
    """An NNX source (LayerNorm, then Linear) and a port without the LayerNorm's bias: the bias
    starts at zero, so outputs and every compared gradient agree, yet its gradient would never
    be compared. The map leaving it out fails, naming it; so does a map that drops one
    element of another parameter (an off-by-one slice); ``ignore_params`` accepts the first."""
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.norm, self.proj = nnx.LayerNorm(E, rngs=rngs), nnx.Linear(E, E, rngs=rngs)

        def __call__(self, x):
            return self.proj(self.norm(x))

    def port(params, x):  # layer norm with a scale and no bias
        normed = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)
        return (normed * params["scale"]) @ params["kernel"] + params["bias"]

    def no_norm_bias(p):
        return {"scale": p["norm"]["scale"], "kernel": p["proj"]["kernel"], "bias": p["proj"]["bias"]}

    def off_by_one(p):
        return {**no_norm_bias(p), "bias": jnp.concatenate([p["proj"]["bias"][:-1], jnp.zeros(1)])}

    source = Block(nnx.Rngs(0))
    x = np.random.default_rng(14).normal(size=(B, T, E))
    report = check_port(source, port, (x,), frameworks=("jax", "jax"), params=no_norm_bias)
    assert [c.name for c in report.failures] == ["params"]
    assert "the parameter map leaves out source parameters norm.bias (12,): their gradients are never compared" in str(report)
    assert all(c.passed for c in report.checks if c.name != "params")  # all else agrees: the bias is zero
    report = check_port(source, port, (x,), frameworks=("jax", "jax"), params=off_by_one, ignore_params=("norm.bias",))
    assert "leaves out source parameters proj.bias (12,) (1 of its 12 elements)" in str(report.failures[0])
    report = check_port(source, port, (x,), frameworks=("jax", "jax"), params=no_norm_bias, ignore_params=("norm.bias",))
    assert report.passed, str(report)
    with pytest.raises(ValueError, match="ignore_params: the source has no parameters norm.beta; its parameters are "):
        check_port(source, port, (x,), frameworks=("jax", "jax"), params=no_norm_bias, ignore_params=("norm.beta",))


def test_a_torch_parameter_map_that_leaves_out_the_layer_norm_bias_fails():
    """The same with a PyTorch source: the map leaves out ``norm.bias``."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.proj = torch.nn.LayerNorm(E), torch.nn.Linear(E, E)

        def forward(self, x):
            return self.proj(self.norm(x))

    source = Block()

    def port(params, x):
        normed = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
        return (normed * params["scale"]) @ params["kernel"] + params["bias"]

    def to_port(state):
        return {"scale": state["norm.weight"], "kernel": state["proj.weight"].T, "bias": state["proj.bias"]}

    x = np.random.default_rng(15).normal(size=(B, T, E))
    report = check_port(source, port, (x,), params=to_port)
    assert [c.name for c in report.failures] == ["params"] and "source parameters norm.bias (12,)" in str(report)
    assert check_port(source, port, (x,), params=to_port, ignore_params=("norm.bias",)).passed


def test_float_options_rounded_to_bfloat16_stay_finite():
    """An additive mask built with ``finfo(float32).min`` (as Hugging Face models build theirs)
    rounds to -inf in bfloat16; the model builds it in its own dtype, where it is finite. It is
    clipped to bfloat16's finite range, so a fully masked row stays a uniform row on every side
    (not NaN in the source and zeros in a port that treats a row of -inf as no keys); a -inf
    the caller passes stays -inf."""
    rng = np.random.default_rng(16)
    q, k, v = (rng.normal(size=(B, S, N, 4)) for _ in range(3))
    keep = np.ones((B, S), bool)
    keep[1] = False                                              # the second sequence: no keys at all
    mask = np.where(keep, 0.0, np.finfo(np.float32).min)[:, None, None, :]   # (B, 1, 1, S)
    seen = []

    def hugging_face_style(q, k, v, *, bias):
        seen.append(np.asarray(bias, np.float64).min())
        scores = jnp.einsum("BTNH,BSNH->BNTS", q, k) / np.sqrt(q.shape[-1]) + bias
        return jnp.einsum("BNTS,BSNH->BTNH", jax.nn.softmax(scores, axis=-1), v)

    def port(q, k, v, *, bias):
        return attention_jax.scaled_dot_product_attention(q, k, v, bias=bias)[0]

    report = check_port(hugging_face_style, port, (q, k, v), kwargs={"bias": mask}, frameworks=("jax", "jax"),
                        dtypes=("float32", "bfloat16"))
    assert report.passed, str(report)
    bf16_max = float(jnp.finfo(jnp.bfloat16).max)
    assert -bf16_max in seen and np.finfo(np.float32).min in seen and not np.isinf(seen).any()
    seen.clear()
    check_port(hugging_face_style, port, (q, k, v), kwargs={"bias": np.full((1, 1, 1, S), -np.inf)},
               frameworks=("jax", "jax"), dtypes=("bfloat16",), gradients=False)
    assert seen and all(s == -np.inf for s in seen)


# --- PyTorch -> JAX: the worked ports of docs/ports.md ------------------------------------------------
def test_worked_port_torch_multihead_attention_to_attention_jax():
    """torch.nn.MultiheadAttention (kdim != vdim, key padding and causal masks) -> the
    functional multi_head_attention, float32 and bfloat16, input and parameter gradients."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # --- the user's code, as in docs/ports.md (11 lines and the imports)
    source = torch.nn.MultiheadAttention(E, N, kdim=5, vdim=7, batch_first=True)

    def port(params, query, key, value, *, key_padding_mask, attn_mask, average_attn_weights):
        mask = ~key_padding_mask[:, None, None, :] & ~attn_mask  # PyTorch: True = masked; here: True = attend
        return attention_jax.multi_head_attention(params, query, key, value, mask=mask)

    padding = np.zeros((B, S), bool)
    padding[1, 3:] = True                              # the second sequence has 3 keys
    causal = np.triu(np.ones((T, S), bool), k=1)
    report = check_port(
        source, port, (rng.normal(size=(B, T, E)), rng.normal(size=(B, S, 5)), rng.normal(size=(B, S, 7))),
        kwargs={"key_padding_mask": padding, "attn_mask": causal, "average_attn_weights": False},
        dtypes=("float32", "bfloat16"), params=lambda state: attention_jax.multi_head_params_from_torch(state, N))
    # --- end of the user's code
    assert report.passed, str(report)
    names = {c.name for c in report.checks}
    assert {"output[0]", "output[1]", "grad.inputs[2]", "grad.params.value.kernel", "grad.params.out.bias"} <= names
    assert len(report.checks) == 2 * (2 + 3 + 8)  # dtypes x (outputs + inputs + 4 kernels and 4 biases)


def test_worked_port_bert_self_attention_to_dot_product_attention():
    """A BERT-style self-attention written in PyTorch (additive -10000 padding mask) ->
    attention_jax.dot_product_attention with the same additive mask as its bias."""
    torch = pytest.importorskip("torch")

    class BertSelfAttention(torch.nn.Module):  # the source, as a PyTorch user wrote it
        def __init__(self, hidden, heads):
            super().__init__()
            self.heads, self.head_dim = heads, hidden // heads
            self.query, self.key, self.value = (torch.nn.Linear(hidden, hidden) for _ in range(3))

        def forward(self, hidden_states, attention_mask):
            b, t, _ = hidden_states.shape
            split = lambda x: x.view(b, t, self.heads, self.head_dim).transpose(1, 2)
            q, k, v = split(self.query(hidden_states)), split(self.key(hidden_states)), split(self.value(hidden_states))
            scores = q @ k.transpose(-1, -2) / self.head_dim**0.5 + (1.0 - attention_mask[:, None, None, :]) * -10000.0
            return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, -1)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # --- the user's code, as in docs/ports.md (11 lines and the imports)
    def to_port(state):  # torch Linear (out, in) -> x @ kernel + bias, split into heads
        return {n: {"kernel": state[f"{n}.weight"].T.reshape(E, N, E // N), "bias": state[f"{n}.bias"].reshape(N, E // N)}
                for n in ("query", "key", "value")}

    def port(params, hidden_states, *, attention_mask):
        q, k, v = (jnp.einsum("BTE,ENH->BTNH", hidden_states, params[n]["kernel"]) + params[n]["bias"] for n in ("query", "key", "value"))
        bias = (1.0 - attention_mask[:, None, None, :]) * -10000.0
        return attention_jax.dot_product_attention(q, k, v, bias=bias.astype(q.dtype)).reshape(hidden_states.shape)

    attention_mask = np.ones((B, S))
    attention_mask[1, 3:] = 0.0
    report = check_port(BertSelfAttention(E, N), port, (rng.normal(size=(B, S, E)),), kwargs={"attention_mask": attention_mask},
                        dtypes=("float32", "bfloat16"), params=to_port)
    # --- end of the user's code
    assert report.passed, str(report)
    assert {c.name for c in report.checks} >= {"output", "grad.inputs[0]", "grad.params.key.kernel", "grad.params.value.bias"}


def test_torch_module_to_flax_nnx_module_with_the_parameter_map():
    """torch.nn.MultiheadAttention -> flax.nnx.MultiHeadAttention (the same parameter tree as
    ours): the map's weights are loaded into the module in each dtype, and its parameter
    gradients are compared leaf by leaf; PyTorch's (out, None) is the module's out."""
    torch = pytest.importorskip("torch")
    from flax import nnx

    torch.manual_seed(0)
    rng = np.random.default_rng(7)
    source = torch.nn.MultiheadAttention(E, N, batch_first=True)
    port = nnx.MultiHeadAttention(N, E, decode=False, rngs=nnx.Rngs(0))
    inputs = (rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E)), rng.normal(size=(B, S, E)))
    report = check_port(source, port, inputs, kwargs={"need_weights": False}, port_kwargs={}, dtypes=("float32",),
                        params=lambda state: attention_jax.multi_head_params_from_torch(state, N))
    assert report.passed, str(report)
    assert "grad.params.query.kernel" in {c.name for c in report.checks} and report.port == "jax MultiHeadAttention"
    with pytest.raises(ValueError, match=r"returns arrays of shapes \[\(2, 3, 12\)\], the reference \[\(2, 3, 12\), \(2, 3, 5\)\]"):
        check_port(source, port, inputs, port_kwargs={}, params=lambda state: attention_jax.multi_head_params_from_torch(state, N))


def test_worked_port_torch_multihead_attention_to_the_nnx_module_from_torch():
    """torch.nn.MultiheadAttention -> attention_jax.nnx.MultiHeadAttention.from_torch, key
    padding and causal masks: with its own weights (from_torch's loading is what is checked,
    input gradients), then through the parameter map (parameter gradients too), float32 and
    bfloat16. kdim == vdim: the module has one in_kv_features."""
    torch = pytest.importorskip("torch")
    from attention_jax.nnx import MultiHeadAttention

    torch.manual_seed(0)
    rng = np.random.default_rng(9)
    # --- the user's code, as in docs/ports.md (10 lines and the imports)
    source = torch.nn.MultiheadAttention(E, N, batch_first=True)
    port = MultiHeadAttention.from_torch(source, decode=False)
    padding = np.zeros((B, S), bool)
    padding[1, 3:] = True
    causal = np.triu(np.ones((T, S), bool), k=1)
    inputs = (rng.normal(size=(B, T, E)), rng.normal(size=(B, S, E)), rng.normal(size=(B, S, E)))
    options = dict(kwargs={"key_padding_mask": padding, "attn_mask": causal, "need_weights": False},
                   port_kwargs={"mask": ~padding[:, None, None, :] & ~causal})  # PyTorch: True = masked
    report = check_port(source, port, inputs, dtypes=("float32", "bfloat16"), **options,
                        params=lambda state: attention_jax.multi_head_params_from_torch(state, N))
    # --- end of the user's code
    assert report.passed, str(report)
    assert "grad.params.out.kernel" in {c.name for c in report.checks}
    own_weights = check_port(source, port, inputs, dtypes=("float32",), **options)
    assert own_weights.passed, str(own_weights)
    assert {c.name for c in own_weights.checks} == {"output[0]", "grad.inputs[0]", "grad.inputs[1]", "grad.inputs[2]"}


def test_float64_port_through_a_jax_parameter_map_keeps_float64():
    """The JAX map returns jnp arrays, float32 unless x64 is on: the weights and the mapped
    gradients must stay float64, or the float64 row would fail at float32's rounding."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rng = np.random.default_rng(8)
    source = torch.nn.MultiheadAttention(E, N, batch_first=True)
    x = rng.normal(size=(B, T, E))
    with jax.enable_x64(False):  # as a user runs it (the suite turns x64 on for its own float64 rows)
        report = check_port(source, lambda params, q, k, v: attention_jax.multi_head_attention(params, q, k, v)[0], (x, x, x),
                            kwargs={"need_weights": False}, port_kwargs={}, dtypes=("float64",),
                            params=lambda state: attention_jax.multi_head_params_from_torch(state, N))
    assert report.passed, str(report)
    assert max(c.abs_error for c in report.checks) < 1e-13


def test_planted_bug_in_a_torch_port_is_located_in_the_parameter_gradients():
    """A port of torch.nn.Linear whose forward is right but whose bias gets no gradient: the
    outputs and the input gradients agree, and the report names grad.params.bias alone."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3)

    def to_port(state):
        return {"kernel": state["weight"].T, "bias": state["bias"]}

    def port_wrong_bias_gradient(params, x):
        return x @ params["kernel"] + jax.lax.stop_gradient(params["bias"])  # forward right, bias gradient 0

    x = np.random.default_rng(4).normal(size=(B, 4))
    report = check_port(module, port_wrong_bias_gradient, (x,), params=to_port)
    assert [c.name for c in report.failures] == ["grad.params.bias"]
    assert "the port is off" in str(report) and report.failures[0].mismatched == 3


def test_multi_head_params_from_torch_packed_separate_and_without_bias():
    """Each layout against the module itself: the NumPy half on the converted weights equals
    the PyTorch forward; a state dict of NumPy arrays needs no torch at all."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    for kdim, vdim, bias in ((E, E, True), (5, 7, True), (E, E, False), (5, 7, False)):
        module = torch.nn.MultiheadAttention(E, N, kdim=kdim, vdim=vdim, bias=bias, batch_first=True).double()
        q, k, v = rng.normal(size=(B, T, E)), rng.normal(size=(B, S, kdim)), rng.normal(size=(B, S, vdim))
        with torch.no_grad():
            expected, _ = module(*map(torch.from_numpy, (q, k, v)), average_attn_weights=False)
        state = {name: t.numpy() for name, t in module.state_dict().items()}
        for params in (attention_np.multi_head_params_from_torch(module),
                       attention_np.multi_head_params_from_torch(state, num_heads=N)):
            assert ("bias" in params["query"]) == bias
            out, _ = attention_np.multi_head_attention(params, q, k, v)
            np.testing.assert_allclose(out, expected.numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="num_heads is required with a state dict"):
        attention_np.multi_head_params_from_torch(state)
    with pytest.raises(ValueError, match="bias_k"):
        attention_np.multi_head_params_from_torch(torch.nn.MultiheadAttention(E, N, add_bias_kv=True))


def test_multi_head_attention_keys_and_values_of_different_widths_numpy_to_jax():
    rng = np.random.default_rng(6)
    params = attention_np.init_multi_head_params(rng, E, N, 4, in_kv_features=5, dtype=np.float64)
    params["value"]["kernel"] = rng.normal(size=(7, N, 4))
    inputs = (params, rng.normal(size=(B, T, E)), rng.normal(size=(B, S, 5)), rng.normal(size=(B, S, 7)))
    assert_port(attention_np.multi_head_attention, attention_jax.multi_head_attention, inputs,
                frameworks=("numpy", "jax"), dtypes=("float64", "float32"))


def test_sweep_over_sizes_and_seeds_reports_the_worst_case_with_its_size_and_seed():
    def build(rng, size):
        return (rng.normal(size=(2, size)),)

    def breaks_above_8(x):  # right for short rows only
        return jax.nn.softmax(x, axis=-1 if x.shape[-1] <= 8 else 0)

    kw = dict(frameworks=("numpy", "jax"), sizes=[3, 17], seeds=[0, 1])
    assert check_port(_softmax, lambda x: jax.nn.softmax(x, axis=-1), build, **kw).passed
    report = check_port(_softmax, breaks_above_8, build, **kw)
    assert {c.where for c in report.failures} == {"size=17 seed=0", "size=17 seed=1"}
    assert report.worst.where.startswith("size=17") and "worst:     size=17" in str(report)
    with pytest.raises(ValueError, match="pass sizes="):
        check_port(_softmax, breaks_above_8, build, frameworks=("numpy", "jax"))


def test_sweep_port_is_the_sweep_with_its_own_parameters():
    def build(rng, size):
        return (rng.normal(size=(2, size)),)

    def breaks_above_8(x):
        return jax.nn.softmax(x, axis=-1 if x.shape[-1] <= 8 else 0)

    report = sweep_port(_softmax, breaks_above_8, build, [3, 17], seeds=[0, 1], frameworks=("numpy", "jax"))
    assert {c.where for c in report.failures} == {"size=17 seed=0", "size=17 seed=1"}
    # check_port's sweep arguments are the same sweep, leaf for leaf
    assert str(report) == str(check_port(_softmax, breaks_above_8, build, frameworks=("numpy", "jax"), sizes=[3, 17], seeds=[0, 1]))
    with pytest.raises(TypeError, match="seed"):  # the seeds are the sweep's
        sweep_port(_softmax, breaks_above_8, build, [3], seed=1, frameworks=("numpy", "jax"))
    with pytest.raises(TypeError, match="build must be a callable"):
        sweep_port(_softmax, breaks_above_8, (np.ones(3),), [3], frameworks=("numpy", "jax"))


def test_a_tolerance_object_and_a_number_are_tolerances_too():
    """The port of test_tolerances_dtype_source_and_explicit (rel error 1e-5 in float32):
    a Tolerance is its short form; a number is the registry's rule, abs or rel error within it."""
    x = np.random.default_rng(3).normal(size=(50,))
    source, port = (lambda x: x * 3), (lambda x: x * 3 * (1 + 1e-5))
    kw = dict(frameworks=("numpy", "jax"), gradients=False)
    report = check_port(source, port, (x,), tolerance=Tolerance(atol=0.0, rtol=2e-5), **kw)
    assert report.passed and "tolerance: |port - ref| <= atol + rtol |ref|: (0.0, 2e-05)" in str(report)
    assert not check_port(source, port, (x,), tolerance=Tolerance.source(), **kw).passed
    assert check_port(source, port, (x,), tolerance=Tolerance.dtype(), **kw).passed
    assert check_port(source, port, (x,), tolerance=2e-5, **kw).passed        # rel 1e-5 <= 2e-5
    assert not check_port(source, port, (x,), tolerance=5e-6, **kw).passed    # neither abs nor rel everywhere
    with pytest.raises(ValueError, match="the tolerance has no atol for bfloat16"):
        check_port(source, port, (x,), tolerance={"float32": (0.0, 2e-5)}, dtypes=("float32", "bfloat16"), **kw)
