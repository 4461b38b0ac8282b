"""check_port as ports meet it: probes (named intermediate values, compared before the outputs),
``output_mask`` (rows that mean something else in the source), leaves below the floor (not
tested, counted), ``cotangent_scale``, and the report's verdict line (the first leaf to fail in
the forward order, the worst) with the failures sorted by severity. The PyTorch sources are
skipped without torch."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax
from parity_tests import check_port

B, T, S, N, H = 2, 5, 7, 3, 4  # E = N H = 12
E = N * H


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- a planted RoPE bug, PyTorch module -> Flax NNX module -------------------------------------------
def rope_halves_torch(torch, x):
    """Rotary embedding on ``(B, N, T, H)``, rotating halves (GPT-NeoX, Llama)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float64) / half))
    angle = torch.arange(x.shape[-2], dtype=torch.float64)[:, None] * inv_freq                 # (T, H/2)
    cos, sin = (torch.cat([f(angle)] * 2, -1).to(x.dtype) for f in (torch.cos, torch.sin))    # (T, H)
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def rope_jax(x, *, interleaved):
    """Rotary embedding on ``(B, T, N, H)``: halves, or (the bug) adjacent pairs (GPT-J)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (10000 ** (np.arange(half) / half))
    angle = np.arange(x.shape[1])[:, None, None] * inv_freq                                    # (T, 1, H/2)
    cos, sin = jnp.asarray(np.cos(angle), x.dtype), jnp.asarray(np.sin(angle), x.dtype)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).reshape(x.shape)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def torch_source(torch):
    class Rotary(torch.nn.Module):
        def forward(self, x):
            return rope_halves_torch(torch, x)

    class Attention(torch.nn.Module):  # Llama-style, without its caches
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(E, E, bias=False) for _ in range(4))
            self.rotary = Rotary()

        def forward(self, x):
            b, t, _ = x.shape
            split = lambda y: y.view(b, t, N, H).transpose(1, 2)                              # (B, N, T, H)
            q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
            q, k = self.rotary(q), self.rotary(k)                                              # called twice
            weights = torch.softmax(q @ k.transpose(-1, -2) / H**0.5, dim=-1)
            return self.o_proj((weights @ v).transpose(1, 2).reshape(b, t, E))

    torch.manual_seed(0)
    return Attention()


def nnx_port(*, interleaved):
    from flax import nnx

    class Attention(nnx.Module):
        def __init__(self, rngs):
            self.q, self.k, self.v = (nnx.LinearGeneral(E, (N, H), use_bias=False, rngs=rngs) for _ in range(3))
            self.out = nnx.LinearGeneral((N, H), E, axis=(-2, -1), use_bias=False, rngs=rngs)

        def __call__(self, x):
            q, k, v = self.q(x), self.k(x), self.v(x)                                          # (B, T, N, H)
            self.sow(nnx.Intermediate, "q", q)
            q, k = rope_jax(q, interleaved=interleaved), rope_jax(k, interleaved=interleaved)
            self.sow(nnx.Intermediate, "q_rope", q)
            weights = jax.nn.softmax(jnp.einsum("BTNH,BSNH->BNTS", q, k) / H**0.5, axis=-1)
            return self.out(jnp.einsum("BNTS,BSNH->BTNH", weights, v))

    return Attention(nnx.Rngs(0))


def to_port(state):
    split = lambda w: w.T.reshape(E, N, H)  # torch Linear (out, in) -> (E, N, H)
    return {"q": {"kernel": split(state["q_proj.weight"])}, "k": {"kernel": split(state["k_proj.weight"])},
            "v": {"kernel": split(state["v_proj.weight"])}, "out": {"kernel": state["o_proj.weight"].T.reshape(N, H, E)}}


def heads_last(x):
    return x.swapaxes(1, 2)  # (B, N, T, H) -> (B, T, N, H)


ROPE_PROBES = {"q": (("q_proj", lambda q: q.reshape(B, T, N, H)), "q"),                 # q_proj's output, split into heads
               "q_rope": (("rotary", lambda qk: heads_last(qk[0])), "q_rope")}           # rotary's first call: q


def test_a_rope_bug_is_named_at_the_probe_before_the_outputs_and_gradients():
    """A Llama-style PyTorch attention and an NNX port that rotates adjacent pairs instead of
    halves: the projection's probe passes, the rotated query's fails, and so do the output
    and every gradient. The verdict names the rotated query first; the same port with the
    halves rotated passes every leaf, probes included."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(B, T, E))
    report = check_port(torch_source(torch), nnx_port(interleaved=True), (x,), params=to_port, probes=ROPE_PROBES)
    assert not report.passed
    first = report.first_failure
    assert first.name == "probe.q_rope" and first.index[1] > 0  # position 0 is not rotated: it agrees
    assert report.checks[0].name == "probe.q" and report.checks[0].passed
    assert {c.name for c in report.failures} == {"probe.q_rope", "output", "grad.inputs[0]", "grad.params.q.kernel",
                                                 "grad.params.k.kernel", "grad.params.v.kernel", "grad.params.out.kernel"}
    verdict = str(report).splitlines()[0]
    assert verdict.startswith("check_port: FAILED, 1 of 8 leaves pass, 7 fail; first to fail (forward order): "
                              f"float32 probe.q_rope at {list(first.index)}")
    q_rope = next(c for c in report.checks if c.name == "probe.q_rope")
    assert q_rope.mismatched <= q_rope.total * (T - 1) // T   # position 0 agrees
    fixed = check_port(torch_source(torch), nnx_port(interleaved=False), (x,), params=to_port, probes=ROPE_PROBES,
                       dtypes=("float32", "bfloat16"))
    assert fixed.passed and not fixed.untested, str(fixed)
    assert [c.name for c in fixed.checks[:3]] == ["probe.q", "probe.q_rope", "output"]  # forward order within a dtype


def test_the_failures_are_sorted_by_severity_after_the_verdict():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(B, T, E))
    report = check_port(torch_source(torch), nnx_port(interleaved=True), (x,), params=to_port, probes=ROPE_PROBES)
    lines = [line for line in str(report).splitlines() if line.startswith("FAIL")]
    ratios = [next(c for c in report.failures if line.startswith(f"FAIL float32 {c.name} ")).ratio for line in lines]
    assert len(lines) == 7 and ratios == sorted(ratios, reverse=True)
    worst = report.worst
    assert lines[0].startswith(f"FAIL float32 {worst.name} ")
    assert (f"; worst: {worst.brief()}, {worst.ratio:.3g} x its tolerance" in str(report).splitlines()[0]) \
        or (worst is report.first_failure and "also the worst" in str(report).splitlines()[0])


def test_probes_of_functions_are_keys_of_their_dict_outputs_values_only():
    """A NumPy source and a JAX port return their logits beside the output under other keys;
    the probes take them out of the outputs, so the compared outputs are the same one leaf and
    no cotangent reaches the logits (finite differences of the source, float64, agree with the
    port's gradients). A wrong scale is named at the logits first."""
    rng = np.random.default_rng(2)
    q, k = rng.normal(size=(B, T, H)), rng.normal(size=(B, S, H))

    def source(q, k):
        logits = q @ k.transpose(0, 2, 1) / np.sqrt(H)
        return {"out": _softmax(logits) @ k, "logits": logits}

    def port(q, k, *, scale=H**-0.5):
        scores = q @ jnp.swapaxes(k, 1, 2) * scale
        return {"context": jax.nn.softmax(scores, axis=-1) @ k, "scores": scores}

    probes = {"logits": ("logits", "scores")}
    report = check_port(source, port, (q, k), frameworks=("numpy", "jax"), dtypes=("float64", "float32"), probes=probes)
    assert report.passed, str(report)
    # what is left of a dict output keeps its key
    assert [c.name for c in report.checks if c.dtype == "float64"] == ["probe.logits", "output.out", "grad.inputs[0]",
                                                                        "grad.inputs[1]"]
    wrong = check_port(source, lambda q, k: port(q, k, scale=1.0 / H), (q, k), frameworks=("numpy", "jax"), probes=probes)
    assert wrong.first_failure.name == "probe.logits"
    assert "first to fail (forward order): float32 probe.logits at" in str(wrong).splitlines()[0]


def test_a_torch_function_probe_and_a_nnx_module_source_probe():
    """A PyTorch function's probe is a key of its dict output; an NNX source's a value it sows
    (read through nnx.capture: no deprecation warning); a tree-valued probe is compared leaf
    by leaf."""
    torch = pytest.importorskip("torch")
    from flax import nnx

    rng = np.random.default_rng(3)
    x = rng.normal(size=(B, T, E))

    def torch_side(x):
        hidden = torch.tanh(x)
        return {"out": hidden.sum(-1), "pair": (hidden, 2 * hidden)}

    def jax_side(x):
        hidden = jnp.tanh(x)
        return {"out": hidden.sum(-1), "hidden": [hidden, 2 * hidden]}

    report = check_port(torch_side, jax_side, (x,), probes={"hidden": ("pair", "hidden")})
    assert report.passed, str(report)
    assert {"probe.hidden[0]", "probe.hidden[1]"} <= {c.name for c in report.checks}

    class Sows(nnx.Module):
        def __init__(self):
            self.scale = nnx.Param(jnp.asarray(1.5))

        def __call__(self, x):
            hidden = jnp.tanh(x) * self.scale
            self.sow(nnx.Intermediate, "hidden", hidden)
            return hidden.sum(-1)

    def jax_port(x):
        hidden = jnp.tanh(x) * 1.5
        return {"out": hidden.sum(-1), "hidden": hidden}

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # Module.sow outside nnx.capture is deprecated
        report = check_port(Sows(), jax_port, (x,), frameworks=("jax", "jax"), dtypes=("float64",),
                            probes={"hidden": ("hidden", "hidden")})
    assert report.passed, str(report)
    assert report.checks[0].name == "probe.hidden"


def test_probe_errors_are_named():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).normal(size=(B, T, E))
    source = torch_source(torch)
    with pytest.raises(ValueError, match=r"probes\['q'\]: the source \(torch Attention\) has no submodule 'q_prj'; "
                                         r"its submodules are q_proj, k_proj, v_proj, o_proj, rotary"):
        check_port(source, nnx_port(interleaved=False), (x,), params=to_port, probes={"q": ("q_prj", "q")})
    with pytest.raises(ValueError, match="sows no nnx.Intermediate 'k_rope'; it sows 'q', 'q_rope'"):
        check_port(source, nnx_port(interleaved=False), (x,), params=to_port, probes={"k": ("k_proj", "k_rope")})
    with pytest.raises(TypeError, match=r"probes\['q'\]'s port entry must be a name \(str\) or \(name, transform\)"):
        check_port(source, nnx_port(interleaved=False), (x,), params=to_port, probes={"q": ("q_proj", 3)})
    with pytest.raises(TypeError, match=r"probes\['q'\] must be \(source's, port's\)"):
        check_port(source, nnx_port(interleaved=False), (x,), params=to_port, probes={"q": "q_proj"})
    f, g = (lambda x: {"out": x * 2, "h": x}), (lambda x: {"out": x * 2, "h": x})
    kw = dict(frameworks=("numpy", "jax"), gradients=False)
    with pytest.raises(ValueError, match="returns no key 'hidden'; its keys are 'out', 'h'"):
        check_port(f, g, (x,), probes={"h": ("hidden", "h")}, **kw)
    with pytest.raises(ValueError, match="whose probes are keys of its dict output; it returns ndarray"):
        check_port(lambda x: x, g, (x,), probes={"h": ("h", "h")}, **kw)
    with pytest.raises(ValueError, match="with reference= each probe needs a third entry"):
        check_port(f, g, (x,), probes={"h": ("h", "h")}, reference=f, **kw)
    with pytest.raises(ValueError, match="has a third entry, the reference's: it needs reference="):
        check_port(f, g, (x,), probes={"h": ("h", "h", "h")}, **kw)
    # a value with another number of arrays is a failing probe, not an error: the outputs are still checked
    report = check_port(f, lambda x: {"out": x * 2, "h": (x, x)}, (x,), probes={"h": ("h", "h")}, **kw)
    assert [c.name for c in report.failures] == ["probe.h"]
    assert "the port's value has 2 arrays [(2, 5, 12), (2, 5, 12)], the reference's 1 [(2, 5, 12)]" in str(report)


def test_a_submodule_never_called_is_an_error():
    torch = pytest.importorskip("torch")

    class Unused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = torch.nn.Linear(E, E), torch.nn.Linear(E, E)

        def forward(self, x):
            return self.used(x)

    x = np.random.default_rng(5).normal(size=(B, T, E))
    with pytest.raises(ValueError, match="submodule 'spare' was not called in its forward"):
        check_port(Unused(), lambda x: {"out": x, "h": x}, (x,), probes={"h": ("spare", "h")}, gradients=False)


# --- output_mask -------------------------------------------------------------------------------------
def _padded_attention():
    rng = np.random.default_rng(6)
    q, k, v = rng.normal(size=(B, T, N, H)), rng.normal(size=(B, S, N, H)), rng.normal(size=(B, S, N, H))
    mask = np.ones((B, 1, T, S), bool)
    mask[1, :, 3:, :] = False                      # batch row 1: queries 3 and 4 are padding, they see no key
    return (q, k, v), mask


def jax_nn(q, k, v, *, mask):          # a query that sees no key: the mean of the values
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


def ours(q, k, v, *, mask):            # the same query: zeros
    return attention_jax.dot_product_attention(q, k, v, mask=mask)


def test_output_mask_leaves_out_rows_that_mean_something_else_and_their_cotangent():
    """``jax.nn`` gives a query that sees no key the mean of the values, ours zeros: unmasked,
    the port fails on exactly those rows (and the value gradient, which the mean reaches);
    with the padded rows masked out of the comparison and the cotangent, every leaf passes,
    and the report counts the rows left out."""
    inputs, mask = _padded_attention()
    report = check_port(jax_nn, ours, inputs, kwargs={"mask": mask}, frameworks=("jax", "jax"))
    output = next(c for c in report.failures if c.name == "output")
    assert output.mismatched == 2 * N * H and output.index[:2] in ((1, 3), (1, 4))
    assert {c.name for c in report.failures} == {"output", "grad.inputs[2]"}
    valid_rows = mask.any(-1)[:, 0][:, :, None, None]                    # (B, T, 1, 1)
    report = check_port(jax_nn, ours, inputs, kwargs={"mask": mask}, frameworks=("jax", "jax"),
                        dtypes=("float32", "bfloat16"), output_mask=valid_rows)
    assert report.passed and not report.untested, str(report)
    output = next(c for c in report.checks if c.name == "output")
    assert (output.total, output.masked) == ((B * T - 2) * N * H, 2 * N * H)
    assert f"output (2, 5, 3, 4), {2 * N * H} of {B * T * N * H} masked out" in str(report)


def test_output_mask_as_a_tree_and_its_errors():
    """A mask per output (None: all of it), on a port returning ``(out, weights)``; the
    errors name what is wrong."""
    inputs, mask = _padded_attention()
    valid_rows = mask.any(-1)[:, 0][:, :, None, None]

    def with_weights(fn):
        def both(q, k, v, *, mask):
            weights = jax.nn.softmax(jnp.einsum("BTNH,BSNH->BNTS", q, k) / H**0.5, axis=-1)
            return fn(q, k, v, mask=mask), weights
        return both

    kw = dict(kwargs={"mask": mask}, frameworks=("jax", "jax"))
    assert check_port(with_weights(jax_nn), with_weights(ours), inputs, output_mask=(valid_rows, None), **kw).passed
    assert not check_port(with_weights(jax_nn), with_weights(ours), inputs, output_mask=(None, mask.any(-1)[..., None]),
                          **kw).passed
    with pytest.raises(TypeError, match="output_mask must be bool .True = compared.; output's is float64"):
        check_port(jax_nn, ours, inputs, output_mask=valid_rows * 1.0, **kw)
    with pytest.raises(ValueError, match=r"output_mask for output has shape \(2, 4\), which does not broadcast to "
                                         r"the output's \(2, 5, 3, 4\)"):
        check_port(jax_nn, ours, inputs, output_mask=np.ones((2, 4), bool), **kw)
    with pytest.raises(ValueError, match=r"a tree of the outputs' structure \(output\[0\], output\[1\]\)"):
        check_port(with_weights(jax_nn), with_weights(ours), inputs, output_mask={"out": valid_rows}, **kw)


def test_an_output_masked_out_everywhere_is_not_tested():
    inputs, mask = _padded_attention()
    report = check_port(jax_nn, ours, inputs, kwargs={"mask": mask}, frameworks=("jax", "jax"), gradients=False,
                        output_mask=np.zeros((), bool))
    assert report.passed and [c.name for c in report.untested] == ["output"]
    assert report.untested[0].untested.startswith("masked out")
    assert str(report).startswith("check_port: passed, 0 of 1 leaves pass, 1 not tested (masked out)")


# --- the floor and cotangent_scale -------------------------------------------------------------------
def test_gradients_below_the_floor_are_not_tested_and_counted_until_the_cotangent_lifts_them():
    """Gradients can be far below a dtype's floor (GPT-2's query and key weight gradients at
    its initialisation, std 0.02, are about 1e-10): here the query and key weights are tiny
    (std 1e-9), and so are each other's gradients (about 5e-8). At the default cotangent
    every element of them is within float32's floor of zero, so a port that never computes
    them (zeros) would pass: those leaves are "not tested (below the floor)", counted in the
    verdict, and do not pass. A larger cotangent_scale lifts them above the floor: then the
    right port passes them and the zero port fails them."""
    rng = np.random.default_rng(7)
    wq, wk = rng.normal(size=(2, E, E)) * 1e-9
    x = rng.normal(size=(B, T, E))

    def source(wq, wk, x):
        logits = jnp.einsum("BTF,BSF->BTS", x @ wq, x @ wk)
        return jax.nn.softmax(logits, axis=-1) @ x

    def port(wq, wk, x):
        return jax.nn.softmax((x @ wq) @ jnp.swapaxes(x @ wk, 1, 2), axis=-1) @ x

    def port_without_weight_gradients(wq, wk, x):
        return port(jax.lax.stop_gradient(wq), jax.lax.stop_gradient(wk), x)

    kw = dict(frameworks=("jax", "jax"))
    report = check_port(source, port, (wq, wk, x), **kw)
    assert report.passed
    assert [c.name for c in report.untested] == ["grad.inputs[0]", "grad.inputs[1]"]
    assert not any(c.passed for c in report.untested)
    assert str(report).splitlines()[0] == "check_port: passed, 2 of 4 leaves pass, 2 not tested (below the floor)"
    assert "not tested float32 grad.inputs[0] (12, 12): below the floor" in str(report)
    assert "a larger cotangent_scale= lifts gradients above it" in str(report)
    zeros = check_port(source, port_without_weight_gradients, (wq, wk, x), **kw)
    assert zeros.passed and len(zeros.untested) == 2   # it cannot tell: that is what "not tested" says
    lifted = check_port(source, port, (wq, wk, x), cotangent_scale=1e4, **kw)
    assert lifted.passed and not lifted.untested, str(lifted)
    zeros = check_port(source, port_without_weight_gradients, (wq, wk, x), cotangent_scale=1e4, **kw)
    assert [c.name for c in zeros.failures] == ["grad.inputs[0]", "grad.inputs[1]"]


def test_cotangent_scale_scales_the_gradients_and_is_checked():
    x = np.random.default_rng(8).normal(size=(B, S))
    kw = dict(frameworks=("numpy", "jax"), dtypes=("float64",))
    one = check_port(_softmax, lambda x: jax.nn.softmax(x, axis=-1), (x,), **kw)
    scaled = check_port(_softmax, lambda x: jax.nn.softmax(x, axis=-1), (x,), cotangent_scale=1e3, **kw)
    assert one.passed and scaled.passed
    grad_one, grad_scaled = (next(c for c in r.checks if c.name == "grad.inputs[0]") for r in (one, scaled))
    # the same worst element may differ; the reference at one index scales by 1e3
    ref = lambda cot: _softmax_vjp(x, cot)
    cot = np.random.default_rng([0, 1]).normal(size=x.shape)
    np.testing.assert_allclose(ref(1e3 * cot), 1e3 * ref(cot), rtol=1e-12)
    assert grad_scaled.reference == pytest.approx(ref(1e3 * cot)[grad_scaled.index], rel=1e-6)
    assert grad_one.reference == pytest.approx(ref(cot)[grad_one.index], rel=1e-6)
    for bad in (0.0, -1.0, np.inf, "big", True):
        with pytest.raises(ValueError, match="cotangent_scale must be a positive finite number"):
            check_port(_softmax, lambda x: jax.nn.softmax(x, axis=-1), (x,), cotangent_scale=bad, **kw)


def _softmax_vjp(x, cot):
    y = _softmax(x)
    return y * (cot - (cot * y).sum(-1, keepdims=True))
