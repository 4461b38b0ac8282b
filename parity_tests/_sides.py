"""The two sides of a port, whatever their framework: run a NumPy, JAX or PyTorch callable (or
a ``torch.nn.Module``, or a Flax ``nnx.Module``) on NumPy inputs in one dtype, and return its
outputs and its gradients as NumPy arrays.

Gradients are those of ``L = sum(cotangent * outputs)`` with respect to every floating input
leaf and every parameter: PyTorch autograd for PyTorch, ``jax.vjp`` for JAX, central finite
differences in float64 for NumPy. PyTorch is imported only when a side is PyTorch.

A side may also give named intermediate values, its probes (:class:`Probe`): the output of a
submodule of a ``torch.nn.Module`` (a forward hook), an ``nnx.Intermediate`` an ``nnx.Module``
sows (read through ``nnx.capture``), or a key of a function's dict output (then taken out of
its outputs). They are values only: no cotangent reaches them.

Outputs are compared as the plain trees they are: a ``Mapping`` of any class (Hugging Face's
``ModelOutput``, an ``OrderedDict`` subclass) as a ``dict``, a dataclass as the ``dict`` of its
fields (:func:`plain_tree`), where ``jax.tree`` would take each for one leaf; a namedtuple as
the tuple it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Mapping
from typing import NamedTuple

import jax
import ml_dtypes
import numpy as np

from .gradients import FD_SAMPLES, NP_DTYPES, central_differences, is_float, weighted_sum

FRAMEWORKS = ("numpy", "jax", "torch")


def _torch_module_type():
    torch = sys.modules.get("torch")  # a torch.nn.Module exists only if torch was imported
    return None if torch is None else torch.nn.Module


def _nnx_module_type():
    flax_nnx = sys.modules.get("flax.nnx")
    return None if flax_nnx is None else flax_nnx.Module


def describe(fn) -> str:
    """``MultiheadAttention`` for a module, the qualified name of a function."""
    if _torch_module_type() and isinstance(fn, _torch_module_type()) or _nnx_module_type() and isinstance(fn, _nnx_module_type()):
        return type(fn).__name__
    return getattr(fn, "__qualname__", None) or type(fn).__name__


@dataclasses.dataclass(frozen=True)
class Probe:
    """Where one side's value of a probe is read: ``where``, the dotted name of a submodule of
    a ``torch.nn.Module`` (its output, by a forward hook), the dotted path of an
    ``nnx.Intermediate`` an ``nnx.Module`` sows, or a key of a function's dict output; and
    ``transform``, None or a function applied to the value as NumPy arrays (a layout change,
    one entry of a tuple) before it is compared."""

    where: str
    transform: object = None

    @classmethod
    def of(cls, spec, what: str) -> Probe:
        """``"name"`` or ``("name", transform)``."""
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str) and callable(spec[1]):
            return cls(spec[0], spec[1])
        raise TypeError(f"{what} must be a name (str) or (name, transform); got {spec!r}")


class Ran(NamedTuple):
    """What :meth:`Side.run` returns, as NumPy: the outputs, the gradients (None without a
    cotangent, or where the side has none) and ``{name: value}`` of the side's probes."""

    outputs: object
    grads: object
    probes: dict


@dataclasses.dataclass
class Side:
    """A callable in one framework. ``params`` (flat ``{name: float64 array}``) are the
    module's parameters, or those the parameter map gives the port, or None; a function
    with params is called as ``fn(params, *inputs, **kwargs)``. ``probes`` is ``{name:
    Probe}``, the intermediate values it reports."""

    fn: object
    framework: str
    params: dict | None = None
    label: str = ""
    probes: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def make(cls, fn, framework: str, argument: str, probes=None) -> Side:
        if framework not in FRAMEWORKS:
            raise ValueError(f"frameworks: {argument}'s framework must be one of {', '.join(FRAMEWORKS)}; got {framework!r}")
        if not callable(fn):
            raise TypeError(f"{argument} must be a callable or a module; got {type(fn).__name__}")
        torch_module, nnx_module = _torch_module_type(), _nnx_module_type()
        params = None
        if torch_module is not None and isinstance(fn, torch_module):
            if framework != "torch":
                raise ValueError(f"{argument} is a torch.nn.Module; its framework must be 'torch', got {framework!r}")
            params = {name: p.detach().cpu().double().numpy() for name, p in fn.named_parameters()}
        elif nnx_module is not None and isinstance(fn, nnx_module):
            if framework != "jax":
                raise ValueError(f"{argument} is a flax nnx.Module; its framework must be 'jax', got {framework!r}")
            from flax import nnx

            params = jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(nnx.state(fn, nnx.Param)))
        side = cls(fn, framework, params, f"{framework} {describe(fn)}",
                   {name: Probe.of(spec, f"probes[{name!r}]'s {argument} entry") for name, spec in (probes or {}).items()})
        if torch_module is not None and isinstance(fn, torch_module):
            names = [name for name, _ in fn.named_modules() if name]
            for name, probe in side.probes.items():
                if probe.where not in names:
                    raise ValueError(f"probes[{name!r}]: the {argument} ({side.label}) has no submodule {probe.where!r}; "
                                     f"its submodules are {', '.join(names) or 'none'}")
        return side

    @property
    def is_module(self) -> bool:
        return self.fn is not None and (
            (_torch_module_type() is not None and isinstance(self.fn, _torch_module_type()))
            or (_nnx_module_type() is not None and isinstance(self.fn, _nnx_module_type())))

    def run(self, inputs, kwargs, dtype: str, cotangent=None, rng=None) -> Ran:
        """``(outputs, gradients, probes)`` in NumPy, the inputs and params cast to ``dtype``;
        gradients (``{"inputs": ..., "params": ...}``) only when ``cotangent`` is given
        (None where the side cannot take them: NumPy below float64); the probes' values from
        the forward call, each through its transform."""
        inputs, kwargs = round_floats((tuple(inputs), dict(kwargs)), dtype)
        params = None if self.params is None else round_floats(self.params, dtype)
        run = {"numpy": _run_numpy, "jax": _run_jax, "torch": _run_torch}[self.framework]
        outputs, grads, probes = run(self, inputs, kwargs, params, dtype, cotangent, rng)
        values = {}
        for name, probe in self.probes.items():
            value = _as_numpy(plain_tree(probes[name]))
            values[name] = value if probe.transform is None else _as_numpy(plain_tree(probe.transform(value)))
        return Ran(outputs, grads, values)

    def take_keys(self, outputs):
        """A function's ``(outputs, {name: value})``: its probes are keys of its dict output,
        taken out of it (no probes: the outputs as they are)."""
        if not self.probes:
            return outputs, {}
        if not isinstance(outputs, dict):
            raise ValueError(f"probes {', '.join(map(repr, self.probes))}: {self.label} is a function, whose probes are "
                             f"keys of its dict output; it returns {type(outputs).__name__}")
        missing = [p.where for p in self.probes.values() if p.where not in outputs]
        if missing:
            raise ValueError(f"probes: {self.label} returns no key {', '.join(map(repr, missing))}; "
                             f"its keys are {', '.join(map(repr, outputs))}")
        keys = {p.where for p in self.probes.values()}
        rest = {k: v for k, v in outputs.items() if k not in keys}
        return rest, {name: outputs[p.where] for name, p in self.probes.items()}


def round_floats(tree, dtype: str):
    """Every floating NumPy leaf of ``tree`` rounded to ``dtype``, its finite values first
    clipped to the dtype's finite range; other leaves unchanged. A large finite number stays
    finite: ``finfo(float32).min`` (the additive masks of Hugging Face models) would round to
    ``-inf`` in bfloat16 and float16 and turn a fully masked row into NaN that the model, which
    builds its mask in its own dtype, never computes. NaN and inf stay as they are."""
    target = NP_DTYPES[dtype]
    high = float(ml_dtypes.finfo(target).max)

    def one(x):
        if not is_float(x):
            return x
        if float(ml_dtypes.finfo(x.dtype).max) > high:
            x = np.where(np.isfinite(x), np.clip(x, -high, high), x)
        return x.astype(target)

    return jax.tree.map(one, tree)


def plain_tree(tree):
    """``tree`` with every ``Mapping`` as a ``dict`` and every dataclass instance as the ``dict``
    of its fields, recursively; lists, tuples, namedtuples (a tuple to ``jax.tree``, which names
    their leaves by field) and dicts keep their type, any other object (an array, a tensor,
    None) is a leaf. Both sides and the reference return their outputs in this form, so a
    ``ModelOutput`` on one side and a dict on the other are the same outputs."""
    if isinstance(tree, Mapping):
        return {k: plain_tree(v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a namedtuple: a tuple to jax.tree, its leaves named
        return type(tree)(*(plain_tree(v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(plain_tree(v) for v in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return {f.name: plain_tree(getattr(tree, f.name)) for f in dataclasses.fields(tree)}
    return tree


def _on_device(tree):
    """The NumPy array leaves of ``tree`` as JAX arrays; Python options (``is_causal=True``,
    ``local_window_size=(1, 0)``, None, strings) stay as they are, so that a function that
    takes them as static arguments sees them unchanged."""
    return jax.tree.map(lambda x: jax.device_put(x) if isinstance(x, np.ndarray) else x, tree)


def _call_numpy(side, params, inputs, kwargs):
    return plain_tree(side.fn(*inputs, **kwargs) if params is None else side.fn(params, *inputs, **kwargs))


def _as_numpy(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def check_leaves(side, outputs, expected) -> None:
    """Outputs are matched with the reference's leaf by leaf, in order; their number must agree."""
    if len(outputs) != len(expected) or any(np.shape(o) != np.shape(e) for o, e in zip(outputs, expected)):
        raise ValueError(
            f"{side.label} returns arrays of shapes {[tuple(np.shape(o)) for o in outputs]}, the reference "
            f"{[tuple(np.shape(e)) for e in expected]}: both sides must return the same arrays (wrap one to drop or reorder outputs)")


# --- NumPy: the function itself; gradients by central differences, float64 only -----------------
def _run_numpy(side, inputs, kwargs, params, dtype, cotangent, rng):
    outputs, probes = side.take_keys(_call_numpy(side, params, inputs, kwargs))
    outputs = jax.tree.map(np.asarray, outputs)
    if cotangent is not None:
        check_leaves(side, jax.tree.leaves(outputs), jax.tree.leaves(cotangent))
    if cotangent is None or dtype != "float64":
        return outputs, None, probes
    wrt = {"inputs": inputs, "params": params}

    def loss():
        return weighted_sum(cotangent, side.take_keys(_call_numpy(side, values["params"], values["inputs"], kwargs))[0])

    values = jax.tree.map(lambda x: np.array(x) if is_float(x) else x, wrt)
    grads = jax.tree.map(lambda x: central_differences(x, loss, samples=FD_SAMPLES, rng=rng) if is_float(x) else None,
                         values)
    return outputs, grads, probes


# --- JAX: jax.vjp; an nnx.Module is split into its parameters and the rest ----------------------
def _jax_callable(side):
    """``call(params, inputs, kwargs) -> (outputs, {name: probe value})``."""
    if not side.is_module:
        return lambda params, inputs, kwargs: side.take_keys(_call_numpy(side, params, inputs, kwargs))
    from flax import nnx

    graphdef, state, rest = nnx.split(side.fn, nnx.Param, ...)

    def call(params, inputs, kwargs):
        new_state = jax.tree.map(lambda x: x, state)
        nnx.replace_by_pure_dict(new_state, params)
        module = nnx.merge(graphdef, new_state, rest)
        if not side.probes:
            return plain_tree(module(*inputs, **kwargs)), {}
        outputs, sown = nnx.capture(module, nnx.Intermediate)(*inputs, **kwargs)
        return plain_tree(outputs), _sown(side, nnx.to_pure_dict(sown))

    return call


def _sown(side, sown) -> dict:
    """The probes' values among the ``nnx.Intermediate`` values ``sown`` (nested dicts; each a
    tuple of the values sown under that name, one a call): a value sown once is itself."""
    def paths(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, Mapping):
                yield from paths(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    found = dict(paths(sown))
    missing = [p.where for p in side.probes.values() if p.where not in found]
    if missing:
        raise ValueError(f"probes: {side.label} sows no nnx.Intermediate {', '.join(map(repr, missing))}; "
                         f"it sows {', '.join(map(repr, found)) or 'none'} (self.sow(nnx.Intermediate, name, value))")
    values = {}
    for name, probe in side.probes.items():
        value = found[probe.where]
        values[name] = value[0] if isinstance(value, tuple) and len(value) == 1 else value
    return values


def _run_jax(side, inputs, kwargs, params, dtype, cotangent, rng):
    call = _jax_callable(side)
    x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()  # leave the caller's setting
    with x64, jax.default_matmul_precision("highest"):
        inputs, kwargs, params = _on_device((inputs, kwargs, params))
        floats = [i for i, x in enumerate(inputs) if _all_float(x)]

        def fn(params, *float_inputs):
            full = list(inputs)
            for i, x in zip(floats, float_inputs):
                full[i] = x
            return call(params, tuple(full), kwargs)

        if cotangent is None:
            outputs, probes = jax.device_get(fn(params, *[inputs[i] for i in floats]))
            return jax.tree.map(np.asarray, outputs), None, probes
        outputs, vjp, probes = jax.vjp(fn, params, *[inputs[i] for i in floats], has_aux=True)
        out_leaves, out_def = jax.tree.flatten(outputs)
        check_leaves(side, out_leaves, jax.tree.leaves(cotangent))
        # matched leaf by leaf: (out, None) and out alone are the same outputs
        cot = jax.tree.unflatten(out_def, [np.asarray(c).astype(o.dtype) for c, o in zip(jax.tree.leaves(cotangent), out_leaves)])
        d_params, *d_inputs = vjp(cot)
    grads_inputs = [None] * len(inputs)
    for i, g in zip(floats, d_inputs):
        grads_inputs[i] = g
    outputs, grads, probes = jax.device_get((outputs, {"inputs": tuple(grads_inputs), "params": d_params}, probes))
    return jax.tree.map(np.asarray, outputs), jax.tree.map(np.asarray, grads), probes


def _all_float(x) -> bool:
    leaves = jax.tree.leaves(x)
    return bool(leaves) and all(hasattr(leaf, "dtype") and str(leaf.dtype) in NP_DTYPES for leaf in leaves)


# --- PyTorch: autograd; a module runs with the given parameters through functional_call --------
def _to_torch(torch, x, requires_grad=False):
    if not isinstance(x, np.ndarray):
        return x
    if x.dtype == NP_DTYPES["bfloat16"]:  # torch cannot read ml_dtypes' bfloat16: exact via float32
        t = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    else:
        t = torch.from_numpy(np.ascontiguousarray(x))
    return t.requires_grad_(True) if requires_grad and t.is_floating_point() else t


def _from_torch(torch, t):
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        return np.asarray(t)
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(NP_DTYPES["bfloat16"])
    return t.numpy()


def _torch_tree(torch, tree, fn):
    """``fn`` on the tensor leaves of tuples (namedtuples too), lists and dicts of tensors."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_torch_tree(torch, x, fn) for x in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_torch_tree(torch, x, fn) for x in tree)
    if isinstance(tree, dict):
        return {k: _torch_tree(torch, v, fn) for k, v in tree.items()}
    return fn(tree)


@contextlib.contextmanager
def _torch_hooks(side):
    """``{name: [value, ...]}``, filled by forward hooks on the submodules the probes name
    while the block runs (a submodule called twice gives two values); removed after it."""
    captured = {name: [] for name in side.probes}
    handles = [side.fn.get_submodule(probe.where).register_forward_hook(
        lambda module, args, output, values=captured[name]: values.append(plain_tree(output)))
        for name, probe in side.probes.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _run_torch(side, inputs, kwargs, params, dtype, cotangent, rng):
    import torch

    wants_grad = cotangent is not None
    t_inputs = _torch_tree(torch, inputs, lambda x: _to_torch(torch, x, wants_grad))
    t_kwargs = _torch_tree(torch, kwargs, lambda x: _to_torch(torch, x))
    t_params = None if params is None else {k: _to_torch(torch, v, wants_grad) for k, v in params.items()}
    with torch.enable_grad() if wants_grad else torch.no_grad():
        if side.is_module:
            with _torch_hooks(side) as captured:
                outputs = plain_tree(torch.func.functional_call(side.fn, t_params, tuple(t_inputs), t_kwargs))
            never = [side.probes[name].where for name, values in captured.items() if not values]
            if never:
                raise ValueError(f"probes: {side.label}'s submodule {', '.join(map(repr, never))} was not called in its forward")
            probes = {name: values[0] if len(values) == 1 else tuple(values) for name, values in captured.items()}
        else:
            outputs, probes = side.take_keys(_call_numpy(side, t_params, t_inputs, t_kwargs))
    np_outputs = _torch_tree(torch, outputs, lambda t: _from_torch(torch, t))
    probes = _torch_tree(torch, probes, lambda t: _from_torch(torch, t))
    if not wants_grad:
        return np_outputs, None, probes
    out_leaves = jax.tree.leaves(outputs)  # a tensor is a leaf to jax.tree; None is dropped, as from the cotangent
    cot_leaves = jax.tree.leaves(cotangent)
    check_leaves(side, out_leaves, cot_leaves)
    pairs = [(o, c) for o, c in zip(out_leaves, cot_leaves) if isinstance(o, torch.Tensor) and o.requires_grad]
    wrt_inputs = [t for t in jax.tree.leaves(t_inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    wrt_params = list((t_params or {}).values())
    grads = torch.autograd.grad([o for o, _ in pairs], wrt_inputs + wrt_params,
                                grad_outputs=[_to_torch(torch, np.asarray(c).astype(_np_dtype_of(torch, o))) for o, c in pairs],
                                allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt_inputs + wrt_params)]
    d_inputs = iter(grads[: len(wrt_inputs)])
    grads_inputs = _torch_tree(torch, t_inputs, lambda t: _from_torch(torch, next(d_inputs))
                               if isinstance(t, torch.Tensor) and t.requires_grad else None)
    d_params = None if params is None else {k: _from_torch(torch, g) for k, g in zip(params, grads[len(wrt_inputs):])}
    return np_outputs, {"inputs": tuple(grads_inputs), "params": d_params}, probes


def _np_dtype_of(torch, t):
    return {torch.float64: NP_DTYPES["float64"], torch.float32: NP_DTYPES["float32"],
            torch.float16: NP_DTYPES["float16"], torch.bfloat16: NP_DTYPES["bfloat16"]}[t.dtype]
