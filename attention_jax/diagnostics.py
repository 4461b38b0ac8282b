"""Alignment diagnostics of attention weights: mirror of ``attention_np/diagnostics.py``."""

import functools

import jax
import jax.numpy as jnp

from attention_np._validate import check_alignment_weights


@functools.partial(jax.jit, static_argnames=("band",))
def alignment_diagnostics(weights, *, band=1):
    r"""Entropy, monotonicity, diagonal focus and coverage of attention weights.

    With :math:`a_{ts}` the weights of one matrix, :math:`s^*_t = \arg\max_s a_{ts}`, and the
    diagonal of a T x S grid through the cell centres, :math:`d_t = (t + \tfrac12) S / T - \tfrac12`:

    .. math::
        \mathrm{entropy} = \tfrac1T \textstyle\sum_t -\sum_s a_{ts} \log a_{ts} \quad (0 \log 0 = 0), \\
        \mathrm{monotonicity} = \tfrac{1}{T - 1} \textstyle\sum_{t \ge 1} [s^*_t \ge s^*_{t-1}], \\
        \mathrm{diagonal\_focus} = \tfrac1T \textstyle\sum_t \sum_{s:\,|s - d_t| \le \mathrm{band}} a_{ts}, \\
        \mathrm{coverage}_s = \textstyle\sum_t a_{ts}

    each averaged over the leading axes (``coverage`` keeps them); see
    ``attention_np.alignment_diagnostics``. Here the three numbers are 0-d float32 (float64
    with x64) arrays, so the function runs under ``jit``; ``band`` is static.

    Args:
      weights: ``(..., T, S)``, e.g. ``(B, T, S)`` from soft attention or ``(B, N, T, S)``
        from multi-head attention; rows summing to 1 (or 0 for fully masked rows).
      band: the half-width of the diagonal band, in source positions (>= 0).

    Returns:
      ``{"entropy", "monotonicity", "diagonal_focus": (), "coverage": (..., S)}``.
    """
    weights = jnp.asarray(weights)
    check_alignment_weights(weights, band)
    a = weights.astype(jnp.promote_types(weights.dtype, jnp.float32))
    T, S = a.shape[-2:]
    # 1. entropy of each row, 0 log 0 = 0
    logs = jnp.log(jnp.where(a > 0, a, 1.0))                               # (..., T, S)
    entropy = -(a * logs).sum(axis=-1)                                     # (..., T)
    # 2. does the argmax ever move backwards?
    focus = a.argmax(axis=-1)                                              # (..., T)
    forward = jnp.diff(focus, axis=-1) >= 0                                # (..., T - 1)
    monotonicity = forward.mean(dtype=a.dtype) if forward.size else jnp.ones((), a.dtype)
    # 3. weight within `band` of the diagonal
    diagonal = (jnp.arange(T) + 0.5) * S / T - 0.5                         # (T,)
    near = jnp.abs(jnp.arange(S) - diagonal[:, None]) <= band              # (T, S)
    diagonal_focus = (a * near).sum(axis=-1)                               # (..., T)
    # 4. how much attention each source position received in total
    coverage = a.sum(axis=-2)                                              # (..., S)
    mean = (lambda x: x.mean()) if T else (lambda x: jnp.zeros((), a.dtype))
    return {
        "entropy": mean(entropy),
        "monotonicity": monotonicity,
        "diagonal_focus": mean(diagonal_focus),
        "coverage": coverage,
    }
