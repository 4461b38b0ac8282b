"""``python -m parity_tests [--cases MODULE ...] [--only-external] [--verbose] [--json PATH]
[--dtype D ...] [--direction forward|backward] [--case SUBSTRING] [--compilation-cache DIR]``:
the parity report.

Runs every registered case on both halves in every dtype against the NumPy float64
reference, forward (outputs) and backward (gradients: ``jax.vjp`` against the NumPy VJPs,
or central finite differences in float64), plus the tutorial golden. Prints a summary
matrix (mechanism x direction x half x dtype, each cell the worst error as a percentage of
its tolerance), then the failing rows (every row with ``--verbose``); exits 1 on any failure
and 2 when the filters (``--case``, ``--dtype``, ``--direction``) select no row. The
tutorial golden rows (float32, forward, ``additive_attention/tutorial golden (PyTorch)``) obey
the filters like the others.

While it runs, one progress line a mechanism goes to stderr. The JAX rows of a mechanism
(every case, dtype and direction) compile as one program, in a second thread while this one
traces the next mechanism and runs the NumPy side. ``--compilation-cache DIR`` keeps the
compiled programs (JAX's persistent compilation cache), so that a second run skips compiling.

``--cases mypackage.my_cases`` imports a module that registers its own cases with
``parity_tests.register``; they run with the built-in ones, or alone with ``--only-external``.
Ports it registers with ``parity_tests.register_port`` (any sides: NumPy, JAX, PyTorch,
modules) run through ``check_port`` after the cases; a failing one prints its report.

``python -m parity_tests tutorial`` prints the tutorial notebook's Step 4 (its seed-0 run)
for both halves beside the stored PyTorch values, and exits 1 if either is off by > 1e-6.
"""

import argparse
import json
import math
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 parity; float32 cases stay float32

from . import DIRECTIONS, DTYPES, REGISTRY, load_cases, planned_rows, run_all, run_tutorial_golden  # noqa: E402
from .port import PORTS  # noqa: E402
from .registry import HALVES  # noqa: E402

COLUMNS = ("mechanism", "case", "shapes", "direction", "dtype", "half", "reference", "max abs err", "max rel err", "tol", "result")
SHORT = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "b16"}
GOLDEN = "tutorial golden (PyTorch)"  # the case name of run_tutorial_golden's rows
GOLDEN_NAME = f"additive_attention/{GOLDEN}"  # what --case matches for them, as for "<mechanism>/<variant>"


def _row(result):
    c = result.comparison
    verdict = {"pass": "pass", "skip": f"skip: {result.skipped}", "FAIL": f"FAIL {c.detail}"}[result.status]
    variant = result.case.split("/", 1)[-1]
    return (result.mechanism, variant, result.shapes, result.direction, result.dtype, result.half, result.reference,
            f"{c.max_abs:.2e}", f"{c.max_rel:.2e}", f"{c.tol:.0e}", verdict)


def format_table(results) -> str:
    """Every row of ``results``, one line each."""
    rows = [COLUMNS] + [_row(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(results) -> tuple:
    """``(text, style)`` of one summary cell: the worst row's error as % of its tolerance."""
    if not results:
        return "-", "dim"
    if any(r.failed for r in results):
        return "F", "bold red"
    ran = [r for r in results if not r.skipped]
    if not ran:
        return "s", "yellow"
    percent = max(100 * r.ratio for r in ran)
    return ("<1" if percent < 1 else str(min(100, math.ceil(percent)))), "green"


def _short(mechanism: str, width: int = 19) -> str:
    """``multi_head_attention_step`` -> ``multi_head_step``: the summary keeps to 80 columns."""
    return mechanism.replace("_attention", "")[:width]


def summary_rows(results) -> list:
    """The summary matrix as rows of ``(text, style)`` cells, the first two rows the header."""
    groups = {}
    for r in results:
        groups.setdefault("tutorial golden" if r.case == GOLDEN else r.mechanism, []).append(r)
    columns = [(direction, half, dtype) for direction in DIRECTIONS for half in HALVES for dtype in DTYPES
               if not (direction == "forward" and half == "numpy" and dtype == "float64")]
    name_width = max([len("mechanism")] + [len(_short(name)) for name in groups])
    header1, header2 = [("", "")], [("mechanism".ljust(name_width), "bold")]
    previous = None
    for direction, half, dtype in columns:
        header1.append((f"{'fwd' if direction == 'forward' else 'bwd'} {half}" if (direction, half) != previous else "", "bold"))
        header2.append((SHORT[dtype], "bold"))
        previous = (direction, half)
    rows = [header1, header2]
    for name, rs in groups.items():
        row = [(_short(name).ljust(name_width), "")]
        for direction, half, dtype in columns:
            row.append(_cell([r for r in rs if (r.direction, r.half, r.dtype) == (direction, half, dtype)]))
        rows.append(row)
    return rows


def _render(rows, console=None) -> str:
    """Fixed-width text of :func:`summary_rows`; also printed through ``rich``, with colour,
    when ``console`` is given."""
    groups, cells = rows[0], rows[1:]
    widths = [max(len(row[i][0]) for row in cells) for i in range(len(cells[0]))]
    # one space between columns, two between the forward and the backward ones: 80 columns
    gaps = ["" if i == 0 else "  " if label.startswith("bwd numpy") else " " for i, (label, _) in enumerate(groups)]
    starts = [sum(widths[:i]) + sum(len(g) for g in gaps[: i + 1]) for i in range(len(widths))]
    header = ""
    for start, (label, _) in zip(starts, groups):
        if label:
            header = header.ljust(start) + label
    lines = [[(header, "bold")]]
    for row in cells:
        line = []
        for i, ((text, style), width) in enumerate(zip(row, widths)):
            line += [(gaps[i], ""), (text.rjust(width) if i else text.ljust(width), style)]
        lines.append(line)
    if console is not None:
        from rich.text import Text

        for line in lines:
            console.print(Text.assemble(*[(t, s or "") for t, s in line]), soft_wrap=True)
    return "\n".join("".join(t for t, _ in line).rstrip() for line in lines)


def _console():
    """A ``rich`` console when writing to a terminal that supports colour, else None."""
    if not sys.stdout.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    console = Console(highlight=False)
    return console if console.color_system else None


def _empty_selection(args, pool) -> str:
    """The error for filters that select no row: the filters, and what they could have named."""
    filters = [f"--case {args.case!r}"] if args.case else []
    filters += [f"--dtype {d}" for d in args.dtype or ()] + [f"--direction {d}" for d in args.direction or ()]
    filters += ["--only-external"] if args.only_external else []
    names = sorted(c.name for c in pool) + ([] if args.only_external else [GOLDEN_NAME])
    return (
        f"python -m parity_tests: {' '.join(filters) or 'the selection'} selects no row.\n"
        f"Case names (--case matches a substring): {', '.join(names)}.\n"
        f"Dtypes: {', '.join(DTYPES)} (the tutorial golden: float32 only); directions: {', '.join(DIRECTIONS)} "
        "(the tutorial golden: forward only; backward only for cases with differentiable arguments)."
    )


def _progress(mechanism, results, seconds) -> None:
    """One line a mechanism while the report runs, on stderr (stdout is the report)."""
    failed = sum(r.failed for r in results)
    print(f"  {mechanism}: {len(results)} rows, {failed} failed ({seconds:.1f} s)", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["tutorial"]:
        from .tutorial import main as tutorial_main

        return tutorial_main()
    parser = argparse.ArgumentParser(
        prog="python -m parity_tests", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", action="append", default=[], metavar="MODULE",
                        help="import MODULE, which registers its own cases (repeatable)")
    parser.add_argument("--only-external", action="store_true", help="run only the cases the --cases modules registered")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every row, not only the failing ones")
    parser.add_argument("--json", metavar="PATH", help="also write every row as JSON to PATH")
    parser.add_argument("--dtype", action="append", choices=DTYPES, help="only these dtypes (repeatable)")
    parser.add_argument("--direction", action="append", choices=DIRECTIONS, help="only outputs or only gradients")
    parser.add_argument("--case", default="", help="only cases whose name contains this")
    parser.add_argument("--compilation-cache", metavar="DIR",
                        help="keep the compiled programs in DIR (JAX's persistent cache): a repeated run skips compiling")
    args = parser.parse_args(argv)
    if args.only_external and not args.cases:
        parser.error("--only-external needs --cases MODULE")

    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # the small programs too
    start = time.perf_counter()
    ports_before = set(PORTS)
    external = load_cases(*args.cases)
    pool = external if args.only_external else list(REGISTRY.values())
    cases = [c for c in pool if args.case in c.name]
    dtypes, directions = args.dtype or DTYPES, args.direction or DIRECTIONS
    golden = not args.only_external and args.case in GOLDEN_NAME and "float32" in dtypes and "forward" in directions
    ports = [p for name, p in PORTS.items() if args.case in name and (name not in ports_before or not args.only_external)
             and set(p.options.get("dtypes", ("float32",))) & set(dtypes)]
    if not planned_rows(cases, dtypes, directions=directions) and not golden and not ports:
        print(_empty_selection(args, pool), file=sys.stderr)
        return 2
    results = run_all(cases, dtypes=dtypes, directions=directions, progress=_progress)
    if golden:
        results += run_tutorial_golden()
    port_reports = []
    for port in ports:  # check_port on its own sides; the --direction filter does not apply
        port_start = time.perf_counter()
        port_reports.append((port.name, port.check(dtypes if args.dtype else None)))
        print(f"  port {port.name}: {'passed' if port_reports[-1][1].passed else 'FAILED'} "
              f"({time.perf_counter() - port_start:.1f} s)", file=sys.stderr, flush=True)
    failed = [r for r in results if r.failed]
    skipped = [r for r in results if r.skipped]
    failed_ports = [name for name, report in port_reports if not report.passed]

    console = _console()
    text = _render(summary_rows(results), console)
    if console is None:
        print(text)
    print("cells: worst error as % of the tolerance (abs or rel; <= 100 passes), F failed, s skipped, - no such row")
    if failed or args.verbose:
        print("\n" + ("every row:" if args.verbose else "failing rows:"))
        print(format_table(results if args.verbose else failed))
    for reason in sorted({r.skipped for r in skipped}):
        print(f"skipped {sum(r.skipped == reason for r in skipped)} rows: {reason}")
    for name, report in port_reports:
        lines = str(report).splitlines()
        shown = lines if (not report.passed or args.verbose) else lines[:1]
        print(f"\nport {name}: " + "\n".join(shown))
    print(
        f"\n{len(results) - len(failed) - len(skipped)} passed, {len(failed)} failed, {len(skipped)} skipped "
        f"({len(cases)} cases{f', {len(external)} from --cases' if external else ''}"
        f"{f'; ports: {len(port_reports) - len(failed_ports)} passed, {len(failed_ports)} failed' if port_reports else ''}, "
        f"{time.perf_counter() - start:.1f} s; jax {jax.__version__} on {jax.default_backend()}).\nReference: attention_np "
        "in float64; gradients: its VJPs, else central finite differences (float64)."
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"passed": not failed and not failed_ports, "results": [r.as_dict() for r in results],
                       "ports": [{"name": name, "passed": report.passed, "report": str(report)} for name, report in port_reports]},
                      f, indent=1)
    return 1 if failed or failed_ports else 0


if __name__ == "__main__":
    sys.exit(main())
