"""Any number of leading batch axes ``(B..., ...)``, as Flax's ``batch_sizes...``.

The mechanisms are written for one batch axis ``B``; these helpers fold the caller's batch
axes into it before the math and unfold them after, so ``(2, 4, T, N, H)`` runs as
``(8, T, N, H)`` and ``(T, N, H)`` as ``(1, T, N, H)``.
"""

import math

import numpy as np


def fold_batch(x, batch):
    """``x (*batch, ...)`` as ``(prod(batch), ...)``: one batch axis."""
    return x.reshape((math.prod(batch),) + x.shape[len(batch) :])


def fold_broadcast(x, batch, core: int):
    """A mask or bias broadcastable to ``(*batch, *core axes)`` as ``(prod(batch) | 1, *core)``:
    the batch axes it broadcasts along stay broadcast (size 1), so nothing is copied then."""
    x = np.asarray(x)
    x = x.reshape((1,) * (len(batch) + core - x.ndim) + x.shape)          # (*batch | 1, *core | 1)
    if all(d == 1 for d in x.shape[: len(batch)]):
        return x.reshape((1,) + x.shape[len(batch) :])
    return fold_batch(np.broadcast_to(x, tuple(batch) + x.shape[len(batch) :]), batch)


def unfold_batch(x, batch):
    """``x (prod(batch), ...)`` back to ``(*batch, ...)``."""
    return x.reshape(tuple(batch) + x.shape[1:])
