"""How much of the suite is proof: plant one-line bugs (mutants) and see which tests catch them.

    python -m benchmarks.mutants                  # every mutant, its own test files (~15 min on 2 cores)
    python -m benchmarks.mutants --only M04 M12   # some of them
    python -m benchmarks.mutants --suite          # a survivor is run again against the whole suite
    python -m benchmarks.mutants --tests-from REV # the score of an older revision's tests
    python -m benchmarks.mutants --list           # the list, nothing run

Each mutant is one edit a developer could make (an off-by-one, a dropped term, a swapped
argument, a forgotten rescale) in one core file, with the test files that own that file. The
script copies the working tree to a temporary folder, plants the mutant there (never in the
tree itself), runs those test files with pytest (the suite's own settings: the derandomized
hypothesis profile, so a catch does not depend on luck) and records the tests that failed.
A mutant no test catches *survived*: a missing test, unless the mutant is *equivalent* (the
same numbers by construction), which the list says. Writes ``mutants.md`` and
``mutants.json`` to ``--out``. On demand only, not in CI (each mutant reruns test files).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str          # the file, from the project root
    old: str           # the text replaced: it must occur exactly once in the file
    new: str
    bug: str           # what the edit does, in words
    tests: tuple       # the test files that own the file


T = "parity_tests/tests/"
MUTANTS = [
    # masking, the NumPy reference
    Mutant("M01", "attention_np/_masking.py", "unnormalized = np.where(mask, unnormalized, 0.0)",
           "unnormalized = unnormalized", "a fully masked row gets uniform weights",
           (T + "test_dot_product.py", T + "test_edge_cases.py")),
    Mutant("M02", "attention_np/_masking.py", "return (s >= t - left) & (s <= t + right)",
           "return (s > t - left) & (s <= t + right)", "the window's left edge excluded",
           (T + "test_dot_product.py", T + "test_mechanisms.py")),
    Mutant("M03", "attention_np/dot_product.py", "logits = soft_cap * np.tanh(logits / soft_cap)",
           "logits = np.tanh(logits / soft_cap)", "the soft-cap without its factor c",
           (T + "test_packed.py",)),
    Mutant("M04", "attention_np/additive.py", "x = np.concatenate([hidden, encoder_outputs], axis=-1)",
           "x = np.concatenate([encoder_outputs, hidden], axis=-1)", "the tutorial's concatenation order swapped",
           (T + "test_additive.py", T + "test_tutorial.py")),
    Mutant("M05", "attention_np/dropout.py", "weights / np.asarray(1 - rate, weights.dtype)",
           "weights / np.asarray(1 + rate, weights.dtype)", "kept weights scaled by 1 / (1 + rate)",
           (T + "test_dropout.py",)),
    Mutant("M06", "attention_np/multi_head.py", "out = np.where(attends[..., None], out, 0)",
           "out = out", "a query with no key keeps the output bias", (T + "test_mechanisms.py", T + "test_edge_cases.py")),
    # decoding
    Mutant("M07", "attention_np/kv_cache.py", "mask = np.arange(L) <= positions[:, :, None]",
           "mask = np.arange(L) < positions[:, :, None]", "a new token does not see itself",
           (T + "test_kv_cache.py",)),
    Mutant("M08", "attention_jax/kv_cache.py", "mask &= jnp.arange(L) >= positions[:, :, None] - window[0]",
           "mask &= jnp.arange(L) >= jnp.arange(k)[None, :, None] - window[0]",
           "the step's window from the chunk's indices, not cache positions", (T + "test_decode_options.py",)),
    Mutant("M09", "attention_jax/nnx/_cache.py", "visible &= s >= start + j - window[0]",
           "visible &= s >= j - window[0]", "the module's decode window from the chunk's indices",
           (T + "test_decode_options.py",)),
    Mutant("M10", "attention_jax/nnx/multi_head.py", "positions = self.cache_index[...][..., None] + jnp.arange(T)",
           "positions = self.cache_index[...][..., None] + jnp.arange(T) + 1", "decoding rotates one position late",
           (T + "test_rotary.py",)),
    Mutant("M11", "attention_jax/nnx/multi_head.py", "return rotate(query, jnp.arange(T)), rotate(key, jnp.arange(S))",
           "return rotate(query, jnp.arange(T)), rotate(key, jnp.arange(S) - S + T)",
           "cross-attention keys rotated as if they ended with the queries", (T + "test_rotary.py",)),
    Mutant("M12", "attention_jax/nnx/_cache.py", "self.cached_value[...] = value\n        self.cache_index[...] = index + lengths",
           "self.cached_value[...] = value\n        self.cache_index[...] = index + k", "a ragged prefill advances every row by the chunk",
           (T + "test_nnx_mha.py", T + "test_decode_options.py")),
    # the dense JAX path
    Mutant("M13", "attention_jax/fast/dense.py", "keep = None if S <= T else (jnp.arange(S) < T)[:, None]",
           "keep = None if S <= T else (jnp.arange(S) < T + 1)[:, None]", "key T read under the causal mask alone",
           (T + "test_dot_product_attention.py",)),
    Mutant("M14", "attention_jax/fast/dense.py", "empty_rows = bias is not None or (mask is not None and not causal_only)",
           "empty_rows = mask is not None and not causal_only", "a row of -inf bias is not guarded",
           (T + "test_dot_product_attention.py", T + "test_edge_cases.py")),
    # chunked: block ranges, block states, kernels, the online softmax
    Mutant("M15", "attention_jax/fast/chunked/logits.py",
           "ok = (j * kc + lax.broadcasted_iota(jnp.int32, (qc, G, kc), 2)) < cfg.S",
           "ok = (j * kc + lax.broadcasted_iota(jnp.int32, (qc, G, kc), 2)) <= cfg.S",
           "a key of the padding past S attended in a partial block", (T + "test_chunked.py",)),
    Mutant("M16", "attention_jax/fast/chunked/sparse.py", "t0, t1 = t.min(-1)[:, None], t.max(-1)[:, None]",
           "t0, t1 = t.min(-1)[:, None], t.min(-1)[:, None]",
           "a shard's query block taken to end at its first position", (T + "test_ring.py",)),
    Mutant("M17", "attention_jax/fast/chunked/sparse.py", "empty, full = empty | (u0 > t1), full & (u1 <= t0)",
           "empty, full = empty | (u0 >= t1), full & (u1 <= t0)", "a causal block whose first key is its last query skipped",
           (T + "test_chunked.py",)),
    Mutant("M18", "attention_jax/fast/chunked/sparse.py", "empty = empty | (u0 > t1 + right) | (u1 < t0 - left)",
           "empty = empty | (u0 > t1 + right) | (u1 <= t0 - left)", "a block ending on the window's left edge skipped",
           (T + "test_chunked.py",)),
    Mutant("M19", "attention_jax/fast/chunked/sparse.py", "full = full & (u0 >= t1 - left) & (u1 <= t0 + right)",
           "full = full & (u0 >= t1 - left - 1) & (u1 <= t0 + right)", "a block one key short of full taken as full",
           (T + "test_chunked.py",)),
    Mutant("M20", "attention_jax/fast/chunked/sparse.py", "empty = empty | (qmax < kmin) | (kmax < qmin)",
           "empty = empty | (qmax <= kmin) | (kmax < qmin)", "a block whose ids meet at one id skipped",
           (T + "test_chunked.py", T + "test_packed.py")),
    Mutant("M21", "attention_jax/fast/chunked/kernels.py", "t0 = t0 if dbias.shape[2] != 1 else 0",
           "t0 = 0", "every query block's bias gradient added at row 0", (T + "test_chunked.py",)),
    Mutant("M22", "attention_jax/fast/online_softmax.py", "return m_new, l * correction + p.sum(-1), p, correction",
           "return m_new, l + p.sum(-1), p, correction", "the running sum not rescaled by a new maximum",
           (T + "test_chunked.py",)),
    Mutant("M23", "attention_jax/fast/online_softmax.py", "lse = jnp.where(empty, dead_lse, m + jnp.log(safe))",
           "lse = jnp.where(empty, dead_lse, jnp.log(safe))", "the log-sum-exp without the maximum",
           (T + "test_chunked.py",)),
    # ring
    Mutant("M24", "attention_jax/parallel/ring.py", "kpos = _padded_positions((i - p) % P, rows.kpos.shape[-1], cfg.S, P, layout)\n        block = forward(",
           "kpos = _padded_positions(i, rows.kpos.shape[-1], cfg.S, P, layout)\n        block = forward(",
           "the ring's forward reads every key block at its own block's positions", (T + "test_ring.py",)),
    Mutant("M25", "attention_jax/fast/online_softmax.py", "safe = jnp.where(new == -jnp.inf, 0, new)", "safe = new",
           "merging two softmaxes that saw no key gives NaN", (T + "test_ring.py",)),
    # hard attention, the harness
    Mutant("M26", "attention_jax/hard.py", "weights = weights + (soft - jax.lax.stop_gradient(soft))",
           "weights = weights + (soft - soft)", "straight-through without its gradient", (T + "test_mechanisms.py",)),
    Mutant("M27", "parity_tests/harness.py", "if not np.array_equal(nan_e, nan_a):",
           "if nan_e.sum() != nan_a.sum():", "NaN in other places, as many, passes", (T + "test_harness.py",)),
    Mutant("M28", "parity_tests/harness.py", "rel = np.where(err > tol, err / np.abs(e), 0.0)",
           "rel = np.where(err > tol, err / (np.abs(e) + 1), 0.0)", "the relative error damped near zero",
           (T + "test_harness.py",)),
]


def copy_tree(dest: Path) -> None:
    """The files git knows (tracked, and untracked but not ignored), as they are in the tree."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def plant(dest: Path, mutant: Mutant) -> None:
    path = dest / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"{mutant.name}: {mutant.old!r} occurs {count} times in {mutant.path}; expected once "
                         f"(the code moved: update the list)")
    path.write_text(text.replace(mutant.old, mutant.new))


def run_tests(dest: Path, tests, timeout: int, deselect=(), stop_first=True) -> tuple[int, list[str], str, float]:
    """``(pytest's exit code, failed test ids, its last line, seconds)``, on the copy's packages
    (first on ``sys.path``), not the installed ones. Exit code 1 or 2 (a failure, an error while
    collecting) is a catch; 4 and 5 (bad usage, no test) mean the run proved nothing."""
    tests = [t for t in tests if (dest / t).exists()]
    if not tests:  # an older revision without these files: nothing runs, nothing is caught
        return 0, [], "no test file", 0.0
    env = dict(os.environ, PYTHONPATH=str(dest))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *tests,
               *(["-x"] if stop_first else []), *(f"--deselect={t}" for t in deselect)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=dest, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 1, ["(timed out)"], "timed out", time.perf_counter() - start
    output = done.stdout + done.stderr
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", output, flags=re.M)))  # ids may hold spaces
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return done.returncode, failed, lines[-1] if lines else "", time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="mutant names (M01 ...)")
    parser.add_argument("--suite", action="store_true", help="run a survivor against the whole suite too")
    parser.add_argument("--list", action="store_true", help="print the list and stop")
    parser.add_argument("--tests-from", metavar="REV", help="the test files of git revision REV (a score before new tests)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}  {m.path}: {m.bug}")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        clean = Path(tmp) / "clean"
        clean.mkdir()
        copy_tree(clean)
        if args.tests_from:
            shutil.rmtree(clean / T)
            archive = subprocess.run(["git", "archive", args.tests_from, T], cwd=ROOT, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(clean)], input=archive.stdout, check=True)
        # the unmutated tests must pass, or a "catch" proves nothing
        baseline = sorted({t for m in chosen for t in m.tests})
        code, failed, last, seconds = run_tests(clean, baseline, args.timeout, stop_first=False)
        # an older revision's tests that fail on today's code (behaviour changed on purpose) are
        # left out, and listed; today's tests must all pass
        deselect = failed if args.tests_from and code == 1 else []
        if code != 0 and not deselect:
            raise SystemExit(f"the test files do not pass without a mutant (exit {code}): {failed} {last}")
        print(f"baseline: {len(baseline)} test files pass ({seconds:.0f} s); left out: {deselect or 'none'}",
              flush=True)
        for m in chosen:
            work = Path(tmp) / m.name
            shutil.copytree(clean, work)
            plant(work, m)
            code, failed, last, seconds = run_tests(work, m.tests, args.timeout, deselect)
            where = "own files"
            if code not in (1, 2) and args.suite:
                code, failed, last, seconds = run_tests(work, [T], args.timeout, deselect)
                where = "whole suite"
            if code not in (0, 1, 2):
                raise SystemExit(f"{m.name}: pytest exit {code} proves nothing: {last}")
            caught = code != 0
            results.append(dict(name=m.name, path=m.path, bug=m.bug, caught=caught, by=failed or [last],
                                where=where, seconds=round(seconds, 1), pytest=last))
            print(f"{m.name} {'caught' if caught else 'SURVIVED'} ({seconds:.0f} s): {m.bug}", flush=True)
            shutil.rmtree(work)
    caught = sum(r["caught"] for r in results)
    source = f"the tests of {args.tests_from} on today's code" if args.tests_from else "the tests of the tree"
    left_out = f" Left out (they fail on today's code): {', '.join(deselect)}." if deselect else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mutants.json").write_text(json.dumps(results, indent=1) + "\n")
    rows = [f"| {r['name']} | `{r['path']}` | {r['bug']} | {'caught' if r['caught'] else '**survived**'} | "
            f"{'<br>'.join(r['by']) if r['caught'] else '-'} |" for r in results]
    (args.out / "mutants.md").write_text(
        f"# Mutation score: {caught} of {len(results)} caught\n\n"
        f"`python -m benchmarks.mutants`: each mutant planted in a copy of the tree, its owners' test files run "
        f"({source}; derandomized hypothesis, the suite's profile). Caught by = the first failing test.{left_out}\n\n"
        "| mutant | file | the bug | result | caught by |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(f"{caught} of {len(results)} caught")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
