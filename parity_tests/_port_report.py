"""The report of ``check_port``: one leaf against the float64 reference (:func:`compare_leaf`,
by the harness's one comparison, :func:`parity_tests.tolerance.compare_elements`), and the
printable :class:`PortReport`."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from .tolerance import Tolerance, compare_elements, errors, misplaced

_SHOWN = 3  # NaN/inf positions named per leaf


@dataclasses.dataclass(frozen=True)
class LeafCheck:
    """One output or gradient leaf in one dtype. ``index`` is the worst element's (largest
    error relative to its tolerance, or where NaN/inf is misplaced when only that fails);
    ``source_error`` the source's largest error in the leaf; ``mismatched`` counts the
    elements that fail, ``misplaced`` those of them where the port and the reference are not
    both NaN or the same inf, which ``nonfinite`` describes; ``verdict`` says which side is
    off when it fails."""

    name: str
    dtype: str
    shape: tuple
    mismatched: int
    total: int
    index: tuple = ()
    source: float = np.nan
    port: float = np.nan
    reference: float = np.nan
    abs_error: float = 0.0
    rel_error: float = 0.0
    tolerance: float = 0.0
    source_error: float = 0.0
    nonfinite: str = ""
    verdict: str = ""
    misplaced: int = 0
    problem: str = ""   # structure, shape or dtype mismatch: nothing compared
    where: str = ""     # in a sweep: "size=64 seed=1"

    @property
    def ratio(self) -> float:
        """The worst element's error over its tolerance: <= 1 passes (inf: NaN or a problem)."""
        if self.problem or self.nonfinite:
            return np.inf
        return self.abs_error / self.tolerance if self.tolerance else (np.inf if self.abs_error else 0.0)

    @property
    def passed(self) -> bool:
        return not self.problem and not self.mismatched and not self.nonfinite

    def __str__(self) -> str:
        shape = "" if self.problem and not self.shape else str(self.shape)
        head = " ".join(part for part in ("pass" if self.passed else "FAIL", self.where, self.dtype, self.name, shape) if part)
        if self.problem:
            return f"{head}: {self.problem}"
        if self.passed:
            return (f"{head}: closest to its tolerance at {list(self.index)}, |port - ref| {self.abs_error:.2e} "
                    f"<= {self.tolerance:.2e} (source's max error {self.source_error:.2e})")
        outside = self.mismatched - self.misplaced
        if not self.misplaced:
            lines = [f"{head}: {self.mismatched} of {self.total} elements outside tolerance"]
        else:
            lines = [f"{head}: {self.mismatched} of {self.total} elements fail: {self.misplaced} where NaN/inf do not match "
                     f"the reference's{f', {outside} outside tolerance' if outside else ''}"]
        if outside:
            lines.append(
                f"    worst at {list(self.index)}: source {self.source:.6g}, port {self.port:.6g}, reference "
                f"{self.reference:.6g}; |port - ref| {self.abs_error:.3e}, rel {self.rel_error:.3e}, tolerance {self.tolerance:.3e}")
        if self.nonfinite:
            lines.append(f"    {self.nonfinite}")
        lines.append(f"    {self.verdict}")
        return "\n".join(lines)


@dataclasses.dataclass
class PortReport:
    """What :func:`check_port` found: ``passed``, and ``str(report)`` the per-leaf account."""

    source: str
    port: str
    reference: str
    tolerance: str
    checks: list

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list:
        return [c for c in self.checks if not c.passed]

    @property
    def worst(self) -> LeafCheck | None:
        """The leaf check with the largest error relative to its tolerance (in a sweep: with
        its size and seed)."""
        return max(self.checks, key=lambda c: c.ratio, default=None)

    def __str__(self) -> str:
        failed = self.failures
        lines = [
            f"check_port: {'passed' if not failed else 'FAILED'}, {len(self.checks) - len(failed)} of {len(self.checks)} leaves pass",
            f"  source:    {self.source}",
            f"  port:      {self.port}",
            f"  reference: {self.reference}",
            f"  tolerance: {self.tolerance}",
        ]
        worst = self.worst
        if worst is not None and any(c.where for c in self.checks):
            lines.append(f"  worst:     {worst.where} {worst.dtype} {worst.name}, error {worst.ratio:.3g} x its tolerance")
        lines += [str(c) for c in failed] + [str(c) for c in self.checks if c.passed]
        return "\n".join(lines)


def _paths(tree, prefix: str) -> list:
    """``[(name, leaf)]``: ``output[0]``, ``grad.params.query.kernel``, ``grad.inputs[1]``."""
    def key(k):
        if isinstance(k, jax.tree_util.SequenceKey):
            return f"[{k.idx}]"
        if isinstance(k, jax.tree_util.DictKey):
            return f".{k.key}"
        return f".{getattr(k, 'name', k)}"

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(prefix + "".join(key(k) for k in path), leaf) for path, leaf in flat]


def _value(x) -> str:
    return "NaN" if np.isnan(x) else f"{x:.6g}"


def _nonfinite(a, ref, who) -> str:
    """Which side has NaN/inf where the other has not, a line each way: ``the port has NaN at
    [0, 3] where the reference has 0.51; 4 such elements``."""
    bad = misplaced(a, ref)
    lines = []
    for side, other, here, there, mask in ((who, "the reference", a, ref, bad & ~np.isfinite(a)),
                                           ("reference", f"the {who}", ref, a, bad & np.isfinite(a))):
        if not mask.any():
            continue
        first, *more = [tuple(int(i) for i in ix) for ix in np.argwhere(mask)[:_SHOWN]]
        count = int(mask.sum())
        also = f" (also at {', '.join(str(list(ix)) for ix in more)}{', ...' if count > _SHOWN else ''})" if more else ""
        lines.append(f"the {side} has {_value(here[first])} at {list(first)} where {other} has {_value(there[first])}{also}; "
                     f"{count} such element{'s' if count != 1 else ''}")
    return "\n    ".join(lines)


def compare_leaf(name, dtype, source, port, reference, tolerance, *, sampled=False) -> LeafCheck:
    """One leaf: each element of ``port`` against ``reference`` by ``tolerance`` (a
    :class:`~parity_tests.Tolerance`, or a form :meth:`~parity_tests.Tolerance.of` takes);
    NaN/inf must sit where the reference's do. ``sampled``: the reference is finite
    differences, NaN where not differenced; only the differenced elements are compared."""
    reference = np.asarray(reference, np.float64)
    shape = tuple(reference.shape)
    for who, x in (("port", port), ("source", source)):
        if x is None:
            return LeafCheck(name, dtype, shape, 0, reference.size, problem=f"the {who} has no such leaf")
        if np.shape(x) != shape:
            return LeafCheck(name, dtype, shape, 0, reference.size, problem=f"the {who}'s shape is {np.shape(x)}, the reference's {shape}")
    source, port = np.asarray(source, np.float64), np.asarray(port, np.float64)
    total = reference.size
    if sampled:
        skipped = np.isnan(reference)
        source, port, total = np.where(skipped, np.nan, source), np.where(skipped, np.nan, port), int((~skipped).sum())
    source_err = errors(source, reference)
    finite_source = source_err[np.isfinite(source_err)]
    source_error = float(finite_source.max()) if finite_source.size else 0.0
    port_err, bound, wrong_place, off = compare_elements(port, reference, tolerance, dtype, source_error=source_error)
    nonfinite = _nonfinite(port, reference, "port")
    if not reference.size:
        return LeafCheck(name, dtype, shape, 0, 0, nonfinite=nonfinite)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(np.isfinite(reference) & ~wrong_place, port_err / np.maximum(bound, np.finfo(float).tiny), 0.0)
    if wrong_place.any() and not off.any():  # only NaN/inf fail: the first of them
        ratio = wrong_place.astype(float)
    index = np.unravel_index(int(np.argmax(ratio)), shape)
    ref_i = reference[index]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = float(port_err[index] / abs(ref_i)) if ref_i else float(np.inf if port_err[index] else 0.0)
    check = LeafCheck(
        name, dtype, shape, int((off | wrong_place).sum()), total, tuple(int(i) for i in index), float(source[index]),
        float(port[index]), float(ref_i), float(port_err[index]), rel, float(bound[index]), source_error, nonfinite,
        misplaced=int(wrong_place.sum()))
    if check.passed:
        return check
    return dataclasses.replace(check, verdict=_verdict(source, reference, dtype, index, wrong_place, off))


def _verdict(source, reference, dtype, index, port_misplaced, port_off) -> str:
    """Which side is off: the source measured against the float64 reference at the dtype's
    own tolerance (:meth:`~parity_tests.Tolerance.dtype`), NaN/inf included."""
    budget = Tolerance.dtype()
    atol, rtol = budget.pair(dtype)
    source_err, _, source_misplaced, source_off = compare_elements(source, reference, budget, dtype)
    if source_off.any() or source_misplaced.any():
        source_nonfinite = _nonfinite(source, reference, "source").replace("\n    ", "; ")
        same = not port_off.any() and np.array_equal(port_misplaced, source_misplaced)
        return (f"the source is off from the float64 reference too: {int(source_off.sum())} elements beyond "
                f"{atol:g} + {rtol:g} |ref|{'; ' + source_nonfinite if source_nonfinite else ''}; "
                + ("the port has its NaN/inf at the same elements" if same else "the port is further off"))
    return (f"the port is off: the source is within {atol:g} + {rtol:g} |ref| of the reference everywhere"
            + (", NaN and inf where the reference has them" if port_misplaced.any() else "")
            + (f" (here {source_err[index]:.2e})" if port_off.any() else ""))
