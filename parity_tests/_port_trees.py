"""The trees ``check_port`` compares: outputs, gradients and probes leaf by leaf against the
float64 reference (:func:`.tolerance.compare_elements` through :func:`._port_report.compare_leaf`),
the output masks, and the parameter map that carries the source's parameters to the port's."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ._port_report import LeafCheck, _paths, compare_leaf
from ._sides import plain_tree
from .tolerance import FD_TOLERANCE, Tolerance


def _output_masks(output_mask, reference) -> dict:
    """``{output leaf name: bool array of its shape}`` from ``output_mask`` (one array for every
    output, or a tree of the outputs' structure with None for "all"); ``{}`` for None."""
    if output_mask is None:
        return {}
    outputs = dict(_paths(reference, "output"))
    if isinstance(output_mask, (bool, np.bool_)) or hasattr(output_mask, "shape"):  # one array (NumPy, JAX, torch)
        given = {name: output_mask for name in outputs}
    else:
        given = dict(_paths(plain_tree(output_mask), "output", is_leaf=lambda x: x is None))
        unknown = [name for name, mask in given.items() if name not in outputs and mask is not None]
        if unknown or set(outputs) - set(given):
            raise ValueError(f"output_mask must be one bool array for every output, or a tree of the outputs' structure "
                             f"({', '.join(outputs)}) with None where all is compared; got {', '.join(given) or 'no leaves'}")
    masks = {}
    for name, mask in given.items():
        if mask is None or name not in outputs:
            continue
        mask = np.asarray(mask)
        if mask.dtype != bool:
            raise TypeError(f"output_mask must be bool (True = compared); {name}'s is {mask.dtype}")
        try:
            masks[name] = np.broadcast_to(mask, np.shape(outputs[name]))
        except ValueError:
            raise ValueError(f"output_mask for {name} has shape {mask.shape}, which does not broadcast to the "
                             f"output's {np.shape(outputs[name])}") from None
    return masks


def _compare_probe(prefix, dtype, source, port, reference, tolerance) -> list:
    """One probe's leaves, compared like outputs; a value with another number of arrays than
    the reference's is one failing check, not an error: a probe is a diagnosis."""
    names = [name for name, _ in _paths(reference, prefix)]
    for who, value in (("source", source), ("port", port)):
        count = len(jax.tree.leaves(value))
        if count != len(names):
            shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(value)]
            return [LeafCheck(prefix, dtype, (), 0, 0, problem=(
                f"the {who}'s value has {count} arrays {shapes}, the reference's {len(names)} "
                f"{[tuple(np.shape(x)) for x in jax.tree.leaves(reference)]}: pick one with (name, transform)"))]
    leaves = lambda value: dict(zip(names, jax.tree.leaves(value)))
    return _compare_trees(prefix, dtype, leaves(source), leaves(port), leaves(reference), tolerance, named=True)


def _like(reference, outputs, side):
    """``outputs`` in the reference's structure, matched leaf by leaf (``(out, None)`` from
    one side and ``out`` from the other are the same output, named as the reference names it)."""
    from ._sides import check_leaves

    leaves = jax.tree.leaves(outputs)
    check_leaves(side, leaves, jax.tree.leaves(reference))
    return jax.tree.unflatten(jax.tree.structure(reference), leaves)


def _mapped(params, tree):
    """The parameter map on float64 arrays, as float64 NumPy: a JAX map (``jnp.asarray``) keeps
    float64 only with x64 on, so it runs with x64 on."""
    with jax.enable_x64(True):
        return _as_numpy(params(tree))


def _parameter_names(tree) -> list:
    """``[(name, leaf)]`` of a module's parameters: PyTorch's ``named_parameters()`` names
    (``norm.bias``), the dotted path of an ``nnx.Module``'s (``query.kernel``)."""
    return [(name.removeprefix("."), leaf) for name, leaf in _paths(tree, "")]


def _unmapped(params, source_params, ignore) -> list:
    """A failing check naming the source parameters (not in ``ignore``) some of whose
    elements the parameter map leaves out. The map only moves elements (reshape, transpose,
    split, rename), so it is run on parameters whose elements are numbered 1, 2, ...: an
    element whose number appears nowhere in the port's parameters is left out, and its
    gradient is never compared."""
    leaves, treedef = jax.tree.flatten(source_params)
    numbered, start = [], 1
    for leaf in leaves:
        if np.asarray(leaf).dtype.kind == "f":
            numbered.append(np.arange(start, start + np.size(leaf), dtype=np.float64).reshape(np.shape(leaf)))
            start += np.size(leaf)
        else:
            numbered.append(leaf)
    mapped = [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(_mapped(params, jax.tree.unflatten(treedef, numbered)))
              if np.asarray(x).dtype.kind == "f"]
    found = np.concatenate(mapped) if mapped else np.zeros(0)
    found = found[(found >= 1) & (found < start) & (found == np.round(found))].astype(np.int64)
    reached = np.zeros(start, bool)
    reached[found] = True
    missing = []
    for (name, leaf), ids in zip(_parameter_names(source_params), numbered):
        if name in ignore or np.asarray(leaf).dtype.kind != "f" or not np.size(leaf):
            continue
        kept = int(reached[ids.astype(np.int64)].sum())
        if kept < ids.size:
            missing.append(f"{name} {tuple(np.shape(leaf))}" + (f" ({ids.size - kept} of its {ids.size} elements)" if kept else ""))
    if not missing:
        return []
    return [LeafCheck("params", "", (), len(missing), len(leaves), problem=(
        f"the parameter map leaves out source parameters {', '.join(missing)}: their gradients are never compared; "
        "map them, or name them in ignore_params= if the port has no place for them"))]


def _as_numpy(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype.kind == "f" else np.asarray(x), tree)


def _compare_trees(prefix, dtype, source, port, reference, tolerance, *, sampled=False, masks=None, named=False) -> list:
    """Each leaf of ``reference`` against the port's and the source's of the same name;
    ``named``: the trees are ``{leaf name: array}`` already; ``masks``: ``{leaf name: bool}``."""
    if reference is None:
        return []
    paths = (lambda tree: list(tree.items())) if named else (lambda tree: _paths(tree, prefix))
    ref_leaves = paths(reference)
    port_leaves = dict(paths(port)) if port is not None else {}
    source_leaves = dict(paths(source)) if source is not None else {}
    masks = masks or {}
    checks = []
    extra = sorted(set(port_leaves) - {n for n, _ in ref_leaves})
    if extra:
        checks.append(LeafCheck(prefix, dtype, (), 0, 0, problem=f"the port has leaves the reference has not: {', '.join(extra)}"))
    for name, ref_leaf in ref_leaves:
        src_leaf = source_leaves.get(name, ref_leaf if source is None else None)
        leaf_tolerance = tolerance
        if source is None and tolerance.factor is not None:  # no source gradient (NumPy below float64): the dtype's
            leaf_tolerance = Tolerance.dtype()
        if sampled:  # finite differences are good to FD_TOLERANCE, whatever the dtype's floor
            leaf_tolerance = leaf_tolerance.at_least(FD_TOLERANCE)
        check = compare_leaf(name, dtype, src_leaf, port_leaves.get(name), ref_leaf, leaf_tolerance, sampled=sampled,
                             mask=masks.get(name))
        port_leaf = port_leaves.get(name)
        if not named and not check.failed and port_leaf is not None and str(np.asarray(port_leaf).dtype) != dtype \
                and dtype != "float64" and str(np.asarray(src_leaf).dtype) == dtype:
            check = dataclasses.replace(check, problem=f"the port returns {np.asarray(port_leaf).dtype}, the source {dtype}")
        checks.append(check)
    return checks
