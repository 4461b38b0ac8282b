"""Run by test_sharding.py in a fresh process with 4 simulated CPU devices (XLA reads the
device count once, at start-up): the attention functions on inputs sharded over batch and
heads, on 2 x 2 meshes with Explicit axes (jax.make_mesh's default) and Auto axes, under
jit, and chunked_attention inside jax.shard_map (check_vma on), against the unsharded
call, as JSON."""

import json
import os
import re
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import attention_jax  # noqa: E402
import attention_jax.nnx  # noqa: E402

jax.config.update("jax_enable_x64", False)
B, T, N, K, H, E = 4, 16, 4, 2, 8, 12
BLOCKS = {"block_sizes": (8, 8)}  # 2 x 2 blocks: the loops run
LAYOUTS = {"batch": P("data"), "heads": P(None, None, "heads"), "batch+heads": P("data", None, "heads")}
GATHERS = re.compile(r"\b(all-gather|all-to-all|collective-permute)(-start)?\(")


def error(got, expected):
    """max |got - expected| over all leaves, relative to the largest expected magnitude (>= 1)."""
    pairs = list(zip(jax.tree.leaves(got), jax.tree.leaves(expected)))
    scale = max([1.0] + [float(jnp.abs(b).max()) for _, b in pairs if b.size])
    return max(float(jnp.abs(a - b).max()) for a, b in pairs if b.size) / scale


def attention_fns(rng):
    lengths = jnp.asarray([T, 11, 5, T])
    bias = rng.normal(size=(T, T)).astype(np.float32)
    mask = rng.random((B, 1, T, T)) < 0.8
    return {
        "scaled_dot_product_attention": lambda q, k, v: attention_jax.scaled_dot_product_attention(
            q, k, v, mask=mask, is_causal=True, key_value_seq_lengths=lengths)[0],
        "chunked_attention": lambda q, k, v: attention_jax.chunked_attention(q, k, v, bias=bias, **BLOCKS),
        "chunked_attention causal mask lengths": lambda q, k, v: attention_jax.chunked_attention(
            q, k, v, is_causal=True, mask=mask, key_value_seq_lengths=lengths, **BLOCKS),
        "dot_product_attention": lambda q, k, v: attention_jax.dot_product_attention(q, k, v, is_causal=True),
        "dot_product_attention chunked dropout": lambda q, k, v: attention_jax.dot_product_attention(
            q, k, v, implementation="chunked", dropout_rate=0.25, dropout_rng=3),
    }


_REFERENCES = {}


def check(fn, args, placed, cotangent, reference=None, name=None):
    """fn on the placed (sharded) args against ``reference`` (default fn) on the plain ones:
    forward and vjp under jit, and the collectives that gather in the compiled programs.
    ``name`` caches the reference's results (the same plain args for every layout)."""
    def vjp_of(f):
        return jax.jit(lambda *a: jax.vjp(f, *a)[1](cotangent))
    reference = fn if reference is None else reference
    fwd, bwd = (f.lower(*placed).compile() for f in (jax.jit(fn), vjp_of(fn)))
    out, got = fwd(*placed), bwd(*placed)
    if name not in _REFERENCES or name is None:
        _REFERENCES[name] = (jax.jit(reference)(*args), vjp_of(reference)(*args))
    expected, expected_grads = _REFERENCES[name]
    hlo = fwd.as_text() + bwd.as_text()
    return {
        "forward": error(out, expected),
        "gradients": error(got, expected_grads),
        "out_sharding": str(jax.tree.leaves(out)[0].sharding.spec),
        "gathers": sorted(set(m.group(1) for m in GATHERS.finditer(hlo))),
        "finite": bool(all(jnp.isfinite(g).all() for g in jax.tree.leaves(got))),
    }


def attention_cases(mesh, rng, layouts):
    """``layouts``: {layout: the names of attention_fns to run on it (None: all)}."""
    q = rng.normal(size=(B, T, N, H)).astype(np.float32)
    k, v = (rng.normal(size=(B, T, K, H)).astype(np.float32) for _ in range(2))
    cotangent = rng.normal(size=q.shape).astype(np.float32)
    cases, fns = {}, attention_fns(rng)
    _REFERENCES.clear()
    for layout, spec in LAYOUTS.items():
        if layout not in layouts:
            continue
        placed = [jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v)]
        for name, fn in fns.items():
            if layouts[layout] is not None and name not in layouts[layout]:
                continue
            cases[f"{name} | {layout}"] = check(fn, (q, k, v), placed, cotangent, name=name)
    return cases


def head_specs(path):
    """Megatron-style: projections split over heads, the output projection over its input heads.
    ``path``: the names leading to a parameter (an nnx state's path ends in the Param's own)."""
    layer = path[0]
    leaf = "kernel" if "kernel" in path else "bias"
    if layer in ("query", "key", "value"):
        return P(None, "heads") if leaf == "kernel" else P("heads")
    return P("heads") if (layer, leaf) == ("out", "kernel") else P()


def multi_head_cases(mesh, rng, nnx_module=True):
    x = rng.normal(size=(B, T, E)).astype(np.float32)
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    cotangent = rng.normal(size=x.shape).astype(np.float32)
    mask = rng.random((B, 1, T, T)) < 0.8
    cases = {}
    params = attention_jax.init_multi_head_params(jax.random.key(0), E, N, H, num_kv_heads=K)
    sharded = {layer: {leaf: jax.device_put(a, NamedSharding(mesh, head_specs((layer, leaf)))) for leaf, a in d.items()}
               for layer, d in params.items()}
    fn = lambda p, x: attention_jax.multi_head_attention(p, x, mask=mask, is_causal=True)[0]
    cases["multi_head_attention | batch+heads"] = check(fn, (params, x), (sharded, xs), cotangent)
    for implementation in ("dense", "chunked") if nnx_module else ():
        module = attention_jax.nnx.MultiHeadAttention(N, E, qkv_features=N * H, num_kv_heads=K, decode=False, rngs=nnx.Rngs(0))
        graph, state = nnx.split(module)
        placed = jax.tree_util.tree_map_with_path(
            lambda path, a: jax.device_put(a, NamedSharding(mesh, head_specs([getattr(p, "key", getattr(p, "name", None)) for p in path]))),
            state)

        def call(state, x, implementation=implementation):
            return nnx.merge(graph, state)(x, is_causal=True, implementation=implementation, deterministic=True)
        cases[f"nnx.MultiHeadAttention {implementation} | batch+heads"] = check(call, (state, x), (placed, xs), cotangent)
        # a key-padding mask sharded over the batch, as a padded data-parallel batch brings it
        padding = np.arange(T)[None, :] < np.array([T, 11, 5, 1])[:, None]                     # (B, S)
        key_padding = jax.device_put(padding[:, None, None, :], NamedSharding(mesh, P("data")))

        def padded(state, x, mask, implementation=implementation):
            return nnx.merge(graph, state)(x, mask=mask, implementation=implementation, deterministic=True)
        cases[f"nnx.MultiHeadAttention {implementation} key padding | batch+heads"] = check(
            lambda state, x: padded(state, x, key_padding), (state, x), (placed, xs), cotangent,
            reference=lambda state, x: padded(state, x, padding[:, None, None, :]))
    return cases


def shard_map_cases(mesh, rng):
    q = rng.normal(size=(B, T, N, H)).astype(np.float32)
    k, v = (rng.normal(size=(B, T, K, H)).astype(np.float32) for _ in range(2))
    bias = rng.normal(size=(T, T)).astype(np.float32)
    cotangent = rng.normal(size=q.shape).astype(np.float32)
    spec = P("data", None, "heads")
    placed = [jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v)]
    cases = {}
    for causal in (False, True):
        fn = lambda q, k, v, causal=causal: attention_jax.chunked_attention(q, k, v, bias=bias, is_causal=causal, **BLOCKS)
        mapped = jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)  # check_vma=True: the default
        cases[f"shard_map(chunked_attention) causal={causal}"] = check(mapped, (q, k, v), placed, cotangent, fn)
    # key/value replicated over "heads" while the query heads are split along it
    fn = lambda q, k, v: attention_jax.chunked_attention(q, k, v, **BLOCKS)

    def local(q, k, v):  # this device's query heads and the key/value heads they read
        first = jax.lax.axis_index("heads") * (K // 2)
        k, v = (jax.lax.dynamic_slice_in_dim(x, first, K // 2, axis=2) for x in (k, v))
        return fn(q, k, v)
    mapped = jax.shard_map(local, mesh=mesh, in_specs=(spec, P("data"), P("data")), out_specs=spec)
    kv = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (k, v)]
    cases["shard_map(chunked_attention) replicated key/value"] = check(mapped, (q, k, v), (placed[0], *kv), cotangent, fn)
    return cases


def large_block_gathers(mesh):
    """The gathering collectives compiled for chunked_attention with 256 x 256 blocks, where a
    single device would run one (batch, head) at a time (``_each_head``); compiled only."""
    spec = jax.ShapeDtypeStruct((2, 512, 2, 16), jnp.float32, sharding=NamedSharding(mesh, P("data", None, "heads")))
    fn = lambda q, k, v: attention_jax.chunked_attention(q, k, v, block_sizes=(256, 256))
    grads = lambda q, k, v: jax.vjp(fn, q, k, v)[1](q)
    hlo = "".join(jax.jit(f).lower(spec, spec, spec).compile().as_text() for f in (fn, grads))
    return sorted(set(m.group(1) for m in GATHERS.finditer(hlo)))


def main():
    result = {"devices": jax.device_count(), "jax": jax.__version__, "meshes": {}, "large_blocks": {}}
    for kind in ("Explicit", "Auto"):
        mesh = jax.make_mesh((2, 2), ("data", "heads"), axis_types=(getattr(AxisType, kind),) * 2)
        rng = np.random.default_rng(0)
        # every function on batch+heads; heads alone for the two cores; Auto: a smaller subset
        # (each case compiles four programs: the test's time is compile time)
        explicit = kind == "Explicit"
        core = ["scaled_dot_product_attention", "chunked_attention"]
        layouts = {"batch+heads": None, "heads": core} if explicit else {"batch+heads": core}
        cases = attention_cases(mesh, rng, layouts)
        cases.update(multi_head_cases(mesh, rng, nnx_module=explicit))
        if explicit:
            cases.update(shard_map_cases(mesh, rng))
        result["meshes"][kind] = cases
        result["large_blocks"][kind] = large_block_gathers(mesh)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
