"""Rotary position embeddings (Su et al. 2021): mirror of ``attention_np/rotary.py``."""

import jax.numpy as jnp

from attention_np.rotary import check_rotary

from ._dtypes import compute_dtype
from ._jit import jit


def apply_rotary(x, positions, *, base=10000.0, fraction=1.0):
    r"""Rotate each pair of features of ``x`` by an angle proportional to its position.

    .. math::
        \theta_i = \text{base}^{-2i/R}, \qquad
        \begin{pmatrix} y_i \\ y_{i + R/2} \end{pmatrix} =
        \begin{pmatrix} \cos t\theta_i & -\sin t\theta_i \\ \sin t\theta_i & \cos t\theta_i \end{pmatrix}
        \begin{pmatrix} x_i \\ x_{i + R/2} \end{pmatrix}, \quad i < R/2

    R = H * fraction rounded down to an even number; features R.. H-1 pass unchanged. Pairs
    are (i, i + R/2), the "rotate half" layout of GPT-NeoX, LLaMA and Gemma. Su et al. 2021,
    "RoFormer", eq. (34).

    Args:
      x: ``(B..., T, N, H)`` queries or keys (after the projection, before the attention).
      positions: int, broadcastable to ``(B..., T)`` (traced: a decode position is fine).
      base: the wavelength base, > 1. Static.
      fraction: the share of the H features that is rotated, in (0, 1]. Static.

    Returns:
      the shape of ``x``, ``(B, T, N, H)`` for one batch axis, and its dtype (computed in
      float32, float64 for float64).
    """
    return _apply_rotary(x, positions, base=base, fraction=fraction)


@jit(static_argnames=("base", "fraction"))
def _apply_rotary(x, positions, *, base, fraction):
    x, positions = jnp.asarray(x), jnp.asarray(positions)
    R = check_rotary(x, positions, base, fraction)
    compute = compute_dtype(x.dtype)
    # 1. one angle per (position, pair): t * base^(-2i/R)
    theta = base ** (-jnp.arange(0, R, 2, dtype=compute) / R)                  # (R/2,)
    angle = positions.astype(compute)[..., None, None] * theta              # (B..., T, 1, R/2)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # 2. turn each pair (x_i, x_{i + R/2}); the features past R pass through
    x1, x2, rest = x[..., : R // 2].astype(compute), x[..., R // 2 : R].astype(compute), x[..., R:]
    turned = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # (B..., T, N, R)
    return jnp.concatenate([turned.astype(x.dtype), rest], axis=-1)
