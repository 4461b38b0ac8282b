"""Attention benchmark: time and peak memory of every implementation, in one run.

    python -m benchmarks.attention              # full run (about 20 minutes on 2 cores)
    python -m benchmarks.attention --quick      # L <= 8192, no L = 16384, 32768
    python -m benchmarks.attention --training   # only the four training shapes
    python -m benchmarks.attention --dtype bfloat16 --training

Shapes (B, N, L, H): the training shapes (8, 8, 128, 64), (4, 8, 512, 64), (2, 4, 2048, 64),
(1, 8, 1024, 128), and single heads (1, 1, L, 64) for L = 4096 .. 32768; causal and not.
For each it times forward and forward+backward (the gradient of ``sum(out * c)`` for a
fixed random ``c``) of

- ``attention_jax.dot_product_attention`` (``implementation=None``, the path the NNX module
  takes),
- ``attention_jax.chunked_attention`` (online softmax, custom VJP),
- ``ours_sdpa``: the tuned dense path ``attention_jax.fast.dense.dense_attention``
  (``implementation="dense"``; output only, weights not kept),
- ``mirror``: ``attention_jax.scaled_dot_product_attention``, the plain line-by-line mirror
  of the NumPy reference (output only),
- ``jax.nn.dot_product_attention`` (XLA), and on a GPU also with ``implementation="cudnn"``,
- ``attention_np.scaled_dot_product_attention`` (forward only),
- ``torch.nn.functional.scaled_dot_product_attention`` when torch is installed,

round-robin: every round takes one sample of each implementation (one untimed call, then
back-to-back calls for about 0.2 s, as a training loop runs them), and each ratio in the
tables is the median over rounds of the ratio of the two times measured in the same round,
so that a slow spell of a shared machine cuts both. Also measured in the same run: the machine's GEMM
throughput (every row's fraction of it) and the peak resident memory of a fresh process per
(non-causal) configuration. Implementations whose (T, S) matrices would not fit are
skipped at large L. Writes ``attention.md``, ``attention.json`` and (with matplotlib)
``attention.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TRAINING_SHAPES = [(8, 8, 128, 64), (4, 8, 512, 64), (2, 4, 2048, 64), (1, 8, 1024, 128)]
LONG_SHAPES = [(1, 1, L, 64) for L in (4096, 8192, 16384, 32768)]
# Largest L each implementation runs at (forward, forward+backward): beyond, its O(L^2)
# buffers need gigabytes (jax.nn: 8.3 GiB forward at L=32768) or minutes.
LIMITS = {
    "dot_product_attention": (32768, 32768),
    "chunked": (32768, 32768),
    "ours_sdpa": (16384, 8192),
    "mirror": (16384, 8192),
    "jax.nn": (16384, 8192),
    "cudnn": (32768, 32768),
    "numpy": (4096, 0),
    "torch": (32768, 32768),
}
INNER_S = 0.2  # a timed sample repeats the call back to back for about this long (at least once)
TARGETS = {"forward": 1.25, "forward_backward": 1.5}  # our time / torch's, training shapes


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_device():
    """Where torch runs: the GPU when JAX runs on one and torch has CUDA, else the CPU; None
    when torch is missing or would run on the CPU against JAX on a GPU (no fair peer)."""
    import jax

    if not has_torch():
        return None
    import torch

    if jax.default_backend() == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def implementations():
    import jax

    names = ["dot_product_attention", "chunked", "ours_sdpa", "mirror", "jax.nn"]
    names += ["cudnn"] if jax.default_backend() == "gpu" else []
    return names + ["numpy"] + (["torch"] if torch_device() else [])


def flops(B, N, L, H, causal):
    """Forward FLOPs: two (L x L x H) matmuls per head; causal needs half."""
    return 4 * B * N * L * L * H / (2 if causal else 1)


def make(impl, B, N, L, H, causal, dtype):
    """``(forward, forward_backward)`` zero-argument callables that block until done
    (``forward_backward`` None where the implementation has no backward pass)."""
    rng = np.random.default_rng(0)
    q, k, v, c = (rng.standard_normal((B, L, N, H), dtype=np.float32) for _ in range(4))
    if impl == "torch":
        import torch

        device = torch_device()
        tq, tk, tv, tc = (torch.from_numpy(x).transpose(1, 2).contiguous().to(device, getattr(torch, dtype)) for x in (q, k, v, c))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def forward():
            with torch.no_grad():
                out = sdpa(tq, tk, tv, is_causal=causal)
            sync()
            return out

        def forward_backward():
            x = [t.clone().requires_grad_() for t in (tq, tk, tv)]
            (sdpa(*x, is_causal=causal) * tc).sum().backward()
            sync()
            return x[0].grad

        return forward, forward_backward
    if impl == "numpy":
        import attention_np

        return (lambda: attention_np.scaled_dot_product_attention(q, k, v, is_causal=causal)[0]), None

    import jax
    import jax.numpy as jnp

    import attention_jax
    from attention_jax.fast.dense import dense_attention

    fn = {
        "dot_product_attention": lambda q, k, v: attention_jax.dot_product_attention(q, k, v, is_causal=causal),
        "chunked": lambda q, k, v: attention_jax.chunked_attention(q, k, v, is_causal=causal),
        "ours_sdpa": lambda q, k, v: dense_attention(q, k, v, is_causal=causal)[0],
        "mirror": lambda q, k, v: attention_jax.scaled_dot_product_attention(q, k, v, is_causal=causal)[0],
        "jax.nn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal),
        "cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn"),
    }[impl]
    jq, jk, jv, jc = (jnp.asarray(x, dtype) for x in (q, k, v, c))
    forward = jax.jit(fn)
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * jc), argnums=(0, 1, 2)))
    return (lambda: forward(jq, jk, jv).block_until_ready()), (lambda: grad(jq, jk, jv)[0].block_until_ready())


def timed(fn):
    """Seconds per call, in steady state: one untimed call first (it wakes this
    implementation's worker threads, which sleep after a pause, and lets the previous one's
    stop spinning: either costs up to several ms per call here), then back-to-back calls for
    about ``INNER_S``, as a training loop runs them."""
    start = time.perf_counter()
    fn()
    n = max(1, min(20, int(INNER_S / max(time.perf_counter() - start, 1e-6))))
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def round_robin(callables, repeats):
    """``{name: {mode: [seconds per call, per round]}}``: one compiling/warm-up call each,
    then ``repeats`` rounds in which every (name, mode) takes one :func:`timed` sample."""
    for modes in callables.values():
        for fn in modes.values():
            fn()
    times = {name: {mode: [] for mode in modes} for name, modes in callables.items()}
    for _ in range(repeats):
        for name, modes in callables.items():
            for mode, fn in modes.items():
                times[name][mode].append(timed(fn))
    return times


def gemm_gflops(repeats=5, n=2048):
    """Float32 (n x n) @ (n x n) throughput of JAX (and NumPy, torch) on this machine."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    x = np.ones((n, n), np.float32)
    fns = {"jax": lambda: matmul(a).block_until_ready(), "numpy": lambda: x @ x}
    if has_torch():
        import torch

        t = torch.ones(n, n)
        fns["torch"] = lambda: t @ t
    times = round_robin({name: {"run": fn} for name, fn in fns.items()}, repeats)
    return {name: 2 * n**3 / float(np.median(t["run"])) / 1e9 for name, t in times.items()}


def peak_memory_mib(impl, B, N, L, H, causal, mode, dtype):
    """Peak RSS of a fresh process that builds the inputs and runs ``mode`` once."""
    cmd = [sys.executable, "-m", "benchmarks.attention", "--child", impl, str(B), str(N), str(L), str(H),
           str(int(causal)), mode, dtype]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def child(impl, B, N, L, H, causal, mode, dtype):
    forward, forward_backward = make(impl, int(B), int(N), int(L), int(H), bool(int(causal)), dtype)
    (forward if mode == "forward" else forward_backward)()
    print(json.dumps({"peak_mib": peak_rss_mib()}))


def peak_rss_mib():
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that over
    from the forking parent across exec, so a child would report its parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def runs(impl, L, mode):
    return L <= LIMITS[impl][0 if mode == "forward" else 1]


def measure(B, N, L, H, causal, impls, repeats, dtype):
    """Rows (one per implementation) for one configuration; each keeps its per-round times."""
    callables = {}
    for impl in impls:
        if not runs(impl, L, "forward"):
            continue
        try:
            forward, forward_backward = make(impl, B, N, L, H, causal, dtype)
            forward()  # fails here if the implementation does not support the configuration (cuDNN)
        except Exception as error:  # noqa: BLE001  (a peer that cannot run is reported, not fatal)
            print(f"  {B}x{N}x{L}x{H} {impl}: not run ({type(error).__name__}: {str(error).splitlines()[0][:120]})")
            continue
        callables[impl] = {"forward": forward}
        if forward_backward is not None and runs(impl, L, "forward_backward"):
            callables[impl]["forward_backward"] = forward_backward
    times = round_robin(callables, repeats)
    rows = []
    for impl, modes in times.items():
        row = {"B": B, "N": N, "L": L, "H": H, "causal": causal, "impl": impl, "dtype": dtype,
               "forward_s": float(np.median(modes["forward"])), "rounds": modes}
        row["forward_backward_s"] = float(np.median(modes["forward_backward"])) if "forward_backward" in modes else None
        row["forward_gflops"] = flops(B, N, L, H, causal) / row["forward_s"] / 1e9
        rows.append(row)
        print(f"  {B}x{N}x{L}x{H} causal={causal!s:5} {impl:22} forward {fmt(row['forward_s']):>9} ms  "
              f"fwd+bwd {fmt(row['forward_backward_s']):>9} ms", flush=True)
    return rows


def ratio(a, b, mode):
    """Median over rounds of ``time(a) / time(b)`` (rows of the same configuration), or None."""
    if a is None or b is None or mode not in a["rounds"] or mode not in b["rounds"]:
        return None
    return float(np.median(np.asarray(a["rounds"][mode]) / np.asarray(b["rounds"][mode])))


def best_of_ours(by, key, mode):
    """Per-round minimum of our dense and chunked paths, as a pseudo-row (for the dispatch target)."""
    got = [by[key + (p,)]["rounds"][mode] for p in ("chunked", "ours_sdpa") if key + (p,) in by and mode in by[key + (p,)]["rounds"]]
    return {"rounds": {mode: np.min(got, axis=0)}} if got else None


def fmt(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def fx(x):
    return "-" if x is None else f"{x:.2f}x"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only L <= 8192")
    parser.add_argument("--training", action="store_true", help="only the four training shapes")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process peak memory probes")
    parser.add_argument("--impls", help="comma-separated subset of the implementations (default: all)")
    parser.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)

    import jax

    max_length = 8192 if args.quick else 32768
    shapes = TRAINING_SHAPES + ([] if args.training else [s for s in LONG_SHAPES if s[2] <= max_length])
    impls = implementations()
    if args.impls:
        impls = [i for i in impls if i in args.impls.split(",")]
    # the cores this process may run on (taskset -c 0 ...: one), of the machine's
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = f"{usable} cores" if usable == os.cpu_count() else f"{usable} of {os.cpu_count()} cores"
    machine = f"{platform.processor() or platform.machine()}, {cores}, jax {jax.__version__} ({jax.default_backend()})"
    print(f"# attention benchmark: {args.dtype}, median of {args.repeats} round-robin rounds; {machine}")
    gemm = gemm_gflops()
    print("GEMM GFLOP/s (2048^3 float32): " + ", ".join(f"{k} {v:.0f}" for k, v in gemm.items()))

    rows = []
    for B, N, L, H in shapes:
        for causal in (False, True):
            rows += measure(B, N, L, H, causal, impls, args.repeats, args.dtype)

    memory = []
    if not args.no_memory:
        for B, N, L, H in [(1, 1, 128, 64)] + shapes:  # (1, 1, 128): the runtime's own footprint
            for impl in impls:
                for mode in ("forward", "forward_backward"):
                    if runs(impl, L, mode) and (impl != "numpy" or mode == "forward"):
                        peak = peak_memory_mib(impl, B, N, L, H, False, mode, args.dtype)
                        memory.append({"B": B, "N": N, "L": L, "H": H, "impl": impl, "mode": mode, "peak_mib": peak})
                        print(f"  memory {B}x{N}x{L}x{H} {impl:22} {mode:16} {peak if peak is None else round(peak)} MiB", flush=True)

    report = render(rows, memory, gemm, machine, args)
    print("\n" + report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "attention" if args.dtype == "float32" else f"attention_{args.dtype}"
    (out / f"{stem}.md").write_text(report)
    (out / f"{stem}.json").write_text(json.dumps({"machine": machine, "dtype": args.dtype, "repeats": args.repeats,
                                                  "gemm_gflops": gemm, "rows": rows, "memory": memory}, indent=1))
    plot(rows, memory, out / f"{stem}.png")
    print(f"wrote {out}/{stem}.md, {stem}.json" + (f", {stem}.png" if (out / f"{stem}.png").exists() else ""))


def render(rows, memory, gemm, machine, args):
    by = {(r["B"], r["N"], r["L"], r["H"], r["causal"], r["impl"]): r for r in rows}
    configs = list(dict.fromkeys(k[:5] for k in by))
    lines = [
        f"## Attention benchmark ({machine})",
        "",
        f"{args.dtype}, {args.repeats} round-robin rounds after compilation; times are medians, ratios the medians of "
        "same-round ratios. GEMM (2048^3 float32): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in gemm.items()) + ".",
    ]
    lines += training_table(by, configs)
    lines += dpa_table(by, configs)
    lines += chunked_table(by, configs, gemm)
    if memory:
        lines += ["", "Peak resident memory of a fresh process (MiB), non-causal; it includes the Python "
                  "runtime and the library itself (the 1x1x128 rows):", "",
                  "| B x N x L x H | implementation | forward | forward+backward |", "|---|---|---|---|"]
        for shape in dict.fromkeys((m["B"], m["N"], m["L"], m["H"]) for m in memory):
            for impl in dict.fromkeys(m["impl"] for m in memory):
                got = {m["mode"]: m["peak_mib"] for m in memory if (m["B"], m["N"], m["L"], m["H"]) == shape and m["impl"] == impl}
                if got:
                    cells = ["-" if got.get(mode) is None else f"{got[mode]:.0f}" for mode in ("forward", "forward_backward")]
                    lines.append(f"| {'x'.join(map(str, shape))} | {impl} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def name(key):
    B, N, L, H, causal = key
    return f"{B}x{N}x{L}x{H}", "yes" if causal else "no"


def training_table(by, configs):
    """The targets at the training shapes: ``dot_product_attention``'s time / torch's
    (<= 1.25 forward, <= 1.5 forward+backward) and ``jax.nn``'s time / ours (>= 1)."""
    keys = [k for k in configs if k[:4] in TRAINING_SHAPES and k + ("dot_product_attention",) in by]
    if not keys:
        return []
    lines = ["", "Training shapes: dot_product_attention (implementation=None). Ratios are **our time / torch's** "
             f"(target <= {TARGETS['forward']} forward, <= {TARGETS['forward_backward']} forward+backward) and "
             "**jax.nn's time / ours** (>= 1: not slower than jax.nn):", "",
             "| B x N x L x H | causal | path | fwd ms | fwd+bwd ms | torch fwd ms | torch fwd+bwd ms | "
             "ours / torch fwd | ours / torch fwd+bwd | jax.nn / ours fwd | jax.nn / ours fwd+bwd |",
             "|" + "---|" * 11]
    for key in keys:
        r, torch_row, jnn = by[key + ("dot_product_attention",)], by.get(key + ("torch",)), by.get(key + ("jax.nn",))
        cells = list(name(key)) + [path_of(key, r["dtype"]), fmt(r["forward_s"]), fmt(r["forward_backward_s"]),
                                   fmt(torch_row and torch_row["forward_s"]), fmt(torch_row and torch_row["forward_backward_s"])]
        for mode in ("forward", "forward_backward"):
            x = ratio(r, torch_row, mode)
            cells.append("-" if x is None else f"{x:.2f}" + ("" if x <= TARGETS[mode] else " (over)"))
        cells += [fx(ratio(jnn, r, "forward")), fx(ratio(jnn, r, "forward_backward"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def path_of(key, dtype):
    """The path ``dot_product_attention`` takes at this configuration (its own dispatch rule)."""
    import jax

    from attention_jax.fast.dispatch import choose_implementation

    B, N, L, H, causal = key
    x = jax.ShapeDtypeStruct((B, L, N, H), dtype)
    return choose_implementation(x, x, is_causal=causal)


def dpa_table(by, configs):
    """``dot_product_attention`` against the faster of our dense and chunked paths (target:
    within 10%), ``jax.nn`` and torch, as **their time / ours**."""
    keys = [k for k in configs if k + ("dot_product_attention",) in by]
    if not keys:
        return []
    lines = ["", "dot_product_attention (implementation=None) as **their time / ours** (> 1: ours is faster; "
             "against the faster of our dense and chunked paths in each round, >= 0.91 is within 10%):", "",
             "| B x N x L x H | causal | path | fwd ms | fwd+bwd ms | vs best of ours fwd | vs best fwd+bwd | "
             "vs jax.nn fwd | vs jax.nn fwd+bwd | vs torch fwd | vs torch fwd+bwd |", "|" + "---|" * 11]
    for key in keys:
        r = by[key + ("dot_product_attention",)]
        cells = list(name(key)) + [path_of(key, r["dtype"]), fmt(r["forward_s"]), fmt(r["forward_backward_s"])]
        cells += [fx(ratio(best_of_ours(by, key, m), r, m)) for m in ("forward", "forward_backward")]
        for peer in ("jax.nn", "torch"):
            cells += [fx(ratio(by.get(key + (peer,)), r, m)) for m in ("forward", "forward_backward")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def chunked_table(by, configs, gemm):
    """``chunked_attention`` against every peer, as **their time / ours**."""
    peers = [p for p in ("ours_sdpa", "mirror", "jax.nn", "cudnn", "numpy", "torch") if any(k[5] == p for k in by)]
    keys = [k for k in configs if k + ("chunked",) in by]
    if not keys:
        return []
    lines = ["", "chunked_attention as **their time / ours** (> 1: chunked is faster):", "",
             "| B x N x L x H | causal | chunked fwd ms | fwd+bwd ms | % of GEMM | "
             + " | ".join(f"{p} fwd ms" for p in peers) + " | " + " | ".join(f"vs {p} fwd" for p in peers) + " | "
             + " | ".join(f"vs {p} fwd+bwd" for p in peers if p != "numpy") + " |",
             "|" + "---|" * (5 + 2 * len(peers) + len([p for p in peers if p != "numpy"]))]
    for key in keys:
        r = by[key + ("chunked",)]
        peer_rows = [by.get(key + (p,)) for p in peers]
        cells = list(name(key)) + [fmt(r["forward_s"]), fmt(r["forward_backward_s"]), f"{100 * r['forward_gflops'] / gemm['jax']:.0f}%"]
        cells += [fmt(p["forward_s"]) if p else "-" for p in peer_rows]
        cells += [fx(ratio(p, r, "forward")) for p in peer_rows]
        cells += [fx(ratio(p, r, "forward_backward")) for p, peer in zip(peer_rows, peers) if peer != "numpy"]
        lines.append("| " + " | ".join(cells) + " |")
    causal_lines = [(k[2], name(k)[0], ratio(by[k + ("chunked",)], by[k[:4] + (True, "chunked")], "forward"))
                    for k in keys if not k[4] and k[:4] + (True, "chunked") in by]
    lines += ["", "Causal speed-up of chunked_attention (non-causal time / causal time, forward, same round): "
              + ", ".join(f"{n}: {x:.2f}x" for _, n, x in sorted(causal_lines)) + "."]
    return lines


def plot(rows, memory, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return
    single = [r for r in rows if r["B"] == 1 and r["N"] == 1]
    if not single:
        return  # the training shapes alone: nothing to plot against L
    fig, axes = plt.subplots(1, 2 if memory else 1, figsize=(12 if memory else 6, 4.5), squeeze=False)
    axes = axes[0]  # (--no-memory: the time panel alone, not an empty memory panel beside it)
    for impl in dict.fromkeys(r["impl"] for r in single):
        for causal, style in ((False, "-o"), (True, "--x")):
            pts = sorted((r["L"], r["forward_s"]) for r in single if r["impl"] == impl and r["causal"] == causal)
            if pts:
                axes[0].loglog(*zip(*pts), style, label=f"{impl}{' causal' if causal else ''}")
    axes[0].set(xlabel="L (B=N=1, H=64)", ylabel="forward time (s)", title="time")
    axes[0].legend(fontsize=7)
    if memory:
        for impl in dict.fromkeys(m["impl"] for m in memory):
            for mode, style in (("forward", "-o"), ("forward_backward", "--x")):
                pts = sorted((m["L"], m["peak_mib"]) for m in memory
                             if m["impl"] == impl and m["mode"] == mode and m["B"] == m["N"] == 1 and m["peak_mib"])
                if pts:
                    axes[1].loglog(*zip(*pts), style, label=f"{impl} {mode}")
        axes[1].set(xlabel="L (B=N=1, H=64)", ylabel="peak process memory (MiB)", title="memory")
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
