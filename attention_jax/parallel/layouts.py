"""How a sequence is laid out over the P devices of a ring: which global positions each device
holds. ``"contiguous"``: device i holds positions ``i L/P .. (i + 1) L/P - 1``. ``"zigzag"``
(Brandon et al. 2023, "Striped attention", and the zig-zag of context-parallel training):
the sequence is cut into 2P chunks and device i holds chunks i and 2P - 1 - i, so that with
the causal mask every device has the same number of key blocks below the diagonal."""

import jax.numpy as jnp
import numpy as np

LAYOUTS = ("contiguous", "zigzag")


def zigzag_permutation(L, P):
    """The positions, in the order the zig-zag layout stores them: for ``x (B, L, ...)``,
    ``x[:, perm]`` puts the sequence axis into the layout, ``y[:, inverse]`` with
    ``inverse = argsort(perm)`` takes an output back. ``L`` must be a multiple of ``2 P``;
    device i holds ``perm[i L/P:(i + 1) L/P]``, chunks i and 2P - 1 - i of L / (2P).

    >>> zigzag_permutation(8, 2)           # chunks of 2: device 0 holds chunks 0 and 3, device 1 chunks 1 and 2
    array([0, 1, 6, 7, 2, 3, 4, 5])
    """
    if L % (2 * P):
        raise ValueError(f"the zigzag layout cuts the sequence into 2P = {2 * P} equal chunks: L must be a "
                         f"multiple of {2 * P}; got L={L}")
    c = L // (2 * P)
    chunks = np.arange(L).reshape(2 * P, c)
    return np.concatenate([np.concatenate([chunks[i], chunks[2 * P - 1 - i]]) for i in range(P)])


def device_positions(device, length, P, layout):
    """The global positions ``(length,)`` (int32) of the ``length`` = L / P entries device
    ``device`` (a traced index) holds, in the order it holds them."""
    local = jnp.arange(length, dtype=jnp.int32)
    if layout == "contiguous":
        return device * length + local
    c = length // 2                                         # two chunks of L / (2P)
    first, second = device * c, (2 * P - 1 - device) * c
    return jnp.where(local < c, first + local, second + local - c).astype(jnp.int32)
