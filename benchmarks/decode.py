"""Decode benchmark: tokens per second with the KV cache vs recomputing attention each step.

    python -m benchmarks.decode            # about 3 minutes on 2 cores
    python -m benchmarks.decode --quick    # L <= 1024

For a sequence position near L (the cache holds L - n tokens, then n more are decoded one at
a time), float32, E=256, N=4 heads of H=64, B in {1, 8}, both jit-compiled, in one run:

- **cached**: ``attention_jax.multi_head_attention_step`` on one new token per step, as the
  body of a ``lax.scan`` (projects one token, attends to the cache);
- **recompute**: at each step, the causal ``attention_jax.multi_head_attention`` over the
  whole (fixed-size) buffer of L tokens, keeping the newest row, which is what decoding
  without a cache costs with static shapes.

Each is timed as the median of ``--repeats`` runs after a compiling run; tokens/s counts
B tokens a step. Writes ``decode.md`` and ``decode.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import attention_jax

E, N, H = 256, 4, 64
LENGTHS = (256, 512, 1024, 2048, 4096)
BATCHES = (1, 8)


def _time(fn, repeats):
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cached(params, x, L, steps):
    """``steps`` single-token steps, from a cache that already holds ``L - steps`` tokens."""
    B = x.shape[0]
    cache = attention_jax.init_kv_cache(B, L, N, H)
    cache = {**cache, "length": jnp.full((B,), L - steps, jnp.int32)}  # keys of the prefix: their values do not change the cost

    @jax.jit
    def run(params, cache, x):
        def body(cache, x_t):
            out, _, cache = attention_jax.multi_head_attention_step(params, x_t[:, None], cache)
            return cache, out[:, 0]

        return jax.lax.scan(body, cache, x[:, L - steps :].swapaxes(0, 1))[1]

    return lambda: run(params, cache, x)


def recompute(params, x, L, steps):
    """``steps`` steps, each the causal attention over all L positions, keeping row t."""

    @jax.jit
    def run(params, x):
        def body(_, t):
            out, _ = attention_jax.multi_head_attention(params, x, is_causal=True)
            return None, jax.lax.dynamic_index_in_dim(out, t, axis=1, keepdims=False)

        return jax.lax.scan(body, None, jnp.arange(L - steps, L))[1]

    return lambda: run(params, x)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="L <= 1024")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)

    params = attention_jax.init_multi_head_params(jax.random.key(0), E, N, H)
    rows = []
    for L in [L for L in LENGTHS if not args.quick or L <= 1024]:
        for B in BATCHES:
            x = jnp.asarray(np.random.default_rng(0).standard_normal((B, L, E), dtype=np.float32))
            steps_cached, steps_recompute = 64, 8 if L >= 2048 else 16
            t_cached = _time(cached(params, x, L, steps_cached), args.repeats)
            t_recompute = _time(recompute(params, x, L, steps_recompute), args.repeats)
            row = {"L": L, "B": B, "cached_tokens_per_s": B * steps_cached / t_cached,
                   "recompute_tokens_per_s": B * steps_recompute / t_recompute}
            row["speedup"] = row["cached_tokens_per_s"] / row["recompute_tokens_per_s"]
            rows.append(row)
            print(f"L={L:5d} B={B}: cached {row['cached_tokens_per_s']:10.0f} tok/s, "
                  f"recompute {row['recompute_tokens_per_s']:8.1f} tok/s, speed-up {row['speedup']:7.1f}x", flush=True)

    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    header = (f"Decode: tokens/s, float32, E={E}, N={N}, H={H}; median of {args.repeats} after compiling; "
              f"jax {jax.__version__} on {jax.default_backend()} ({machine}, {jax.device_count()} device)\n\n")
    table = "| L | B | cached (tok/s) | recompute (tok/s) | speed-up |\n|---|---|---|---|---|\n" + "".join(
        f"| {r['L']} | {r['B']} | {r['cached_tokens_per_s']:,.0f} | {r['recompute_tokens_per_s']:,.1f} | {r['speedup']:,.0f}x |\n"
        for r in rows
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.md").write_text(header + table)
    (out / "decode.json").write_text(json.dumps({"E": E, "N": N, "H": H, "repeats": args.repeats, "rows": rows}, indent=1))
    print("\n" + header + table + f"wrote {out / 'decode.md'} and decode.json")


if __name__ == "__main__":
    main()
