"""``check_port``: is a port of a function or module to another framework equal to its source,
values and gradients, in the dtypes it will run in?

Both sides run on the same rounded inputs and are compared, leaf by leaf, with a float64
reference (the source run in float64, or ``reference=``). Gradients are those of
``L = sum(cotangent * outputs)`` under one seeded cotangent, with respect to every floating
input and, through a parameter map, every parameter. A failing leaf is reported with its
path, how many elements are off, the worst element's index and values, which side has NaN or
inf where the other has not, and which side is off from the reference; the report opens with
the first leaf to fail in the forward order (probes, the named intermediate values, before
outputs, outputs before gradients) and the worst. See ``docs/ports.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers

import jax
import numpy as np

from ._port_report import LeafCheck, PortReport, _paths  # noqa: F401  (LeafCheck: part of this module's interface)
from ._port_trees import (
    _compare_probe,
    _compare_trees,
    _like,
    _mapped,
    _output_masks,
    _parameter_names,
    _unmapped,
)
from ._sides import Side, round_floats
from .gradients import NP_DTYPES, cast_floats, draw_cotangent
from .tolerance import (  # noqa: F401  (the tolerances are part of this module's interface)
    FD_TOLERANCE,
    PORT_TOLERANCES,
    SOURCE_FACTOR,
    SOURCE_FLOOR,
    Tolerance,
)


def check_port(source, port, inputs, *, kwargs=None, port_kwargs=None, frameworks=("torch", "jax"), dtypes=("float32",),
               gradients=True, tolerance="source", seed=0, reference=None, params=None, sizes=None, seeds=None,
               ignore_params=(), output_mask=None, cotangent_scale=1.0, probes=None) -> PortReport:
    r"""Check that ``port`` computes what ``source`` computes, values and gradients.

    Each dtype row rounds ``inputs`` to the dtype once and gives the same numbers to both
    sides (each in its own framework: ``torch.bfloat16`` for PyTorch, ``jnp.bfloat16`` for
    JAX) and to the reference in float64. Gradients are those of
    :math:`L = \sum \bar y \cdot y(x, \theta)` for one cotangent :math:`\bar y` drawn from
    ``seed`` (standard normal, rounded to the dtype), with respect to every floating input
    and every parameter. Every output and gradient leaf passes when every element does, by
    ``tolerance``, a :class:`~parity_tests.Tolerance` or one of its short forms:

    - ``"source"`` (default, :meth:`Tolerance.source`), "is my port no worse than the original?":
      :math:`|p_i - r_i| \le 4 e + a + b |r_i|` where :math:`e` is the source's own largest
      error against the reference in that leaf and :math:`(a, b)` a small floor per dtype
      (:data:`SOURCE_FACTOR`, :data:`SOURCE_FLOOR`);
    - ``"dtype"`` (:meth:`Tolerance.dtype`): :math:`|p_i - r_i| \le a + b |r_i|` with
      :data:`PORT_TOLERANCES`; or your own ``(atol, rtol)``, or ``{dtype: (atol, rtol)}``.

    NaN and inf must sit where the reference's do. Rounding to a dtype clips finite values to
    its finite range first (``finfo(float32).min`` stays finite in bfloat16). A leaf that does
    not fail but whose reference is within its tolerance of zero everywhere (a port returning
    zeros would pass: gradients of 1e-10 in float32) is "not tested (below the floor)": it
    does not fail the report, and the report counts and lists it.

    Args:
      source, port: callables (NumPy, JAX or PyTorch), ``torch.nn.Module`` or
        ``flax.nnx.Module``; called as ``fn(*inputs, **kwargs)`` and returning an array or
        a tree of arrays (the same leaves on both sides): tuples, lists, dicts, and any
        ``Mapping`` (Hugging Face's ``ModelOutput``), namedtuple or dataclass, compared as
        the dict or tuple it is.
      inputs: tuple of float64 NumPy arrays (or pytrees of them, e.g. a params dict);
        bool and int arrays pass unrounded and are not differentiated. (A callable
        ``(rng, size) -> tuple`` with ``sizes`` and ``seeds`` sweeps: :func:`sweep_port`.)
      kwargs: options for both sides (masks, flags): NumPy arrays are rounded to the dtype
        (floats) and converted to the side's framework, not differentiated; anything else
        (``is_causal=True``, ``local_window_size=(1, 0)``, None, strings) is passed as it is.
      port_kwargs: the port's options when they differ from the source's (default ``kwargs``).
      frameworks: ``(source's, port's)`` or ``(source's, port's, reference's)``, each
        ``"numpy"``, ``"jax"`` or ``"torch"``.
      dtypes: the rows, any of ``"float64"``, ``"float32"``, ``"float16"``, ``"bfloat16"``.
      gradients: also compare gradients. A NumPy side's gradients are central finite
        differences in float64 (64 elements a leaf); below float64 it has none, and its
        gradient leaves are checked at ``tolerance="dtype"`` against the reference.
      tolerance: a :class:`~parity_tests.Tolerance`, ``"source"``, ``"dtype"``, ``(atol,
        rtol)``, ``{dtype: (atol, rtol)}``, or a number (abs or rel error within it, the
        registry's rule); see :meth:`Tolerance.of`.
      seed: seeds the cotangent (and the finite-difference samples).
      reference: the float64 reference (default: ``source``), a callable like a side.
      params: the parameter map of a module source, e.g.
        ``attention_jax.multi_head_params_from_torch``: it takes the source's parameters
        (``{name: array}``) and returns the port's; the port is then called as
        ``port(params, *inputs, **kwargs)`` (a function) or with them loaded (an
        ``nnx.Module``), in every dtype. It must only reshape, transpose, split or rename,
        so that it maps the source's parameter gradients too: they are compared with the
        port's leaf by leaf (``grad.params.query.kernel``). Every element of every source
        parameter must reach the port's parameters: one the map leaves out, in whole or in
        part, is named in the report and fails it, as its gradient would never be compared.
      ignore_params: names of source parameters the map may leave out (PyTorch's
        ``named_parameters()`` names, ``"norm.bias"``; for an ``nnx.Module`` the dotted path,
        ``"query.kernel"``), e.g. a bias the port has no place for; needs ``params``.
      sizes, seeds: the sweep of :func:`sweep_port`, with ``inputs`` its ``build``
        (``seeds`` defaults to ``(seed,)``).
      output_mask: the output elements that are compared: a bool array broadcastable to
        every output, or a tree of the outputs' structure of such arrays (None: all of that
        output). Where it is False an element is not compared and its cotangent is 0, so its
        value reaches no gradient: rows that mean something else in the source (a fully
        padded query: the mean of the values in Hugging Face, zeros here) are left out.
      cotangent_scale: the cotangent's standard deviation (default 1): the size of the
        upstream gradient, to lift gradients that are below the floor at 1.
      probes: ``{name: (source's, port's)}`` (a third entry, the reference's, with
        ``reference=``): intermediate values compared like outputs, values only, before the
        outputs in the report (``probe.name``). Each entry is a name, or ``(name, transform)``
        with ``transform`` applied to the value as NumPy (``lambda q: q.swapaxes(1, 2)``); the
        name is, for a ``torch.nn.Module``, the dotted name of a submodule (its output, by a
        forward hook; a tuple when it is called more than once), for an ``nnx.Module`` the
        dotted path of an ``nnx.Intermediate`` it sows (``self.sow(nnx.Intermediate, "q",
        q)``, read through ``nnx.capture``), and for a function a key of its dict output,
        taken out of the outputs compared.

    Returns:
      a :class:`PortReport`: ``.passed``, ``.failures``, ``.untested``, ``.first_failure``,
      ``str(report)``.

    Example (NumPy prototype -> JAX)::

        >>> import numpy as np, jax.numpy as jnp
        >>> x = np.random.default_rng(0).normal(size=(2, 5))
        >>> report = check_port(lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
        ...                     lambda x: jax.nn.softmax(x, axis=-1), (x,), frameworks=("numpy", "jax"))
        >>> report.passed
        True
    """
    options = dict(kwargs=kwargs, port_kwargs=port_kwargs, frameworks=frameworks, dtypes=dtypes, gradients=gradients,
                   tolerance=tolerance, reference=reference, params=params, ignore_params=ignore_params,
                   output_mask=output_mask, cotangent_scale=cotangent_scale, probes=probes)
    if callable(inputs):
        if not sizes:
            raise ValueError("inputs is a callable (rng, size) -> inputs: pass sizes=[...] (and seeds=[...]) to sweep")
        return sweep_port(source, port, inputs, sizes, seeds=(seed,) if seeds is None else seeds, **options)
    _check_inputs(inputs)
    if sizes is not None or seeds is not None:
        raise ValueError("sizes and seeds need inputs as a callable (rng, size) -> tuple of arrays")
    return _check_port(source, port, [(tuple(inputs), seed, "")], **options)


def sweep_port(source, port, build, sizes, *, seeds=(0,), **options) -> PortReport:
    """:func:`check_port` over many inputs: ``build(rng, size)`` returns the inputs for every
    ``size`` of ``sizes`` (any values ``build`` understands: ``64``, ``(2, 64)``,
    ``{"T": 64}``) and every seed of ``seeds``, with ``rng = numpy.random.default_rng(seed)``;
    the seed also draws the cotangent. Every leaf check is tagged ``size=... seed=...``, and
    :attr:`PortReport.worst` is the one furthest from its tolerance. ``options`` are
    :func:`check_port`'s (``frameworks``, ``dtypes``, ``tolerance``, ``params``, ...),
    except ``seed``.

    Example::

        >>> import numpy as np, jax
        >>> softmax = lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)
        >>> report = sweep_port(softmax, lambda x: jax.nn.softmax(x, axis=-1), lambda rng, T: (rng.normal(size=(2, T)),),
        ...                     sizes=[3, 64], seeds=[0, 1], frameworks=("numpy", "jax"))
        >>> report.passed, len(report.checks)   # 2 sizes x 2 seeds x (the output, the input's gradient)
        (True, 8)
    """
    if not callable(build):
        raise TypeError(f"build must be a callable (rng, size) -> tuple of arrays; got {type(build).__name__}")
    unknown = sorted(set(options) - (set(inspect.signature(_check_port).parameters) - {"source", "port", "runs"}))
    if unknown:
        raise TypeError(f"sweep_port takes check_port's options except seed (each seed of seeds draws the inputs and "
                        f"the cotangent); got {', '.join(unknown)}")

    def runs():  # built as they are checked: a failing build names its size
        for size in sizes:
            for s in seeds:
                built = build(np.random.default_rng(s), size)
                _check_inputs(built, f"inputs(rng, {size!r})")
                yield tuple(built), s, f"size={size!r} seed={s}"

    return _check_port(source, port, runs(), **options)


def _check_port(source, port, runs, *, kwargs=None, port_kwargs=None, frameworks=("torch", "jax"), dtypes=("float32",),
                gradients=True, tolerance="source", reference=None, params=None, ignore_params=(), output_mask=None,
                cotangent_scale=1.0, probes=None) -> PortReport:
    """The report of ``source`` and ``port`` on each ``(inputs, seed, where)`` of ``runs``."""
    kwargs = dict(kwargs or {})
    port_kwargs = kwargs if port_kwargs is None else dict(port_kwargs)
    if len(frameworks) not in (2, 3):
        raise ValueError(f"frameworks must name 2 or 3 frameworks (source, port[, reference]); got {frameworks!r}")
    for d in dtypes:
        if d not in NP_DTYPES:
            raise ValueError(f"dtypes must be among {', '.join(NP_DTYPES)}; got {d!r}")
    tolerance = Tolerance.of(tolerance)
    for d in dtypes:
        tolerance.pair(d)  # a tolerance per dtype must name every dtype checked
    if params is not None and not callable(params):
        raise TypeError(f"params must be a callable that maps the source's parameters to the port's; got {type(params).__name__}")
    if isinstance(ignore_params, str):
        ignore_params = (ignore_params,)
    ignore_params = tuple(ignore_params or ())
    if ignore_params and params is None:
        raise ValueError("ignore_params names source parameters a parameter map leaves out: it needs params=")
    if not isinstance(cotangent_scale, numbers.Real) or isinstance(cotangent_scale, bool) \
            or not (np.isfinite(cotangent_scale) and cotangent_scale > 0):
        raise ValueError(f"cotangent_scale must be a positive finite number; got {cotangent_scale!r}")
    per_side = _probe_entries(probes, reference is not None)
    src = Side.make(source, frameworks[0], "source", per_side[0])
    prt = Side.make(port, frameworks[1], "port", per_side[1])
    ref = src if reference is None else Side.make(reference, frameworks[2] if len(frameworks) == 3 else frameworks[0],
                                                  "reference", per_side[2])
    if params is not None:
        if src.params is None:
            raise ValueError("params: a parameter map needs a module source (torch.nn.Module or nnx.Module)")
        prt.params = _mapped(params, src.params)
        unknown = sorted(set(ignore_params) - {name for name, _ in _parameter_names(src.params)})
        if unknown:
            raise ValueError(f"ignore_params: the source has no parameters {', '.join(unknown)}; "
                             f"its parameters are {', '.join(name for name, _ in _parameter_names(src.params))}")
    run = _Run(src, prt, ref, params, kwargs, port_kwargs, gradients, tolerance, output_mask, float(cotangent_scale))
    checks = [] if params is None else _unmapped(params, src.params, ignore_params)
    for inputs, seed, where in runs:
        for dtype in dtypes:
            checks += [dataclasses.replace(c, where=where) if where else c for c in run.check(inputs, dtype, seed)]
    label = "the source" if reference is None else ref.label
    return PortReport(src.label, prt.label, f"{label} in float64 on the same rounded inputs", tolerance.describe(dtypes), checks)


def _probe_entries(probes, has_reference) -> tuple:
    """``probes={name: (source's, port's[, reference's])}`` as one ``{name: entry}`` a side."""
    if probes is None:
        return {}, {}, {}
    if not isinstance(probes, dict):
        raise TypeError(f"probes must be a dict {{name: (source's, port's)}}; got {type(probes).__name__}")
    sides = ({}, {}, {})
    for name, entries in probes.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"probes: each name must be a non-empty str; got {name!r}")
        if not isinstance(entries, (tuple, list)) or len(entries) not in (2, 3):
            raise TypeError(f"probes[{name!r}] must be (source's, port's) or (source's, port's, reference's), each a "
                            f"name or (name, transform); got {entries!r}")
        if has_reference and len(entries) == 2:
            raise ValueError(f"probes[{name!r}]: with reference= each probe needs a third entry, where the "
                             f"reference's value is read")
        if not has_reference and len(entries) == 3:
            raise ValueError(f"probes[{name!r}] has a third entry, the reference's: it needs reference=")
        for side, entry in zip(sides, entries):
            side[name] = entry
    if not has_reference:
        sides = (sides[0], sides[1], sides[0])
    return sides


def _check_inputs(inputs, what="inputs"):
    if not isinstance(inputs, (tuple, list)):
        raise TypeError(f"{what} must be a tuple of NumPy arrays; got {type(inputs).__name__}")
    for i, x in enumerate(jax.tree.leaves(tuple(inputs))):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{what} must hold NumPy arrays (float64, or bool/int); leaf {i} is {type(x).__name__}")


@dataclasses.dataclass
class _Run:
    """One port's sides and options; :meth:`check` compares them on one set of inputs in one dtype."""

    src: Side
    prt: Side
    ref: Side
    params: object
    kwargs: dict
    port_kwargs: dict
    gradients: bool
    tolerance: Tolerance
    output_mask: object = None
    cotangent_scale: float = 1.0

    def check(self, inputs, dtype, seed) -> list:
        src, prt, ref, mapped = self.src, self.prt, self.ref, self.params
        # both sides get the same rounded numbers; the reference computes on them in float64
        rounded = round_floats(inputs, dtype)
        rounded_kwargs, rounded_port_kwargs = round_floats((self.kwargs, self.port_kwargs), dtype)
        ref_in, ref_kwargs = cast_floats((rounded, rounded_kwargs), "float64")
        ref_side = ref if ref.params is None else dataclasses.replace(
            ref, params=cast_floats(round_floats(ref.params, dtype), "float64"))
        reference_out, _, reference_probes = ref_side.run(ref_in, ref_kwargs, "float64")
        masks = _output_masks(self.output_mask, reference_out)
        cot = reference_grad = None
        fd_rng = lambda: np.random.default_rng([seed, 2])
        if self.gradients:
            # the upstream gradient: cotangent_scale x standard normal, 0 where an output is not compared
            drawn = jax.tree.map(lambda c: self.cotangent_scale * c, draw_cotangent(seed, reference_out))
            if masks:
                names = [name for name, _ in _paths(reference_out, "output")]
                drawn = jax.tree.unflatten(jax.tree.structure(drawn), [
                    c if masks.get(name) is None else np.where(masks[name], c, 0.0)
                    for name, c in zip(names, jax.tree.leaves(drawn))])
            cot = round_floats(drawn, dtype)
            reference_grad = ref_side.run(ref_in, ref_kwargs, "float64", cast_floats(cot, "float64"), fd_rng()).grads
        source_out, source_grad, source_probes = src.run(rounded, rounded_kwargs, dtype, cot, fd_rng())
        port_out, port_grad, port_probes = prt.run(rounded, rounded_port_kwargs, dtype, cot, fd_rng())
        source_out, port_out = (_like(reference_out, out, side) for out, side in ((source_out, src), (port_out, prt)))
        checks = []
        for name in reference_probes:  # forward only: values, in the order given
            checks += _compare_probe(f"probe.{name}", dtype, source_probes[name], port_probes[name],
                                     reference_probes[name], self.tolerance)
        checks += _compare_trees("output", dtype, source_out, port_out, reference_out, self.tolerance, masks=masks)
        if self.gradients:
            if mapped is not None:  # the source's parameter gradients in the port's layout
                source_grad, reference_grad = (g if g is None else {**g, "params": _mapped(mapped, g["params"])}
                                               for g in (source_grad, reference_grad))
            else:  # no map: each side's own weights, its inputs' gradients only
                source_grad, reference_grad, port_grad = (g if g is None else {**g, "params": None}
                                                          for g in (source_grad, reference_grad, port_grad))
            checks += _compare_trees("grad", dtype, source_grad, port_grad, reference_grad, self.tolerance,
                                     sampled=ref.framework == "numpy")
        return checks


def assert_port(*args, **kwargs) -> PortReport:
    """:func:`check_port`, raising ``AssertionError(str(report))`` when it fails; returns the report."""
    report = check_port(*args, **kwargs)
    if not report.passed:
        raise AssertionError(str(report))
    return report


# --- ports in the report ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PortCase:
    """A port that ``python -m parity_tests`` checks beside the registered cases:
    ``check_port(source, port, inputs, **options)``."""

    name: str
    source: object
    port: object
    inputs: object
    options: dict

    def check(self, dtypes=None) -> PortReport:
        """The port's report; ``dtypes`` (the report's ``--dtype``) narrows the port's own."""
        options = dict(self.options)
        if dtypes is not None:
            options["dtypes"] = tuple(d for d in options.get("dtypes", ("float32",)) if d in dtypes)
        return check_port(self.source, self.port, self.inputs, **options)


PORTS: dict[str, PortCase] = {}


def register_port(name: str, source, port, inputs, **options) -> PortCase:
    """Add a port to ``python -m parity_tests`` (for a module given to ``--cases``): the report
    runs :func:`check_port` with these arguments, prints each failing leaf, and exits 1 when
    it fails. Returns the :class:`PortCase`::

        register_port("my_attention torch->jax", TorchAttention(16, 4), my_port, (x,),
                      dtypes=("float32", "bfloat16"), params=my_map)
    """
    if name in PORTS:
        raise ValueError(f"a port named {name!r} is registered already")
    PORTS[name] = PortCase(name, source, port, inputs, options)
    return PORTS[name]
