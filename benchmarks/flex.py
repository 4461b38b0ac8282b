"""Programmable attention benchmark: what block skipping and the mods cost, as same-run ratios.

    python -m benchmarks.flex                 # L = 4096, B = 1, N = 8, H = 64 (a few minutes on 2 cores)
    python -m benchmarks.flex --length 2048 --repeats 3

Rows, each timed forward and forward+backward (the gradient of ``sum(out * c)``), round-robin
as :mod:`benchmarks.attention` does (the median over rounds of same-round ratios):

- ``causal``: ``attention_jax.chunked_attention(is_causal=True)``, the tuned causal path: the
  baseline;
- ``documents``: ``attention_jax.flex_attention`` with 8 packed documents of L / 8 tokens,
  causal within each, its block mask made once (the ideal ratio to ``causal`` is 1/8 of the
  work above the diagonal's blocks: about 0.25 with blocks of L / 8);
- ``segments``: ``attention_jax.chunked_attention(is_causal=True, query_segment_ids=ids)``,
  the same 8 documents as segment ids (its block states come from the ids);
- ``flex causal``: ``flex_attention`` with the causal mask as a ``mask_mod`` (its block mask
  made once), against ``causal``;
- ``plain`` / ``identity``: ``flex_attention`` without mods and with an identity
  ``score_mod``: what a mod costs by itself.

Writes ``flex.md`` and ``flex.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from .attention import round_robin


def build(B, N, L, H, documents):
    import jax
    import jax.numpy as jnp

    import attention_jax
    from attention_np.mods import and_masks, causal_mask, document_mask

    rng = np.random.default_rng(0)
    q, k, v, c = (jnp.asarray(rng.normal(size=(B, L, N, H)), jnp.float32) for _ in range(4))
    ids = jnp.asarray(np.repeat(np.arange(documents), L // documents)[None].repeat(B, 0))  # (B, L)
    block = L // documents
    doc_mask = attention_jax.create_block_mask(and_masks(causal_mask, document_mask(ids)), B, None, L, L,
                                               block_sizes=(block, block))
    causal_blocks = attention_jax.create_block_mask(causal_mask, None, None, L, L)

    def identity(score, b, h, q_idx, kv_idx):
        return score

    functions = {
        "causal": lambda q, k, v: attention_jax.chunked_attention(q, k, v, is_causal=True),
        "documents": lambda q, k, v: attention_jax.flex_attention(q, k, v, block_mask=doc_mask),
        "segments": lambda q, k, v: attention_jax.chunked_attention(q, k, v, is_causal=True, query_segment_ids=ids),
        "flex causal": lambda q, k, v: attention_jax.flex_attention(q, k, v, block_mask=causal_blocks),
        "plain": lambda q, k, v: attention_jax.flex_attention(q, k, v),
        "identity": lambda q, k, v: attention_jax.flex_attention(q, k, v, score_mod=identity),
    }
    callables = {}
    for name, fn in functions.items():
        forward = jax.jit(fn)
        grad = jax.jit(jax.grad(lambda q, k, v, fn=fn: (fn(q, k, v) * c).sum(), argnums=(0, 1, 2)))
        callables[name] = {
            "forward": lambda forward=forward: forward(q, k, v).block_until_ready(),
            "forward+backward": lambda grad=grad: jax.block_until_ready(grad(q, k, v)),
        }
    return callables, {"documents": repr(doc_mask), "causal": repr(causal_blocks)}


def median_ratio(times, a, b, mode):
    return float(np.median(np.asarray(times[a][mode]) / np.asarray(times[b][mode])))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flex", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    callables, masks = build(args.batch, args.heads, args.length, args.features, args.documents)
    times = round_robin(callables, args.repeats)
    ratios = {mode: {"documents / causal": median_ratio(times, "documents", "causal", mode),
                     "segments / causal": median_ratio(times, "segments", "causal", mode),
                     "flex causal / causal": median_ratio(times, "flex causal", "causal", mode),
                     "identity / plain": median_ratio(times, "identity", "plain", mode)}
              for mode in ("forward", "forward+backward")}
    medians = {name: {mode: float(np.median(t)) for mode, t in modes.items()} for name, modes in times.items()}
    shape = f"B={args.batch}, N={args.heads}, L={args.length}, H={args.features}, float32, {args.documents} documents"
    lines = [f"# flex_attention: {shape}", "", f"Machine: {platform.processor() or platform.machine()}, "
             f"{args.repeats} rounds; ratios are medians of same-round ratios.", "",
             "| ratio | forward | forward+backward |", "|---|---|---|"]
    for key in ratios["forward"]:
        lines.append(f"| {key} | {ratios['forward'][key]:.3f} | {ratios['forward+backward'][key]:.3f} |")
    lines += ["", "| row | forward (ms) | forward+backward (ms) |", "|---|---|---|"]
    for name, modes in medians.items():
        lines.append(f"| {name} | {modes['forward'] * 1e3:.1f} | {modes['forward+backward'] * 1e3:.1f} |")
    lines += ["", f"Block masks: documents {masks['documents']}; causal {masks['causal']}."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flex.md").write_text(text)
    (out / "flex.json").write_text(json.dumps({"shape": shape, "ratios": ratios, "medians": medians}, indent=1))


if __name__ == "__main__":
    main()
