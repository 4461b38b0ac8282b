"""The report of ``check_port``: one leaf against the float64 reference (:func:`compare_leaf`,
by the harness's one comparison, :func:`parity_tests.tolerance.compare_elements`), and the
printable :class:`PortReport`: a verdict line naming the first leaf to fail in the forward
order (probes, outputs, gradients) and the worst, then the failures by severity."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from .tolerance import Tolerance, compare_elements, errors, misplaced

_SHOWN = 3  # NaN/inf positions named per leaf


@dataclasses.dataclass(frozen=True)
class LeafCheck:
    """One probe, output or gradient leaf in one dtype. ``index`` is the worst element's
    (largest error relative to its tolerance, or where NaN/inf is misplaced when only that
    fails); ``source_error`` the source's largest error in the leaf; ``total`` counts the
    elements compared, ``masked`` those ``output_mask`` left out; ``mismatched`` counts the
    elements that fail, ``misplaced`` those of them where the port and the reference are not
    both NaN or the same inf, which ``nonfinite`` describes; ``verdict`` says which side is
    off when it fails. ``untested`` says why a leaf that did not fail proves nothing (every
    element's reference within its tolerance of zero: a port returning zeros would pass;
    or every element masked out): its :attr:`status` is ``"not tested"``."""

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
    masked: int = 0     # elements output_mask leaves out
    untested: str = ""  # why a leaf that did not fail proves nothing

    @property
    def status(self) -> str:
        """``"FAIL"``, ``"not tested"`` (nothing failed, nothing proved: :attr:`untested`) or ``"pass"``."""
        if self.problem or self.mismatched or self.nonfinite:
            return "FAIL"
        return "not tested" if self.untested else "pass"

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    @property
    def ratio(self) -> float:
        """The worst element's error over its tolerance: <= 1 passes (inf: NaN or a problem)."""
        if self.problem or self.nonfinite:
            return np.inf
        return self.abs_error / self.tolerance if self.tolerance else (np.inf if self.abs_error else 0.0)

    @property
    def passed(self) -> bool:
        """Compared and within tolerance everywhere (a leaf :attr:`untested` has not passed, nor failed)."""
        return self.status == "pass"

    def brief(self) -> str:
        """``float32 probe.q at [0, 3, 1, 2]``: the leaf, and its worst element when it has one."""
        where = f" at {list(self.index)}" if self.index and not self.problem else ""
        return " ".join(part for part in (self.where, self.dtype, self.name) if part) + where

    def severity(self) -> str:
        """How far off a failing leaf is: ``8.3e+05 x its tolerance``, or what failed instead."""
        if self.problem:
            return "not compared"
        if np.isfinite(self.ratio):
            return f"{self.ratio:.3g} x its tolerance"
        outside = self.mismatched - self.misplaced
        return f"NaN/inf misplaced{f', {self.abs_error / self.tolerance:.3g} x its tolerance' if outside and self.tolerance else ''}"

    def __str__(self) -> str:
        shape = "" if self.problem and not self.shape else str(self.shape)
        head = " ".join(part for part in (self.status, self.where, self.dtype, self.name, shape) if part)
        if self.masked:
            head += f", {self.masked} of {self.masked + self.total} masked out"
        if self.problem:
            return f"{head}: {self.problem}"
        if self.untested:
            hint = " (a larger cotangent_scale= lifts gradients above it)" if self.name.startswith("grad") else ""
            return f"{head}: {self.untested}{hint}"
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


_STAGES = ("params", "probe", "output", "grad")  # the forward order: the map, probes, outputs, then gradients


@dataclasses.dataclass
class PortReport:
    """What :func:`check_port` found: ``passed`` (no leaf failed), ``failures``, ``untested``,
    ``first_failure`` and ``worst``, and ``str(report)`` the per-leaf account: a verdict line,
    then the failures from the worst, the leaves not tested, and those that pass."""

    source: str
    port: str
    reference: str
    tolerance: str
    checks: list

    @property
    def passed(self) -> bool:
        """No leaf failed (a leaf not tested does not fail the report; it is counted in it)."""
        return not self.failures

    @property
    def failures(self) -> list:
        return [c for c in self.checks if c.failed]

    @property
    def untested(self) -> list:
        """The leaves that did not fail and prove nothing: below the floor, or masked out."""
        return [c for c in self.checks if c.status == "not tested"]

    @property
    def worst(self) -> LeafCheck | None:
        """The leaf check with the largest error relative to its tolerance (in a sweep: with
        its size and seed)."""
        return max(self.checks, key=lambda c: c.ratio, default=None)

    @property
    def first_failure(self) -> LeafCheck | None:
        """The failing leaf first in the forward order: the parameter map, then the probes in
        the order given, the outputs, the gradients (inputs', then parameters'); within a
        leaf, the dtypes and sweep points in the order checked. One bug fails many leaves;
        this one is nearest to where it is."""
        return next((c for c in self.forward_order() if c.failed), None)

    def forward_order(self) -> list:
        """The checks in the forward order (:attr:`first_failure`)."""
        first = {}
        for n, c in enumerate(self.checks):
            for key in (("name", c.name), ("dtype", c.dtype), ("where", c.where)):
                first.setdefault(key, n)
        stage = lambda c: next((i for i, s in enumerate(_STAGES) if c.name.startswith(s)), len(_STAGES))
        return sorted(self.checks, key=lambda c: (stage(c), first["name", c.name], first["dtype", c.dtype],
                                                  first["where", c.where]))

    def verdict(self) -> str:
        """The report's first line: passed or failed, the count, the leaves not tested, and for
        a failure the first leaf to fail in the forward order and the worst one."""
        failed, untested = self.failures, self.untested
        line = (f"check_port: {'passed' if not failed else 'FAILED'}, "
                f"{sum(c.passed for c in self.checks)} of {len(self.checks)} leaves pass")
        if failed:
            line += f", {len(failed)} fail"
        if untested:
            reasons = sorted({c.untested.split(":")[0] for c in untested})
            line += f", {len(untested)} not tested ({', '.join(reasons)})"
        if failed:
            first, worst = self.first_failure, self.worst
            line += f"; first to fail (forward order): {first.brief()}"
            line += f"; worst: {worst.brief()}, {worst.severity()}" if worst is not first else f", also the worst: {worst.severity()}"
        return line

    def __str__(self) -> str:
        ordered = self.forward_order()
        position = {id(c): n for n, c in enumerate(ordered)}
        failed = sorted(self.failures, key=lambda c: (-c.ratio, position[id(c)]))
        lines = [
            self.verdict(),
            f"  source:    {self.source}",
            f"  port:      {self.port}",
            f"  reference: {self.reference}",
            f"  tolerance: {self.tolerance}",
        ]
        worst = self.worst
        if worst is not None and any(c.where for c in self.checks):
            lines.append(f"  worst:     {worst.where} {worst.dtype} {worst.name}, error {worst.ratio:.3g} x its tolerance")
        lines += ([str(c) for c in failed] + [str(c) for c in ordered if c.status == "not tested"]
                  + [str(c) for c in self.checks if c.passed])
        return "\n".join(lines)


def _paths(tree, prefix: str, is_leaf=None) -> list:
    """``[(name, leaf)]``: ``output[0]``, ``grad.params.query.kernel``, ``grad.inputs[1]``."""
    def key(k):
        if isinstance(k, jax.tree_util.SequenceKey):
            return f"[{k.idx}]"
        if isinstance(k, jax.tree_util.DictKey):
            return f".{k.key}"
        return f".{getattr(k, 'name', k)}"

    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
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


def compare_leaf(name, dtype, source, port, reference, tolerance, *, sampled=False, mask=None) -> LeafCheck:
    """One leaf: each element of ``port`` against ``reference`` by ``tolerance`` (a
    :class:`~parity_tests.Tolerance`, or a form :meth:`~parity_tests.Tolerance.of` takes);
    NaN/inf must sit where the reference's do. ``sampled``: the reference is finite
    differences, NaN where not differenced; only the differenced elements are compared.
    ``mask``: a bool array broadcastable to the leaf, False where an element is not compared.
    A leaf that does not fail is :attr:`~LeafCheck.untested` when every compared element of
    the reference is within its tolerance of zero (a port returning zeros would pass), or
    when no element is compared."""
    reference = np.asarray(reference, np.float64)
    shape = tuple(reference.shape)
    for who, x in (("port", port), ("source", source)):
        if x is None:
            return LeafCheck(name, dtype, shape, 0, reference.size, problem=f"the {who} has no such leaf")
        if np.shape(x) != shape:
            return LeafCheck(name, dtype, shape, 0, reference.size, problem=f"the {who}'s shape is {np.shape(x)}, the reference's {shape}")
    source, port = np.asarray(source, np.float64), np.asarray(port, np.float64)
    skipped = np.zeros(shape, bool)
    if sampled:
        skipped = np.isnan(reference)
    masked = 0
    if mask is not None:
        left_out = ~np.broadcast_to(np.asarray(mask, bool), shape)
        masked = int((left_out & ~skipped).sum())
        skipped = skipped | left_out
    # not compared: NaN on every side, which compares equal
    source, port, reference = (np.where(skipped, np.nan, x) for x in (source, port, reference))
    total = int((~skipped).sum())
    source_err = errors(source, reference)
    finite_source = source_err[np.isfinite(source_err)]
    source_error = float(finite_source.max()) if finite_source.size else 0.0
    port_err, bound, wrong_place, off = compare_elements(port, reference, tolerance, dtype, source_error=source_error)
    nonfinite = _nonfinite(port, reference, "port")
    if not reference.size:
        return LeafCheck(name, dtype, shape, 0, 0, nonfinite=nonfinite)
    if not total:
        return LeafCheck(name, dtype, shape, 0, 0, masked=masked, untested="masked out: output_mask leaves out every element")
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
        misplaced=int(wrong_place.sum()), masked=masked)
    if not check.failed:
        return dataclasses.replace(check, untested=_below_floor(reference, bound, skipped, port_err))
    return dataclasses.replace(check, verdict=_verdict(source, reference, dtype, index, wrong_place, off))


def _below_floor(reference, bound, skipped, port_err) -> str:
    """Why the leaf proves nothing, or "": every compared element of the reference is finite
    and within its own tolerance of zero, so that zeros (or any numbers as small) would pass."""
    compared = ~skipped
    if not np.isfinite(reference[compared]).all() or (np.abs(reference[compared]) > bound[compared]).any():
        return ""
    return (f"below the floor: every |ref| is within its tolerance of zero (max |ref| "
            f"{np.abs(reference[compared]).max():.2e}, tolerance {bound[compared].min():.2e} or more), so a port "
            f"returning zeros would pass; |port - ref| at most {port_err[compared].max():.2e}")


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
