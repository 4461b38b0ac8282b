"""Context parallelism across processes: ring attention over every device of every process.

    python -m examples.many_hosts                        # two processes on this machine
    python -m examples.many_hosts --process-id 0 --num-processes 2 --coordinator 10.0.0.1:1234   # on host 0
    python -m examples.many_hosts --process-id 1 --num-processes 2 --coordinator 10.0.0.1:1234   # on host 1

JAX's own distributed runtime joins the processes (``jax.distributed.initialize``); the mesh
then spans every device of every process, and each process holds the shards of the inputs
that live on its devices. The attention call is the same as on one machine: on a cluster
only the coordinator address and the process count change (and the devices: GPUs or TPUs,
not the simulated CPU devices used here, where gloo carries the collectives). Run without
arguments, the script starts two copies of itself on this machine (two CPU devices each)
on a free loopback port, and process 0 prints the largest difference from one device's
answer, in values and in gradients.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys


def run(process_id, num_processes, coordinator, local_devices):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={local_devices}"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)

    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    import attention_jax

    mesh = jax.make_mesh((jax.device_count(),), ("sp",))    # every device of every process on the ring
    rng = np.random.default_rng(0)                          # the same global inputs in every process
    q, k, v = (rng.normal(size=(2, 64, 4, 16)).astype(np.float32) for _ in range(3))
    sharding = NamedSharding(mesh, PartitionSpec(None, "sp"))  # the sequence split over the ring

    def shard(x):  # each process builds the shards on its own devices
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def loss(q, k, v):
        return attention_jax.ring_attention(q, k, v, mesh=mesh, axis_name="sp", is_causal=True).sum()

    with jax.set_mesh(mesh):
        out = jax.jit(lambda q, k, v: attention_jax.ring_attention(q, k, v, mesh=mesh, axis_name="sp",
                                                                    is_causal=True))(*map(shard, (q, k, v)))
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*map(shard, (q, k, v)))
    out, grads = (multihost_utils.process_allgather(x, tiled=True) for x in (out, grads))
    expected = attention_jax.dot_product_attention(q, k, v, is_causal=True)
    expected_grads = jax.grad(lambda q, k, v: attention_jax.dot_product_attention(q, k, v, is_causal=True).sum(),
                              argnums=(0, 1, 2))(q, k, v)
    if process_id == 0:
        error = float(np.abs(np.asarray(out) - np.asarray(expected)).max())
        grad_error = max(float(np.abs(np.asarray(g) - np.asarray(e)).max()) for g, e in zip(grads, expected_grads))
        print(f"{jax.process_count()} processes, {jax.device_count()} devices: ring attention equals one device "
              f"within {error:.1e} (values), {grad_error:.1e} (gradients)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m examples.many_hosts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--coordinator", help="host:port of process 0")
    parser.add_argument("--local-devices", type=int, default=2, help="simulated CPU devices per process")
    args = parser.parse_args(argv)
    if args.process_id is not None:
        return run(args.process_id, args.num_processes, args.coordinator, args.local_devices)
    with socket.socket() as s:  # a free loopback port for the coordinator
        s.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{s.getsockname()[1]}"
    workers = [subprocess.Popen([sys.executable, "-m", "examples.many_hosts", "--process-id", str(i),
                                 "--num-processes", str(args.num_processes), "--coordinator", coordinator,
                                 "--local-devices", str(args.local_devices)]) for i in range(args.num_processes)]
    codes = [w.wait(timeout=600) for w in workers]
    if any(codes):
        sys.exit(f"a process failed: exit codes {codes}")


if __name__ == "__main__":
    main()
