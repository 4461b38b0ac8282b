"""Run by test_ring.py in a fresh process with 8 simulated CPU devices (XLA reads the device
count once, at start-up): ring attention against the single-device function, as JSON.
``ring_check.py --smoke``: a quick check on 2 devices (CI runs it at the lowest declared versions)."""

import contextlib
import json
import os
import sys

SMOKE = "--smoke" in sys.argv
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={2 if SMOKE else 8}"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec  # noqa: E402

import attention_jax  # noqa: E402
import attention_np  # noqa: E402

jax.config.update("jax_enable_x64", False)


def mesh_of(p):
    return Mesh(np.array(jax.devices()[:p]), ("sp",))


def errors(p, causal, n, k, seed=0, L=24):
    rng = np.random.default_rng(seed)
    B, H = 2, 5
    q = rng.normal(size=(B, L, n, H)).astype(np.float32)
    kv = [rng.normal(size=(B, L, k, H)).astype(np.float32) for _ in range(2)]
    mask = rng.random((B, L)) < 0.8
    if not causal:
        mask[1] = False  # a batch row with nothing to attend to: zeros, zero gradients
    mesh = mesh_of(p)
    sharding = NamedSharding(mesh, PartitionSpec(None, "sp"))
    args = [jax.device_put(x, sharding) for x in (q, *kv)]
    ring = lambda q, k, v: attention_jax.ring_attention(q, k, v, mesh=mesh, axis_name="sp", is_causal=causal,
                                                        mask=None if mask is None else mask[:, None, None, :])
    dense = lambda q, k, v: attention_jax.scaled_dot_product_attention(q, k, v, is_causal=causal, mask=mask[:, None, None, :])[0]
    cotangent = rng.normal(size=q.shape).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        out = ring(*args)
        expected = dense(q, *kv)
        grads = jax.vjp(ring, *args)[1](cotangent)
        expected_grads = jax.vjp(dense, q, *kv)[1](cotangent)
    return {
        "forward": float(jnp.abs(out - expected).max()),
        "gradients": max(float(jnp.abs(a - b).max()) for a, b in zip(grads, expected_grads)),
        "out_sharding": str(out.sharding.spec),
        "finite": bool(all(jnp.isfinite(g).all() for g in grads)),
    }


def mesh_kind_errors(kind, shape, with_mask, causal):
    """The ring on a mesh from ``jax.make_mesh`` (``kind`` Explicit, its default, or Auto) of
    ``shape``: ``(4,)`` over ("sp",) with plain (unsharded) inputs, as the README calls it, or
    ``(2, 4)`` over ("data", "sp") with the batch and the sequence sharded together, against
    the single-device function; the mask is a plain array either way."""
    rng = np.random.default_rng(2)
    B, L, N, H = 2, 16, 2, 4
    q, k, v = (rng.normal(size=(B, L, N, H)).astype(np.float32) for _ in range(3))
    mask = rng.random((B, L)) < 0.7 if with_mask else None
    names = ("sp",) if len(shape) == 1 else ("data", "sp")
    mesh = jax.make_mesh(shape, names, axis_types=(getattr(AxisType, kind),) * len(shape))
    args = (q, k, v)
    if len(shape) == 2:
        args = tuple(jax.device_put(x, NamedSharding(mesh, PartitionSpec("data", "sp"))) for x in args)
    ring = lambda q, k, v: attention_jax.ring_attention(q, k, v, mesh=mesh, axis_name="sp", is_causal=causal,
                                                        mask=None if mask is None else mask[:, None, None, :])
    dense_mask = None if mask is None else mask[:, None, None, :]
    dense = lambda q, k, v: attention_jax.scaled_dot_product_attention(q, k, v, is_causal=causal, mask=dense_mask)[0]
    cotangent = rng.normal(size=q.shape).astype(np.float32)
    with jax.set_mesh(mesh), jax.default_matmul_precision("highest"):
        out = ring(*args)
        grads = jax.vjp(ring, *args)[1](cotangent)
    with jax.default_matmul_precision("highest"):
        expected = dense(q, k, v)
        expected_grads = jax.vjp(dense, q, k, v)[1](cotangent)
    return {
        "forward": float(jnp.abs(np.asarray(out) - expected).max()),
        "gradients": max(float(jnp.abs(np.asarray(a) - b).max()) for a, b in zip(grads, expected_grads)),
        "finite": bool(all(np.isfinite(np.asarray(g)).all() for g in grads)),
        **(kept_sharding(out, grads, args) if len(shape) == 2 else {}),
    }


def kept_sharding(out, grads, args):
    """Whether the output has the query's sharding and each gradient its input's (the specs
    too, for the message)."""
    same = lambda a, b: a.sharding.is_equivalent_to(b.sharding, b.ndim)
    return {"query_sharding": str(args[0].sharding.spec), "out_sharding": str(out.sharding.spec),
            "out_kept": same(out, args[0]), "grads_kept": all(same(g, x) for g, x in zip(grads, args))}


def replicated_batch(kind):
    """On a (data, sp) mesh of ``kind``, a query split along T only (replicated over data): the
    output too, with the single-device function's values."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(size=(2, 16, 2, 4)).astype(np.float32) for _ in range(3))
    mesh = jax.make_mesh((2, 4), ("data", "sp"), axis_types=(getattr(AxisType, kind),) * 2)
    args = tuple(jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, "sp"))) for x in (q, k, v))
    with jax.set_mesh(mesh), jax.default_matmul_precision("highest"):
        out = attention_jax.ring_attention(*args, mesh=mesh, axis_name="sp")
    with jax.default_matmul_precision("highest"):
        expected = attention_jax.scaled_dot_product_attention(q, k, v)[0]
    return {"forward": float(jnp.abs(np.asarray(out) - expected).max()), "query_sharding": str(args[0].sharding.spec),
            "out_sharding": str(out.sharding.spec), "out_kept": args[0].sharding.is_equivalent_to(out.sharding, 4)}


@st.composite
def ring_problems(draw):
    """A random ring problem: P devices, T = S a multiple of P, grouped heads, a key-padding
    mask with a batch row that sees nothing, an upstream gradient up to 1e4."""
    P = draw(st.sampled_from([2, 4]))
    B, L = draw(st.sampled_from([1, 2])), P * draw(st.sampled_from([1, 2, 3]))
    K, G, H = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])), draw(st.sampled_from([2, 4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    q = rng.normal(size=(B, L, K * G, H)).astype(np.float32)
    k, v = (rng.normal(size=(B, L, K, H)).astype(np.float32) for _ in range(2))
    mask = None
    if draw(st.booleans()):
        mask = rng.random((B, L)) < draw(st.sampled_from([0.3, 0.8]))
        mask[rng.integers(B)] = False
    d_out = (rng.normal(size=q.shape) * draw(st.sampled_from([1.0, 1e2, 1e4]))).astype(np.float32)
    return P, draw(st.booleans()), q, k, v, mask, d_out


def ring_property(examples):
    """``None`` if every drawn problem passes, else the first failure: outputs and gradients
    finite, dead queries zero with zero gradient, values and gradients equal to the NumPy
    float64 reference and its VJP."""

    @settings(max_examples=examples, derandomize=examples <= 20, deadline=None, database=None)
    @given(problem=ring_problems())
    def check(problem):
        P, causal, q, k, v, mask, d_out = problem
        mesh = jax.make_mesh((P,), ("sp",))
        ring = lambda q, k, v: attention_jax.ring_attention(q, k, v, mesh=mesh, axis_name="sp", is_causal=causal,
                                                        mask=None if mask is None else mask[:, None, None, :])
        with jax.set_mesh(mesh), jax.default_matmul_precision("highest"):
            out, vjp = jax.vjp(ring, q, k, v)
            grads = [np.asarray(g, np.float64) for g in vjp(d_out)]
        out = np.asarray(out, np.float64)
        f64 = [x.astype(np.float64) for x in (q, k, v, d_out)]
        B, L = q.shape[:2]
        full = np.ones((B, 1, L, L), bool) if mask is None else np.broadcast_to(mask[:, None, None, :], (B, 1, L, L))
        if causal:
            full = full & np.tril(np.ones((L, L), bool))
        expected, weights = attention_np.scaled_dot_product_attention(*f64[:3], mask=full)
        expected_grads = attention_np.scaled_dot_product_attention_vjp(*f64, mask=full)
        dead = (weights.sum(-1) == 0).transpose(0, 2, 1)
        scale = lambda e: max(1.0, np.abs(e).max())
        assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads), "non-finite"
        assert (out[dead] == 0).all() and (grads[0][dead] == 0).all(), "a dead query is not zero"
        assert np.abs(out - expected).max() <= 2e-5 * scale(expected), "out"
        for name, g, e in zip(("d_query", "d_key", "d_value"), grads, expected_grads):
            assert np.abs(g - e).max() <= 2e-5 * scale(e), name

    return first_failure(check)


def residual_grads(fn, d_out, sinks):
    """The gradients (queries, keys, values and sinks when given) of ``sum(out * d_out)`` plus
    the finite entries of the lse, for ``fn(q, k, v, sinks) -> (out, lse)``."""
    def loss(q, k, v, sinks):
        out, lse = fn(q, k, v, sinks)
        return (out * d_out).sum() + jnp.where(jnp.isfinite(lse), lse, 0).sum()
    return jax.grad(loss, argnums=(0, 1, 2) if sinks is None else (0, 1, 2, 3))


def assert_close(out, lse, grads, expected, expected_lse, expected_grads):
    """Values within 2e-5 of the expected (relative to its largest entry, at least 1), the lse
    finite exactly where the expected is and within 2e-5 there, and each gradient likewise."""
    out, expected, lse, expected_lse = (np.asarray(x, np.float64) for x in (out, expected, lse, expected_lse))
    assert np.abs(out - expected).max() <= 2e-5 * max(1.0, np.abs(expected).max()), "out"
    finite = np.isfinite(expected_lse)
    assert (np.isfinite(lse) == finite).all() and np.abs(lse[finite] - expected_lse[finite]).max(initial=0) <= 2e-5, "lse"
    for name, g, e in zip(("d_query", "d_key", "d_value", "d_sinks"), grads, expected_grads):
        e = np.asarray(e)
        assert np.abs(np.asarray(g) - e).max() <= 2e-5 * max(1.0, np.abs(e).max()), name


def first_failure(check):
    """``None`` if hypothesis finds no failing example of ``check``, else the failure and its example."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON
            check()
    except Exception as e:  # reported by test_ring.py, with hypothesis's falsifying example
        return "\n".join([f"{type(e).__name__}: {e}", *getattr(e, "__notes__", [])])[-3000:]
    return None


@st.composite
def option_problems(draw):
    """A ring problem with the options of ``chunked_attention``: a layout, a window, packed
    documents (sorted segment ids that span shards), lengths, a soft-cap, sinks, a key mask."""
    P = draw(st.sampled_from([2, 4]))
    layout = draw(st.sampled_from(["contiguous", "zigzag"]))
    B, L = draw(st.sampled_from([1, 2])), 2 * P * draw(st.sampled_from([1, 2, 3]))
    K, G, H = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2])), draw(st.sampled_from([2, 4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    q = rng.normal(size=(B, L, K * G, H)).astype(np.float32)
    k, v = (rng.normal(size=(B, L, K, H)).astype(np.float32) for _ in range(2))
    options = {"is_causal": draw(st.booleans())}
    if draw(st.booleans()):
        options["local_window_size"] = (draw(st.integers(0, L)), draw(st.integers(0, L)))
    if draw(st.booleans()):
        options["query_segment_ids"] = np.sort(rng.integers(0, 3, size=(B, L)), axis=1)
    if draw(st.booleans()):
        options["query_seq_lengths"] = rng.integers(0, L + 1, size=B)
        options["key_value_seq_lengths"] = rng.integers(0, L + 1, size=B)
    if draw(st.booleans()):
        options["logits_soft_cap"] = draw(st.sampled_from([0.5, 5.0]))
    if draw(st.booleans()):
        options["sinks"] = rng.normal(size=K * G).astype(np.float32)
    if draw(st.booleans()):
        options["mask"] = rng.random((B, 1, 1, L)) < 0.7
    d_out = rng.normal(size=q.shape).astype(np.float32)
    return P, layout, q, k, v, options, d_out


def option_property(examples):
    """``None`` if every drawn problem passes, else the first failure: with every option, in
    either layout, the ring's output and lse equal the NumPy float64 definition, its
    gradients (queries, keys, values, sinks) the dense path's; dead queries are zero."""

    @settings(max_examples=examples, derandomize=examples <= 20, deadline=None, database=None)
    @given(problem=option_problems())
    def check(problem):
        P, layout, q, k, v, options, d_out = problem
        mesh = jax.make_mesh((P,), ("sp",), axis_types=(AxisType.Auto,))
        L = q.shape[1]
        perm = np.arange(L) if layout == "contiguous" else attention_jax.zigzag_permutation(L, P)
        inv = np.argsort(perm)
        ring_options = dict(options)
        if "query_segment_ids" in options:
            ring_options["query_segment_ids"] = options["query_segment_ids"][:, perm]
        if "mask" in options:
            ring_options["mask"] = options["mask"][..., perm]
        sinks = options.pop("sinks", None)
        ring_options.pop("sinks", None)

        def ring(q, k, v, sinks):
            out, lse = attention_jax.ring_attention(q[:, perm], k[:, perm], v[:, perm], mesh=mesh, axis_name="sp",
                                                    layout=layout, sinks=sinks, return_residual=True, **ring_options)
            return out[:, inv], lse[:, inv]

        def dense(q, k, v, sinks):
            return attention_jax.dot_product_attention(q, k, v, implementation="dense", sinks=sinks,
                                                       return_residual=True, **options)

        with jax.default_matmul_precision("highest"):
            out, lse = ring(q, k, v, sinks)
            grads = residual_grads(ring, d_out, sinks)(q, k, v, sinks)
            expected_grads = residual_grads(dense, d_out, sinks)(q, k, v, sinks)
        f64 = [x.astype(np.float64) for x in (q, k, v)]
        expected, weights, expected_lse = attention_np.scaled_dot_product_attention(
            *f64, sinks=None if sinks is None else sinks.astype(np.float64), return_residual=True, **options)
        dead = (weights.sum(-1) == 0).transpose(0, 2, 1)
        assert np.isfinite(out).all() and all(np.isfinite(g).all() for g in grads), "non-finite"
        assert (np.asarray(out)[dead] == 0).all() and (np.asarray(grads[0])[dead] == 0).all(), "a dead query is not zero"
        assert_close(out, lse, grads, expected, expected_lse, expected_grads)

    return first_failure(check)


@st.composite
def ulysses_problems(draw):
    """A Ulysses problem: N a multiple of P, K a multiple or divisor of P, any of the options
    of :func:`option_problems` (contiguous layout), a single-device path, a mesh kind."""
    P, _, q, k, v, options, d_out = draw(option_problems())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    B, L, _, H = q.shape
    K = draw(st.sampled_from(sorted({1, P // 2, P, 2 * P} - {0})))
    N = max(K, P) * draw(st.sampled_from([1, 2]))
    q = rng.normal(size=(B, L, N, H)).astype(np.float32)
    k, v = (rng.normal(size=(B, L, K, H)).astype(np.float32) for _ in range(2))
    if "sinks" in options:
        options["sinks"] = rng.normal(size=N).astype(np.float32)
    d_out = rng.normal(size=q.shape).astype(np.float32)
    kind = draw(st.sampled_from(["Explicit", "Auto"]))
    return P, kind, draw(st.sampled_from(["dense", "chunked", None])), q, k, v, options, d_out


def ulysses_property(examples):
    """``None`` if every drawn problem passes, else the first failure: ``ulysses_attention``'s
    output, lse and gradients (sinks included) equal the dense path's on the gathered inputs."""

    @settings(max_examples=examples, derandomize=examples <= 20, deadline=None, database=None)
    @given(problem=ulysses_problems())
    def check(problem):
        P, kind, implementation, q, k, v, options, d_out = problem
        mesh = jax.make_mesh((P,), ("sp",), axis_types=(getattr(AxisType, kind),))
        sinks = options.pop("sinks", None)

        def ulysses(q, k, v, sinks):
            return attention_jax.ulysses_attention(q, k, v, mesh=mesh, axis_name="sp", implementation=implementation,
                                                   sinks=sinks, return_residual=True, **options)

        def dense(q, k, v, sinks):
            return attention_jax.dot_product_attention(q, k, v, implementation="dense", sinks=sinks,
                                                       return_residual=True, **options)

        with jax.default_matmul_precision("highest"):
            with jax.set_mesh(mesh):
                (out, lse), grads = ulysses(q, k, v, sinks), residual_grads(ulysses, d_out, sinks)(q, k, v, sinks)
            (expected, expected_lse) = dense(q, k, v, sinks)
            expected_grads = residual_grads(dense, d_out, sinks)(q, k, v, sinks)
        assert_close(out, lse, grads, expected, expected_lse, expected_grads)

    return first_failure(check)


def ulysses_errors():
    """The messages of the inputs ``ulysses_attention`` refuses."""
    mesh, messages = mesh_of(4), {}
    for name, (n, k, L) in {"heads": (6, 6, 8), "kv_heads": (12, 3, 8), "length": (4, 4, 6)}.items():
        x, kv = np.zeros((1, L, n, 4), np.float32), np.zeros((1, L, k, 4), np.float32)
        try:
            attention_jax.ulysses_attention(x, kv, kv, mesh=mesh, axis_name="sp")
        except ValueError as e:
            messages[name] = str(e)
    return messages


def mods_errors(P=4):
    """flex on the ring: an ALiBi-like ``score_mod`` closing over slopes (differentiated) and a
    causal document ``mask_mod`` closing over ids, at global positions in either layout, against
    the dense flex definition: the largest error of the output and of each gradient (slopes
    included), relative to the largest expected entry (at least 1)."""
    from attention_jax.flex import flex_attention as dense_flex
    from attention_np.mods import and_masks, causal_mask, document_mask

    rng = np.random.default_rng(3)
    B, L, N, K, H = 2, 8 * P, 4, 2, 8
    q = rng.normal(size=(B, L, N, H)).astype(np.float32)
    k, v = (rng.normal(size=(B, L, K, H)).astype(np.float32) for _ in range(2))
    d_out = rng.normal(size=q.shape).astype(np.float32)
    ids = jnp.asarray(np.sort(rng.integers(0, 3, size=(B, L)), axis=1).astype(np.int32))
    slopes = jnp.asarray(rng.normal(size=N).astype(np.float32) * 0.3)
    mask_mod = and_masks(causal_mask, document_mask(ids))
    result = {}
    for kind, layout in (("Auto", "contiguous"), ("Auto", "zigzag"), ("Explicit", "contiguous")):
        mesh = jax.make_mesh((P,), ("sp",), axis_types=(getattr(AxisType, kind),))
        perm = np.arange(L) if layout == "contiguous" else attention_jax.zigzag_permutation(L, P)
        inverse = np.argsort(perm)

        def ring(slopes, q, k, v):
            score_mod = lambda s, b, h, t, u: s + slopes[h] * (u - t)
            out = attention_jax.ring_attention(q[:, perm], k[:, perm], v[:, perm], mesh=mesh, axis_name="sp",
                                               layout=layout, score_mod=score_mod, mask_mod=mask_mod)
            return out if layout == "contiguous" else out[:, inverse]

        def dense(slopes, q, k, v):
            return dense_flex(q, k, v, score_mod=lambda s, b, h, t, u: s + slopes[h] * (u - t), mask_mod=mask_mod)

        loss = lambda fn: jax.grad(lambda *a: (fn(*a) * d_out).sum(), argnums=(0, 1, 2, 3))
        with jax.set_mesh(mesh), jax.default_matmul_precision("highest"):
            out, grads = jax.jit(ring)(slopes, q, k, v), jax.jit(loss(ring))(slopes, q, k, v)
        expected, expected_grads = dense(slopes, q, k, v), loss(dense)(slopes, q, k, v)
        relative = lambda a, e: float(np.abs(np.asarray(a) - np.asarray(e)).max() / max(1.0, np.abs(np.asarray(e)).max()))
        result[f"{kind} {layout}"] = {"forward": relative(out, expected),
                                      "gradients": max(relative(a, e) for a, e in zip(grads, expected_grads))}
    return result


def nan_rows(p=4, s=3):
    """Which outputs are NaN when key s holds NaN (causal: queries t >= s attend it), for the
    ring and for the single-device function."""
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(1, 8, 2, 4)).astype(np.float32) for _ in range(3))
    k[:, s] = np.nan
    mesh = mesh_of(p)
    sharded = [jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, "sp"))) for x in (q, k, v)]
    ring = attention_jax.ring_attention(*sharded, mesh=mesh, axis_name="sp", is_causal=True)
    dense = attention_jax.scaled_dot_product_attention(q, k, v, is_causal=True)[0]
    return [np.isnan(np.asarray(x)).any(axis=(0, 2, 3)).tolist() for x in (ring, dense)]


def temp_bytes(p, L=4096, N=1, H=64, causal=False):
    """XLA's compiled scratch per device for forward+backward at sequence length L."""
    mesh = mesh_of(p)
    shape = jax.ShapeDtypeStruct((1, L, N, H), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec(None, "sp")))
    loss = lambda q, k, v: attention_jax.ring_attention(q, k, v, mesh=mesh, axis_name="sp", is_causal=causal).sum()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def smoke():
    """2 devices: values and gradients, causal or not, grouped heads, a key-padding mask, the
    output's sharding; a mesh from jax.make_mesh of each axis type."""
    result = {"devices": jax.device_count(), "cases": {}}
    for causal, n, k in ((False, 6, 3), (True, 6, 6)):
        result["cases"][f"P=2 causal={causal} N={n} K={k}"] = errors(2, causal, n, k)
    for kind in ("Explicit", "Auto"):
        result["cases"][f"{kind} 2 mask=True"] = mesh_kind_errors(kind, (2,), True, False)
    json.dump(result, sys.stdout)


def main():
    if SMOKE:
        return smoke()
    result = {"devices": jax.device_count(), "cases": {}, "memory": {}}
    configs = [(2, c, n, k) for c in (False, True) for n, k in ((6, 6), (6, 3))]
    configs += [(p, c, 6, 3) for p in (4, 8) for c in (False, True)]
    for p, causal, n, k in configs:
        result["cases"][f"P={p} causal={causal} N={n} K={k}"] = errors(p, causal, n, k)
    # one query row a device (T = P): each causal block's first key is its last (only) query
    result["one_row"] = {f"P={p} causal": errors(p, True, 2, 1, L=p) for p in (4, 8)}
    result["nan_rows"] = nan_rows()
    result["mesh_kinds"] = {
        f"{kind} {'x'.join(map(str, shape))} mask={with_mask} causal={causal}": mesh_kind_errors(kind, shape, with_mask, causal)
        for kind in ("Explicit", "Auto") for shape in ((4,), (2, 4)) for with_mask, causal in ((False, True), (True, False))
    }
    result["replicated_batch"] = {kind: replicated_batch(kind) for kind in ("Explicit", "Auto")}
    result["property"] = ring_property(int(os.environ.get("RING_PROPERTY_EXAMPLES", "8")))
    result["option_property"] = option_property(int(os.environ.get("RING_PROPERTY_EXAMPLES", "8")))
    result["ulysses_property"] = ulysses_property(int(os.environ.get("RING_PROPERTY_EXAMPLES", "8")))
    result["ulysses_errors"] = ulysses_errors()
    result["mods"] = mods_errors()
    for p in (2, 4, 8):
        result["memory"][p] = temp_bytes(p)
    try:
        attention_jax.ring_attention(*(np.zeros((1, 10, 1, 4), np.float32),) * 3, mesh=mesh_of(4), axis_name="sp")
    except ValueError as e:
        result["uneven"] = str(e)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
