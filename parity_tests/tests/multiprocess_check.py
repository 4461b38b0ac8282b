"""Run by test_multiprocess.py as two OS processes of two CPU devices each, joined by
``jax.distributed.initialize`` on loopback with gloo collectives: the ring (both layouts),
Ulysses and the NNX module on a mesh spanning both processes, against the single-device
functions, values and gradients. ``python multiprocess_check.py <process id> <port>``;
process 0 prints the errors as JSON."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import attention_jax  # noqa: E402

B, L, N, K, H = 2, 32, 4, 2, 8
rng = np.random.default_rng(0)  # the same draws in both processes: every process knows the global inputs
q = rng.normal(size=(B, L, N, H)).astype(np.float32)
k, v = (rng.normal(size=(B, L, K, H)).astype(np.float32) for _ in range(2))
d_out = rng.normal(size=q.shape).astype(np.float32)
ids = np.sort(rng.integers(0, 3, size=(B, L)), axis=1).astype(np.int32)  # int64 arguments trip multi-process jax
mesh = jax.make_mesh((jax.device_count(),), ("sp",))


def global_array(x, spec):
    """``x`` (known to every process) as one array over the mesh, each process holding its shards."""
    sharding = NamedSharding(mesh, spec)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def gathered(x):
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def errors(fn, reference, inputs, spec, cotangent):
    """Largest |difference| of the outputs and of the gradients of ``sum(out * cotangent)``."""
    def loss(fn):
        return jax.grad(lambda c, *a: (fn(*a) * c).sum(), argnums=tuple(range(1, len(inputs) + 1)))

    sharded = [global_array(x, spec) for x in (cotangent, *inputs)]
    with jax.set_mesh(mesh):
        out, grads = jax.jit(fn)(*sharded[1:]), jax.jit(loss(fn))(*sharded)
    expected, expected_grads = reference(*inputs), loss(reference)(cotangent, *inputs)
    return {"forward": float(np.abs(gathered(out) - np.asarray(expected)).max()),
            "gradients": max(float(np.abs(gathered(g) - np.asarray(e)).max()) for g, e in zip(grads, expected_grads))}


def dense(**options):
    return lambda q, k, v: attention_jax.dot_product_attention(q, k, v, implementation="dense", **options)


seq = PartitionSpec(None, "sp")
result = {"processes": jax.process_count(), "devices": jax.device_count()}
options = dict(is_causal=True, local_window_size=(9, 0), query_segment_ids=ids)
result["ring"] = errors(lambda q, k, v: attention_jax.ring_attention(q, k, v, mesh=mesh, axis_name="sp", **options),
                        dense(**options), (q, k, v), seq, d_out)
perm = attention_jax.zigzag_permutation(L, jax.device_count())
inverse = np.argsort(perm)
zig_options = dict(options, query_segment_ids=ids[:, perm])
result["ring zigzag"] = errors(
    lambda q, k, v: attention_jax.ring_attention(q, k, v, mesh=mesh, axis_name="sp", layout="zigzag", **zig_options),
    lambda q, k, v: dense(**options)(q[:, inverse], k[:, inverse], v[:, inverse])[:, perm],
    (q[:, perm], k[:, perm], v[:, perm]), seq, d_out[:, perm])
sinks = rng.normal(size=N).astype(np.float32)
result["ulysses"] = errors(
    lambda q, k, v: attention_jax.ulysses_attention(q, k, v, mesh=mesh, axis_name="sp", sinks=sinks, **options),
    dense(sinks=sinks, **options), (q, k, v), seq, d_out)
# the module on inputs split over batch and sequence, its parameters replicated
module = attention_jax.nnx.MultiHeadAttention(N, N * H, qkv_features=N * H, num_kv_heads=K, decode=False,
                                               rngs=nnx.Rngs(0))
x = rng.normal(size=(4, L, N * H)).astype(np.float32)  # a batch row a device
result["module"] = errors(lambda x: module(x, is_causal=True), lambda x: module(x, is_causal=True), (x,),
                          PartitionSpec("sp"), rng.normal(size=x.shape).astype(np.float32))
if process_id == 0:
    print(json.dumps(result))
