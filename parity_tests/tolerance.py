r"""What "equal" means in the harness: :class:`Tolerance` and the one comparison,
:func:`compare_elements`, that the registry's rows, ``check_port``'s leaves and its verdicts
all call.

An element of ``actual`` passes against the float64 ``reference`` when

.. math::
    |x - r| \le f\,e + a + b\,|r| \quad (\texttt{combine="sum"}), \qquad
    |x - r| \le a \ \text{or}\ |x - r| / |r| \le b \quad (\texttt{combine="or"})

with ``(a, b) = (atol, rtol)`` of the row's dtype, and :math:`f e` the "no worse than the
source" term: ``factor`` times the source's own largest error in the leaf (no factor: no
term). NaN and inf must sit where the reference has them. The numbers of the contract live
here too: :data:`TOLERANCES` (docs/design.md section 5, the registry's rows, abs or rel),
:data:`PORT_TOLERANCES` and :data:`SOURCE_FLOOR` (``check_port``), :data:`FD_TOLERANCE`
(central finite differences, see ``parity_tests/gradients.py``).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

# docs/design.md section 5: max abs or rel error allowed against the NumPy float64 reference.
TOLERANCES = {"float64": 1e-12, "float32": 1e-5, "float16": 5e-3, "bfloat16": 2e-2}
# check_port's "dtype" mode: (atol, rtol) per dtype, |x - r| <= atol + rtol |r| (the convention
# of numpy.testing.assert_allclose and chex).
PORT_TOLERANCES = {"float64": (1e-10, 1e-10), "float32": (1e-5, 1e-4), "float16": (2e-3, 1e-2), "bfloat16": (2e-2, 5e-2)}
# check_port's "source" mode: SOURCE_FACTOR times the source's own largest error in the leaf
# (same dtype, same inputs), plus the floor (atol, rtol).
SOURCE_FACTOR = 4.0
SOURCE_FLOOR = {"float64": (1e-12, 1e-10), "float32": (1e-7, 1e-6), "float16": (1e-4, 1e-3), "bfloat16": (1e-3, 1e-2)}
# Central finite differences (h = 1e-5) are good to ~1e-9 in float64 (parity_tests/gradients.py
# says why): abs or rel in the registry, and the least atol and rtol of check_port against them.
FD_TOLERANCE = 1e-6

COMBINES = ("sum", "or")


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How far from the float64 reference an element may be: ``atol`` and ``rtol`` per dtype,
    combined as a sum (``"sum"``: ``|x - r| <= atol + rtol |r|``) or as either one (``"or"``:
    abs error within ``atol`` or rel error within ``rtol``, the registry's rule), plus, with a
    ``factor``, that many times the source's own largest error in the leaf (``check_port``'s
    "no worse than the source" mode).

    Attributes:
      atol, rtol: one number for every dtype, or ``{dtype: number}``.
      factor: None, or the multiple of the source's error the bound grows by (needs "sum").
      combine: ``"sum"`` or ``"or"``.

    :meth:`of` turns the short forms that ``check_port(tolerance=...)`` and the registry take
    into one::

        >>> Tolerance.of("dtype").pair("bfloat16")              # check_port's fixed budget
        (0.02, 0.05)
        >>> Tolerance.of((0.0, 2e-5)) == Tolerance(atol=0.0, rtol=2e-5)
        True
        >>> Tolerance.of(1e-5)                                   # one number: abs or rel
        Tolerance(atol=1e-05, rtol=1e-05, factor=None, combine='or')
    """

    atol: float | Mapping[str, float]
    rtol: float | Mapping[str, float]
    factor: float | None = None
    combine: str = "sum"

    def __post_init__(self):
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {', '.join(map(repr, COMBINES))}; got {self.combine!r}")
        if self.factor is not None and self.combine != "sum":
            raise ValueError("factor adds the source's error to atol + rtol |ref|: it needs combine='sum'")
        for name in ("atol", "rtol"):  # a copy: a frozen tolerance is not changed through the caller's dict
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, dict(value))
            elif not _is_number(value):
                raise TypeError(f"{name} must be a number or {{dtype: number}}; got {value!r}")

    # --- the named tolerances ---------------------------------------------------------------------
    @classmethod
    def dtype(cls) -> Tolerance:
        """``check_port``'s fixed budget per dtype, :data:`PORT_TOLERANCES`."""
        return cls({d: a for d, (a, _) in PORT_TOLERANCES.items()}, {d: r for d, (_, r) in PORT_TOLERANCES.items()})

    @classmethod
    def source(cls, factor: float = SOURCE_FACTOR) -> Tolerance:
        """The "no worse than the source" mode: ``factor`` times its error, plus :data:`SOURCE_FLOOR`."""
        return cls({d: a for d, (a, _) in SOURCE_FLOOR.items()}, {d: r for d, (_, r) in SOURCE_FLOOR.items()}, factor)

    @classmethod
    def abs_or_rel(cls, tol) -> Tolerance:
        """The registry's rule: abs error or rel error within ``tol`` (a number, or ``{dtype: number}``)."""
        return cls(tol, tol, combine="or")

    @classmethod
    def of(cls, tolerance) -> Tolerance:
        """A :class:`Tolerance` from any form the harness takes: a Tolerance; ``"source"``;
        ``"dtype"``; a number (abs or rel, as the registry's); ``(atol, rtol)``; or a dict
        of either per dtype, ``{dtype: (atol, rtol)}`` or ``{dtype: number}``."""
        if isinstance(tolerance, Tolerance):
            return tolerance
        if isinstance(tolerance, str) and tolerance in ("source", "dtype"):
            return cls.source() if tolerance == "source" else cls.dtype()
        if _is_number(tolerance):
            return cls.abs_or_rel(tolerance)
        if _is_pair(tolerance):
            return cls(*tolerance)
        if isinstance(tolerance, Mapping) and tolerance:
            values = list(tolerance.values())
            if all(map(_is_pair, values)):
                return cls({d: a for d, (a, _) in tolerance.items()}, {d: r for d, (_, r) in tolerance.items()})
            if all(map(_is_number, values)):
                return cls.abs_or_rel(dict(tolerance))
        raise ValueError(f"tolerance must be 'source', 'dtype', a Tolerance, a number (abs or rel), (atol, rtol), "
                         f"{{dtype: (atol, rtol)}} or {{dtype: number}}; got {tolerance!r}")

    # --- reading it -------------------------------------------------------------------------------
    def pair(self, dtype: str | None = None) -> tuple:
        """``(atol, rtol)`` of ``dtype`` (any dtype, or None, when both are one number)."""
        return self._one("atol", dtype), self._one("rtol", dtype)

    def _one(self, name, dtype):
        value = getattr(self, name)
        if not isinstance(value, Mapping):
            return value
        if dtype not in value:
            raise ValueError(f"the tolerance has no {name} for {dtype}; it has {', '.join(map(str, value))}")
        return value[dtype]

    def at_least(self, tol: float) -> Tolerance:
        """The same with every atol and rtol raised to ``tol`` at least (a reference good to ``tol`` only)."""
        def raised(value):
            return {d: max(v, tol) for d, v in value.items()} if isinstance(value, Mapping) else max(value, tol)

        return dataclasses.replace(self, atol=raised(self.atol), rtol=raised(self.rtol))

    def bound(self, reference, dtype: str | None = None, source_error: float = 0.0) -> np.ndarray:
        """The error each element of ``reference`` is allowed (for ``"or"``, ``max(atol, rtol |r|)``)."""
        atol, rtol = self.pair(dtype)
        scaled = rtol * np.abs(np.asarray(reference, np.float64))
        if self.combine == "or":
            return np.maximum(atol, scaled)
        if self.factor is None:
            return atol + scaled
        return self.factor * source_error + atol + scaled

    def describe(self, dtypes) -> str:
        """One line for a report: the rule and its numbers in ``dtypes``."""
        if self.factor is not None:
            return (f"'source': |port - ref| <= {self.factor:g} x (the source's max error in the leaf) + atol + rtol |ref|, "
                    f"floor (atol, rtol) {', '.join(f'{d} {self.pair(d)}' for d in dtypes)}")
        per_dtype = isinstance(self.atol, Mapping) or isinstance(self.rtol, Mapping)
        table = {d: self.pair(d) for d in dtypes} if per_dtype else self.pair()
        if self.combine == "or":
            return f"|port - ref| <= atol or |port - ref| / |ref| <= rtol: {table}"
        return f"|port - ref| <= atol + rtol |ref|: {table}"


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_pair(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and all(map(_is_number, x))


# --- the comparison ---------------------------------------------------------------------------------
class Elements(NamedTuple):
    """What :func:`compare_elements` found, element by element (arrays of the reference's shape)."""

    error: np.ndarray      # |actual - reference|, 0 where both are NaN or the same inf
    bound: np.ndarray      # the error the element is allowed
    misplaced: np.ndarray  # NaN or inf on one side where the other has not the same
    outside: np.ndarray    # finite on both sides, and beyond its bound

    @property
    def passed(self) -> bool:
        return not (self.misplaced.any() or self.outside.any())


def errors(actual, reference) -> np.ndarray:
    """``|actual - reference|`` in float64, 0 where both are NaN or the same inf."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    with np.errstate(invalid="ignore"):
        return np.where((actual == reference) | (np.isnan(actual) & np.isnan(reference)), 0.0, np.abs(actual - reference))


def misplaced(actual, reference) -> np.ndarray:
    """Where ``actual`` and ``reference`` are not both finite, both NaN or the same inf."""
    with np.errstate(invalid="ignore"):
        same = ((np.isfinite(actual) & np.isfinite(reference)) | (np.isnan(actual) & np.isnan(reference))
                | (np.isinf(actual) & (actual == reference)))
    return ~same


def compare_elements(actual, reference, tolerance, dtype: str | None = None, *, source_error: float = 0.0) -> Elements:
    """``actual`` against the float64 ``reference``, element by element, by ``tolerance`` (a
    :class:`Tolerance` or any form :meth:`Tolerance.of` takes) in ``dtype``; ``source_error``
    is the source's largest error in the leaf, for a tolerance with a ``factor``.

    >>> reference = np.array([1.0, 100.0, 0.0])
    >>> actual = reference + np.array([3e-5, 3e-4, np.nan])
    >>> compare_elements(actual, reference, Tolerance(atol=1e-5, rtol=1e-5, combine="or")).outside
    array([ True, False, False])
    >>> compare_elements(actual, reference, Tolerance(atol=1e-5, rtol=1e-5, combine="or")).misplaced
    array([False, False,  True])

    (``3e-4`` is off by ``3e-6`` relative to ``100``: within ``rtol``; ``3e-5`` is neither.)
    """
    tolerance = Tolerance.of(tolerance)
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    error = errors(actual, reference)
    bound = tolerance.bound(reference, dtype, source_error)
    if tolerance.combine == "or":  # the rel error itself, as docs/design.md words the rule
        atol, rtol = tolerance.pair(dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            within = (error <= atol) | (error / np.abs(reference) <= rtol)
    else:
        within = error <= bound
    wrong_place = misplaced(actual, reference)
    return Elements(error, bound, wrong_place, ~wrong_place & np.isfinite(reference) & ~within)
