"""Context parallelism on simulated CPU devices: the ring in both layouts and Ulysses.

    python -m benchmarks.context_parallel            # about 5 minutes on 2 cores
    python -m benchmarks.context_parallel --quick    # P in {2, 4}, L = 4096 for memory

One process with 8 simulated CPU devices (``--xla_force_host_platform_device_count``). For
causal attention, float32, B = 1, N = 8 heads of H = 64:

- **blocks**: for each device, the kernel blocks (query block x key block, the chunked
  kernels' 512 x 512 up to L/P = 2048) it computes over the whole ring, counted from the same
  block states the kernels read; max / mean over devices is the imbalance (1.0: balanced);
- **time**: forward+backward of ``ring_attention`` with ``layout="zigzag"`` over
  ``"contiguous"``, and of ``ulysses_attention`` (chunked path inside) over the contiguous
  ring, as the median of the ratios of times measured in the same round (``--repeats``
  rounds). Simulated devices share the machine's cores, so a ratio measures total work and
  collectives, not the wall time of P real devices, where the slowest device sets the pace;
- **memory**: XLA's compiled scratch per device for forward+backward at L = 16384.

Writes ``context_parallel.md`` and ``context_parallel.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import attention_jax  # noqa: E402
from attention_jax.fast.chunked.blocks import BlockSizes  # noqa: E402
from attention_jax.fast.chunked.config import Config  # noqa: E402
from attention_jax.fast.chunked.layout import make_rows  # noqa: E402
from attention_jax.fast.chunked.sparse import EMPTY, option_states  # noqa: E402
from attention_jax.parallel.ring import _padded_positions  # noqa: E402

N, H = 8, 64


def block_counts(L, P, layout):
    """The non-empty kernel blocks each device computes over the P steps of a causal ring."""
    Lb = L // P
    qc, kc = BlockSizes.get_default().blocks(True, Lb, Lb)
    qc, kc = min(qc, Lb), min(kc, Lb)
    cfg = Config(is_causal=True, query_chunk=qc, key_chunk=kc, T=Lb, S=Lb, G=1)
    nq, nk = -(-Lb // qc), -(-Lb // kc)
    counts = []
    for i in range(P):
        rows = make_rows(cfg, 1, 1)._replace(qpos=_padded_positions(i, nq * qc, Lb, P, layout))
        total = 0
        for j in range(P):
            states = option_states(rows._replace(kpos=_padded_positions(j, nk * kc, Lb, P, layout)), cfg, nq, nk)
            total += int((np.asarray(states) != EMPTY).sum())
        counts.append(total)
    return counts


def step(fn, mesh, L):
    sharding = NamedSharding(mesh, PartitionSpec(None, "sp"))
    x = jax.device_put(jnp.asarray(np.random.default_rng(0).normal(size=(1, L, N, H)), jnp.float32), sharding)
    loss = jax.jit(jax.grad(lambda q, k, v: fn(q, k, v).sum(), argnums=(0, 1, 2)))
    jax.block_until_ready(loss(x, x, x))
    return lambda: jax.block_until_ready(loss(x, x, x))


def scratch(fn, mesh, L):
    shape = jax.ShapeDtypeStruct((1, L, N, H), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec(None, "sp")))
    compiled = jax.jit(jax.grad(lambda q, k, v: fn(q, k, v).sum(), argnums=(0, 1, 2))).lower(shape, shape, shape).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def calls(mesh):
    ring = lambda layout: (lambda q, k, v: attention_jax.ring_attention(q, k, v, mesh=mesh, axis_name="sp",
                                                                       is_causal=True, layout=layout))
    ulysses = lambda q, k, v: attention_jax.ulysses_attention(q, k, v, mesh=mesh, axis_name="sp", is_causal=True,
                                                             implementation="chunked")
    return {"ring contiguous": ring("contiguous"), "ring zigzag": ring("zigzag"), "ulysses": ulysses}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.context_parallel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    devices = (2, 4) if args.quick else (2, 4, 8)
    L_time, L_memory = 4096, 4096 if args.quick else 16384
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "jax": jax.__version__, "blocks": {}, "time": {}, "memory": {}}
    for P in devices:
        mesh = jax.make_mesh((P,), ("sp",))
        for layout in ("contiguous", "zigzag"):
            counts = block_counts(L_memory, P, layout)
            result["blocks"][f"P={P} {layout}"] = {"per_device": counts, "max_over_mean": max(counts) / np.mean(counts)}
        fns = calls(mesh)
        runs = {name: step(fn, mesh, L_time) for name, fn in fns.items()}
        samples = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
        base = samples["ring contiguous"]
        result["time"][f"P={P}"] = {
            "ring contiguous ms": 1e3 * statistics.median(base),
            "zigzag / contiguous": statistics.median(z / c for z, c in zip(samples["ring zigzag"], base)),
            "ulysses / ring contiguous": statistics.median(u / c for u, c in zip(samples["ulysses"], base)),
        }
        result["memory"][f"P={P}"] = {name: scratch(fn, mesh, L_memory) for name, fn in fns.items()}
        print(P, result["blocks"], result["time"][f"P={P}"], result["memory"][f"P={P}"], file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "context_parallel.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Context parallelism (simulated CPU devices; {result['machine']}; jax {result['jax']})", "",
             f"Causal, float32, B = 1, N = {N}, H = {H}. Blocks and memory at L = {L_memory}, time at L = {L_time} "
             f"(forward+backward, median of {args.repeats} same-round ratios).", "",
             "| devices | layout | kernel blocks per device | max / mean |", "|---|---|---|---|"]
    for key, value in result["blocks"].items():
        P, layout = key.split()
        lines.append(f"| {P[2:]} | {layout} | {value['per_device']} | {value['max_over_mean']:.2f} |")
    lines += ["", "| devices | ring contiguous (ms) | zigzag / contiguous | Ulysses / ring contiguous |", "|---|---|---|---|"]
    for key, value in result["time"].items():
        lines.append(f"| {key[2:]} | {value['ring contiguous ms']:.0f} | {value['zigzag / contiguous']:.2f} | "
                     f"{value['ulysses / ring contiguous']:.2f} |")
    lines += ["", f"Compiled scratch per device, forward+backward, L = {L_memory} (MB):", "",
              "| devices | ring contiguous | ring zigzag | Ulysses |", "|---|---|---|---|"]
    for key, value in result["memory"].items():
        lines.append(f"| {key[2:]} | " + " | ".join(f"{value[name] / 2**20:.1f}" for name in
                                                    ("ring contiguous", "ring zigzag", "ulysses")) + " |")
    (out / "context_parallel.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
