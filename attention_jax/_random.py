"""Parameter initialisation from a JAX key, by running the NumPy half's ``init_*`` functions.

:class:`KeyDraws` offers the two ``numpy.random.Generator`` methods those functions use,
``normal`` and ``uniform``, drawing from ``jax.random`` with a fresh subkey each call, so
each initialiser is written once (in ``attention_np``) and both halves share its shapes,
names and distributions.
"""

import jax
import jax.numpy as jnp


class KeyDraws:
    """``normal(size)`` and ``uniform(low, high, size)`` from a JAX PRNG key."""

    def __init__(self, rng):
        self._rng = rng

    def _next(self):
        self._rng, sub = jax.random.split(self._rng)
        return sub

    def normal(self, size):
        return jax.random.normal(self._next(), size)

    def uniform(self, low, high, size):
        return jax.random.uniform(self._next(), size, minval=low, maxval=high)


def init_from_numpy(np_init, rng, *args, **kwargs):
    """``np_init(KeyDraws(rng), *args, **kwargs)`` with every leaf as a JAX array."""
    return jax.tree.map(jnp.asarray, np_init(KeyDraws(rng), *args, **kwargs))
