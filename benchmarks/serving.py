"""Serving-layout benchmark: a paged KV cache against a contiguous one, and packed (varlen)
sequences against a padded batch, in one run.

    python -m benchmarks.serving            # about 1 minute on 2 cores
    python -m benchmarks.serving --quick    # decode lengths <= 1024, 3 rounds

What is measured (``docs/serving.md`` explains the layouts):

1. **memory** of the KV cache of a ragged batch: 64 sequences of 16 to 4096 tokens (log-uniform,
   seed 0, the shortest set to 16 and the longest to 4096), K=8 key/value heads of H=128,
   bfloat16, keys and values, one layer. A contiguous cache (``init_kv_cache``) reserves
   ``B x max_length`` positions; a paged one (``init_paged_kv_cache``) ``ceil(length /
   page_size)`` pages a row, for page sizes 16, 64 and 128. Arithmetic from the shapes; the
   same caches are then allocated at K=1, H=8 (same lengths) with ``attention_np``,
   ``attention_jax`` and the NNX module's ``init_cache``, and their ``nbytes`` checked against
   the formula.
2. **decode step** (attention of one new token a row against its cache, the cache already
   written), B in {1, 8}, every row at length L in {256, 1024, 4096}, N=8, K=2, H=64, float32:
   ``attention_jax.fast.paged.paged_attention`` on a shuffled page table (page sizes 16, 64,
   128) and the mirror ``attention_jax.paged_attention`` (gathers every page) against the
   contiguous cache ``(B, L, K, H)`` read the way the NNX module's contiguous decode reads it
   (``attention_jax.dot_product_attention`` with the mask of each row's positions,
   ``implementation=None``) and, as a second contiguous reference, ``jax.nn.dot_product_attention``
   with ``key_value_seq_lengths``. Target: paged / contiguous <= 1.2.
3. **varlen vs padded**: 16 sequences of 16 to 1024 tokens (drawn as in 1.), N=K=4, H=64,
   float32, causal: ``attention_jax.varlen_attention`` on the packed ``(total, N, H)`` tokens
   against ``attention_jax.dot_product_attention`` on the padded ``(16, 1024, N, H)`` batch
   with ``query_seq_lengths``/``key_value_seq_lengths``, forward and forward+backward (the
   gradient of ``sum(out * c)`` for a fixed random ``c``), beside the real/padded ratios of
   tokens and of causal (query, key) pairs and the pairs the kernels' blocks compute.

Every implementation is jit-compiled and checked against its contiguous or padded peer before
it is timed. Timing as ``benchmarks/attention.py``: round-robin, every round takes one
steady-state sample of each implementation of a configuration (one untimed call, then calls
back to back for about 0.2 s); times are medians over rounds and each ratio the median of the
ratios of two times measured in the same round, so a slow spell of a shared machine cuts
both. Writes ``serving.md`` and ``serving.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attention_jax
import attention_np
from attention_jax.fast.chunked.blocks import BlockSizes
from attention_jax.fast.paged import paged_attention as fast_paged_attention
from benchmarks.attention import round_robin

# 1. memory
MEMORY_SEQUENCES, MEMORY_LENGTHS = 64, (16, 4096)
MEMORY_K, MEMORY_H, MEMORY_DTYPE = 8, 128, "bfloat16"
SMALL_K, SMALL_H = 1, 8                   # the caches actually allocated
PAGE_SIZES = (16, 64, 128)
# 2. decode
DECODE_N, DECODE_K, DECODE_H = 8, 2, 64
DECODE_BATCHES, DECODE_LENGTHS = (1, 8), (256, 1024, 4096)
TARGET = 1.2                              # paged / contiguous
# 3. varlen
VARLEN_SEQUENCES, VARLEN_LENGTHS, VARLEN_N, VARLEN_H = 16, (16, 1024), 4, 64


def ragged_lengths(n, shortest, longest, seed=0):
    """``n`` lengths log-uniform in [shortest, longest], the shortest set to ``shortest`` and
    the longest to ``longest`` so that the batch spans the whole range."""
    rng = np.random.default_rng(seed)
    lengths = np.round(np.exp(rng.uniform(np.log(shortest), np.log(longest), n))).astype(np.int64)
    lengths[np.argmin(lengths)], lengths[np.argmax(lengths)] = shortest, longest
    return lengths


def describe_machine():
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = f"{usable} cores" if usable == os.cpu_count() else f"{usable} of {os.cpu_count()} cores"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({platform.machine()}), {cores}, jax {jax.__version__} ({jax.default_backend()})"


def blocking(fn):
    """``fn`` that returns when its result is computed (JAX dispatches asynchronously)."""
    return lambda: jax.block_until_ready(fn())


def same_round_ratio(times, a, b):
    """Median over rounds of ``time(a) / time(b)``."""
    return float(np.median(np.asarray(times[a]) / np.asarray(times[b])))


# --- 1. memory ---------------------------------------------------------------------------------------


def memory(lengths):
    """Bytes of a contiguous and of paged caches for ``lengths``, by the formula at the full
    scale, and the formula against the ``nbytes`` of caches allocated at K=1, H=8."""
    B, longest = len(lengths), int(lengths.max())

    def per_position(K, H):  # a key and a value
        return 2 * K * H * np.dtype(jnp.bfloat16).itemsize

    def pages_needed(page_size):
        return int(sum(math.ceil(int(n) / page_size) for n in lengths))

    full = per_position(MEMORY_K, MEMORY_H)
    rows = [{"layout": "contiguous", "page_size": None, "positions": B * longest, "bytes": B * longest * full}]
    for page_size in PAGE_SIZES:
        pages = pages_needed(page_size)
        table = B * math.ceil(longest / page_size) * 4  # the int32 page table
        rows.append({"layout": "paged", "page_size": page_size, "pages": pages, "positions": pages * page_size,
                     "bytes": pages * page_size * full, "page_table_bytes": table})
    rows.append({"layout": "tokens alone", "page_size": None, "positions": int(lengths.sum()),
                 "bytes": int(lengths.sum()) * full})
    for row in rows:
        row["contiguous_over_this"] = rows[0]["bytes"] / row["bytes"]

    # the caches the code allocates, at a scale that fits: K=1, H=8, the same lengths
    small = per_position(SMALL_K, SMALL_H)
    checks = []
    np_cache = attention_np.init_kv_cache(B, longest, SMALL_K, SMALL_H, dtype=jnp.bfloat16)
    jax_cache = attention_jax.init_kv_cache(B, longest, SMALL_K, SMALL_H, dtype=jnp.bfloat16)
    for name, cache in (("attention_np.init_kv_cache", np_cache), ("attention_jax.init_kv_cache", jax_cache)):
        checks.append({"cache": name, "page_size": None, "nbytes": int(cache["key"].nbytes + cache["value"].nbytes),
                       "formula": B * longest * small})
    for page_size in PAGE_SIZES:
        pages = pages_needed(page_size)
        for name, init in (("attention_np.init_paged_kv_cache", attention_np.init_paged_kv_cache),
                           ("attention_jax.init_paged_kv_cache", attention_jax.init_paged_kv_cache)):
            cache = init(pages, page_size, SMALL_K, SMALL_H, dtype=jnp.bfloat16)
            checks.append({"cache": name, "page_size": page_size,
                           "nbytes": int(cache["key_pages"].nbytes + cache["value_pages"].nbytes),
                           "formula": pages * page_size * small})
    module = attention_jax.nnx.MultiHeadAttention(SMALL_K, SMALL_K * SMALL_H, decode=True, rngs=nnx.Rngs(0))
    E = SMALL_K * SMALL_H
    module.init_cache((B, longest, E), jnp.bfloat16)
    checks.append({"cache": "MultiHeadAttention.init_cache((B, L, E))", "page_size": None,
                   "nbytes": int(module.cached_key[...].nbytes + module.cached_value[...].nbytes),
                   "formula": B * longest * small})
    module.init_cache((B, longest, E), jnp.bfloat16, page_size=16, num_pages=pages_needed(16))
    checks.append({"cache": "MultiHeadAttention.init_cache((B, L, E), page_size=16, num_pages=...)", "page_size": 16,
                   "nbytes": int(module.key_pages[...].nbytes + module.value_pages[...].nbytes),
                   "formula": pages_needed(16) * 16 * small})
    for check in checks:
        assert check["nbytes"] == check["formula"], check
    return {"lengths": lengths.tolist(), "rows": rows, "allocated": checks}


# --- 2. decode ---------------------------------------------------------------------------------------


def contiguous_decode(query, key, value, lengths):
    """One token a row against a contiguous cache ``(B, L, K, H)``, as the NNX module's
    contiguous decode reads it: the mask of the positions each row holds, ``dot_product_attention``
    with ``implementation=None`` (its residual says which queries saw a key)."""
    L = key.shape[1]
    mask = (jnp.arange(L) < lengths[:, None])[:, None, None, :]            # (B, 1, 1, L)
    out, _ = attention_jax.dot_product_attention(query, key, value, mask=mask, return_residual=True)
    return out


def decode_callables(B, L, rng):
    """The implementations of one decode configuration, checked against the contiguous one."""
    N, K, H = DECODE_N, DECODE_K, DECODE_H
    query = jnp.asarray(rng.standard_normal((B, 1, N, H), dtype=np.float32))
    key, value = (jnp.asarray(rng.standard_normal((B, L, K, H), dtype=np.float32)) for _ in range(2))
    lengths = jnp.full((B,), L, jnp.int32)
    contiguous = jax.jit(contiguous_decode)
    jax_nn = jax.jit(lambda q, k, v, n: jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=n))
    fns = {"contiguous": lambda: contiguous(query, key, value, lengths),
           "jax.nn": lambda: jax_nn(query, key, value, lengths)}
    expected = np.asarray(fns["contiguous"]())
    fast, mirror = jax.jit(fast_paged_attention), jax.jit(attention_jax.paged_attention)
    for page_size in PAGE_SIZES:
        # the row's pages anywhere in a pool of exactly the pages needed: a shuffled page table
        pages_a_row = math.ceil(L / page_size)
        page_table = jnp.asarray(rng.permutation(B * pages_a_row).reshape(B, pages_a_row), jnp.int32)
        cache = attention_jax.init_paged_kv_cache(B * pages_a_row, page_size, K, H)
        cache = attention_jax.paged_kv_write(cache, page_table, jnp.zeros(B, jnp.int32), key, value)
        fns[f"paged {page_size}"] = (lambda c, t: lambda: fast(query, c, t, lengths))(cache, page_table)
        if page_size == PAGE_SIZES[0]:
            fns[f"mirror {page_size}"] = (lambda c, t: lambda: mirror(query, c, t, lengths))(cache, page_table)
    for name, fn in fns.items():
        np.testing.assert_allclose(np.asarray(fn()), expected, atol=2e-5, rtol=2e-5, err_msg=name)
    return {name: {"run": blocking(fn)} for name, fn in fns.items()}


def decode(lengths, repeats):
    rows = []
    for L in lengths:
        for B in DECODE_BATCHES:
            times = round_robin(decode_callables(B, L, np.random.default_rng(0)), repeats)
            times = {name: t["run"] for name, t in times.items()}
            row = {"B": B, "L": L, "ms": {name: 1e3 * float(np.median(t)) for name, t in times.items()},
                   "rounds": times}
            row["over_contiguous"] = {n: same_round_ratio(times, n, "contiguous") for n in times if n != "contiguous"}
            row["over_jax_nn"] = {n: same_round_ratio(times, n, "jax.nn") for n in times if n.startswith("paged")}
            row["us_per_page_step"] = {f"paged {p}": 1e3 * row["ms"][f"paged {p}"] / math.ceil(L / p) for p in PAGE_SIZES}
            rows.append(row)
            print(f"  decode B={B} L={L:5d}: " + ", ".join(f"{n} {ms:.2f} ms" for n, ms in row["ms"].items()), flush=True)
    return rows


# --- 3. varlen vs padded -----------------------------------------------------------------------------


def computed_pairs(rows, block):
    """The (query, key) pairs the blocked causal kernels compute on a batch of packed or padded
    rows: ``block x block`` for each block of a row that holds a causal pair of one sequence
    (each batch row and head visits its own blocks: ``attention_jax.fast.chunked.kernels.
    each_head``). ``rows``: the sequence id of each position of each row, -1 for padding."""
    visited = 0
    for ids in rows:
        n = -(-len(ids) // block)
        ids = np.pad(np.asarray(ids), (0, n * block - len(ids)), constant_values=-1).reshape(n, block)
        seqs = [set(row[row >= 0].tolist()) for row in ids]
        visited += sum(bool(seqs[i] & seqs[j]) for i in range(n) for j in range(i + 1))
    return visited * block * block


def varlen(repeats):
    lengths = ragged_lengths(VARLEN_SEQUENCES, *VARLEN_LENGTHS)
    B, L, N, H = len(lengths), int(lengths.max()), VARLEN_N, VARLEN_H
    cu_seqlens = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    total = int(cu_seqlens[-1])
    rng = np.random.default_rng(0)
    query, key, value, cotangent = (rng.standard_normal((total, N, H), dtype=np.float32) for _ in range(4))

    def padded(x):  # (total, N, H) -> (B, L, N, H), zeros after each sequence
        out = np.zeros((B, L, N, H), np.float32)
        for b in range(B):
            out[b, :lengths[b]] = x[cu_seqlens[b]:cu_seqlens[b + 1]]
        return jnp.asarray(out)

    packed_args = tuple(jnp.asarray(x) for x in (query, key, value)) + (jnp.asarray(cu_seqlens),)
    padded_args = tuple(padded(x) for x in (query, key, value)) + (jnp.asarray(lengths, jnp.int32),)
    packed_c, padded_c = jnp.asarray(cotangent), padded(cotangent)

    def packed_attention(q, k, v, cu):  # one array for both: the lengths agree
        return attention_jax.varlen_attention(q, k, v, cu, cu, is_causal=True)

    def padded_attention(q, k, v, n):
        return attention_jax.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=n, key_value_seq_lengths=n)

    def grad(fn, c):
        return jax.jit(jax.grad(lambda q, k, v, x: jnp.sum(fn(q, k, v, x) * c), argnums=(0, 1, 2)))

    forward = {"varlen": jax.jit(packed_attention), "padded": jax.jit(padded_attention)}
    backward = {"varlen": grad(packed_attention, packed_c), "padded": grad(padded_attention, padded_c)}
    args = {"varlen": packed_args, "padded": padded_args}
    # the same numbers: the padded batch's real rows are the packed rows
    np.testing.assert_allclose(padded(np.asarray(forward["varlen"](*packed_args))), forward["padded"](*padded_args),
                               atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(padded(np.asarray(backward["varlen"](*packed_args)[0])),
                               backward["padded"](*padded_args)[0], atol=2e-5, rtol=2e-5)
    callables = {name: {"forward": blocking(lambda f=forward[name], a=args[name]: f(*a)),
                        "forward_backward": blocking(lambda f=backward[name], a=args[name]: f(*a))}
                 for name in forward}
    times = round_robin(callables, repeats)

    pairs = int(sum(n * (n + 1) // 2 for n in lengths))                  # causal pairs of the sequences
    packed_block = BlockSizes.get_default().blocks(True, total, total, segments=True)[0]
    padded_block = BlockSizes.get_default().blocks(True, L, L)[0]
    packed_ids = np.repeat(np.arange(B), lengths)
    result = {
        "lengths": lengths.tolist(), "N": N, "H": H, "real_tokens": total, "padded_tokens": B * L,
        "real_pairs": pairs, "padded_pairs": B * L * (L + 1) // 2,
        "blocks": {"varlen": packed_block, "padded": padded_block},
        "computed_pairs": {
            "varlen": computed_pairs([packed_ids], packed_block),
            "padded": computed_pairs([np.where(np.arange(L) < n, b, -1) for b, n in enumerate(lengths)], padded_block),
        },
        "ms": {name: {mode: 1e3 * float(np.median(t)) for mode, t in modes.items()} for name, modes in times.items()},
        "varlen_over_padded": {mode: float(np.median(np.asarray(times["varlen"][mode]) / np.asarray(times["padded"][mode])))
                               for mode in ("forward", "forward_backward")},
        "rounds": times,
    }
    print(f"  varlen: {result['ms']}", flush=True)
    return result


# --- the report --------------------------------------------------------------------------------------


def mib(x):
    return f"{x / 2**20:,.1f} MiB" if x < 2**30 else f"{x / 2**30:,.2f} GiB"


def render(report, args):
    mem, dec, var = report["memory"], report["decode"], report["varlen"]
    lengths = np.asarray(mem["lengths"])
    lines = [f"## Serving layouts ({report['machine']})", "",
             f"{args.repeats} round-robin rounds after compilation; times are medians, ratios the medians of "
             "same-round ratios. `python -m benchmarks.serving` writes this file. Load average (1 min) "
             f"{report['load_average_start']:.1f} at the start, {report['load_average_end']:.1f} at the end "
             "(other jobs share the machine).", "",
             f"### KV-cache memory: {len(lengths)} sequences of {lengths.min()} to {lengths.max()} tokens",  "",
             f"Log-uniform lengths (seed 0; median {int(np.median(lengths))}, mean {lengths.mean():.0f}, "
             f"{lengths.sum():,} tokens), K={MEMORY_K} key/value heads of H={MEMORY_H}, {MEMORY_DTYPE}, keys and values "
             "of one layer. A contiguous cache reserves B x max_length positions; a paged cache ceil(length / "
             "page_size) pages a row (plus an int32 page table).", "",
             "| layout | positions held | bytes | contiguous / this |", "|---|---|---|---|"]
    for row in mem["rows"]:
        name = row["layout"] + (f", pages of {row['page_size']} ({row['pages']:,} pages; page table "
                                f"{row['page_table_bytes'] / 1024:.0f} KiB)" if row["page_size"] else "")
        lines.append(f"| {name} | {row['positions']:,} | {mib(row['bytes'])} | {row['contiguous_over_this']:.2f}x |")
    lines += ["", f"The formula is what the code allocates: the same caches at K={SMALL_K}, H={SMALL_H} (same lengths), "
              "`nbytes` of keys plus values:", "", "| cache | page size | nbytes | formula |", "|---|---|---|---|"]
    for check in mem["allocated"]:
        lines.append(f"| `{check['cache']}` | {check['page_size'] or '-'} | {check['nbytes']:,} | {check['formula']:,} |")

    lines += ["", "### Decode step: paged vs contiguous, every row at length L",
              "", f"One new token a row attends its cache (already written), N={DECODE_N}, K={DECODE_K}, H={DECODE_H}, "
              "float32. **contiguous**: the cache `(B, L, K, H)` read as the NNX module's contiguous decode reads it "
              "(`dot_product_attention` with the mask of each row's positions); **jax.nn**: "
              "`jax.nn.dot_product_attention(..., key_value_seq_lengths=)` on the same cache; **paged p**: "
              "`attention_jax.fast.paged.paged_attention` on a shuffled page table of pages of p; **mirror 16**: "
              "`attention_jax.paged_attention` (gathers every page). Times in ms:", "",
              "| B | L | contiguous | jax.nn | paged 16 | paged 64 | paged 128 | mirror 16 |", "|---|---|---|---|---|---|---|---|"]
    names = ["contiguous", "jax.nn"] + [f"paged {p}" for p in PAGE_SIZES] + [f"mirror {PAGE_SIZES[0]}"]
    for row in dec:
        lines.append(f"| {row['B']} | {row['L']} | " + " | ".join(f"{row['ms'][n]:.3f}" for n in names) + " |")
    lines += ["", f"Ratios (same round; target paged / contiguous <= {TARGET}) and the time per page step "
              "(the paged kernel's time over its ceil(L / p) steps):", "",
              "| B | L | " + " | ".join(f"paged {p} / contiguous" for p in PAGE_SIZES) + " | "
              + " | ".join(f"paged {p} / jax.nn" for p in PAGE_SIZES) + " | "
              + " | ".join(f"us a step, p={p}" for p in PAGE_SIZES) + " |", "|" + "---|" * (2 + 3 * len(PAGE_SIZES))]
    for row in dec:
        cells = [f"{row['over_contiguous'][f'paged {p}']:.2f}" + (" (over)" if row["over_contiguous"][f"paged {p}"] > TARGET else "")
                 for p in PAGE_SIZES]
        cells += [f"{row['over_jax_nn'][f'paged {p}']:.2f}" for p in PAGE_SIZES]
        cells += [f"{row['us_per_page_step'][f'paged {p}']:.1f}" for p in PAGE_SIZES]
        lines.append(f"| {row['B']} | {row['L']} | " + " | ".join(cells) + " |")

    v = var
    vl = np.asarray(v["lengths"])
    lines += ["", f"### Packed (varlen) vs padded: {len(vl)} sequences of {vl.min()} to {vl.max()} tokens, causal", "",
              f"N={v['N']}, H={v['H']}, float32; lengths {sorted(v['lengths'])}. **varlen**: `attention_jax.varlen_attention` "
              f"on the packed `({v['real_tokens']}, N, H)` tokens; **padded**: `attention_jax.dot_product_attention` on "
              f"`({len(vl)}, {vl.max()}, N, H)` with `query_seq_lengths`/`key_value_seq_lengths`. "
              "Forward+backward: the gradient of `sum(out * c)`.", "",
              "| | varlen | padded | varlen / padded |", "|---|---|---|---|",
              f"| tokens | {v['real_tokens']:,} | {v['padded_tokens']:,} | {v['real_tokens'] / v['padded_tokens']:.2f} |",
              f"| causal (query, key) pairs | {v['real_pairs']:,} | {v['padded_pairs']:,} | "
              f"{v['real_pairs'] / v['padded_pairs']:.2f} |",
              f"| pairs the blocks compute (blocks of {v['blocks']['varlen']} / {v['blocks']['padded']}) | "
              f"{v['computed_pairs']['varlen']:,} | {v['computed_pairs']['padded']:,} | "
              f"{v['computed_pairs']['varlen'] / v['computed_pairs']['padded']:.2f} |"]
    for mode, label in (("forward", "forward (ms)"), ("forward_backward", "forward+backward (ms)")):
        lines.append(f"| {label} | {v['ms']['varlen'][mode]:.1f} | {v['ms']['padded'][mode]:.1f} | "
                     f"{v['varlen_over_padded'][mode]:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="decode lengths <= 1024, 3 rounds")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 5; 3 with --quick)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 5)

    machine = describe_machine()
    print(f"# serving benchmark, {args.repeats} rounds; {machine}", flush=True)
    report = {"machine": machine, "repeats": args.repeats, "load_average_start": os.getloadavg()[0]}
    report["memory"] = memory(ragged_lengths(MEMORY_SEQUENCES, *MEMORY_LENGTHS))
    report["decode"] = decode([L for L in DECODE_LENGTHS if not args.quick or L <= 1024], args.repeats)
    report["varlen"] = varlen(args.repeats)
    report["load_average_end"] = os.getloadavg()[0]

    text = render(report, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.md").write_text(text)
    (out / "serving.json").write_text(json.dumps(report, indent=1))
    print("\n" + text + f"wrote {out / 'serving.md'} and serving.json")


if __name__ == "__main__":
    main()
