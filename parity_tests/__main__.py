"""``python -m parity_tests [--json PATH] [--dtype D ...] [--case SUBSTRING]``: the parity report.

Runs every registered case on both halves in every dtype against the NumPy float64
reference, plus the tutorial golden, prints one table and exits 1 on any failure.

``python -m parity_tests tutorial`` prints the tutorial notebook's Step 4 (its seed-0 run)
for both halves beside the stored PyTorch values, and exits 1 if either is off by > 1e-6.
"""

import argparse
import json
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 parity; float32 cases stay float32

from . import DTYPES, REGISTRY, run_all, run_tutorial_golden  # noqa: E402

COLUMNS = ("mechanism", "case", "shapes", "dtype", "half", "max abs err", "max rel err", "tol", "result")


def _row(result):
    c = result.comparison
    verdict = "pass" if c.passed else f"FAIL {c.detail}"
    variant = result.case.split("/", 1)[-1]
    return (result.mechanism, variant, result.shapes, result.dtype, result.half, f"{c.max_abs:.2e}", f"{c.max_rel:.2e}", f"{c.tol:.0e}", verdict)


def format_table(results) -> str:
    rows = [COLUMNS] + [_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["tutorial"]:
        from .tutorial import main as tutorial_main

        return tutorial_main()
    parser = argparse.ArgumentParser(
        prog="python -m parity_tests", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--dtype", action="append", choices=DTYPES, help="only these dtypes (repeatable)")
    parser.add_argument("--case", default="", help="only cases whose name contains this")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    cases = [c for name, c in REGISTRY.items() if args.case in name]
    results = run_all(cases, dtypes=args.dtype or DTYPES) + run_tutorial_golden()
    failed = [r for r in results if not r.comparison.passed]

    print(format_table(results))
    print(
        f"\n{len(results) - len(failed)} passed, {len(failed)} failed "
        f"({len(cases)} cases, {time.perf_counter() - start:.1f} s; reference: attention_np in float64; "
        f"jax {jax.__version__} on {jax.default_backend()})\n"
        "An element passes when its abs or its rel error is within tol; max rel err is over "
        "the elements whose abs error exceeds tol."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"passed": not failed, "results": [r.as_dict() for r in results]}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
