"""Rotary position embeddings (RoPE): positions written into queries and keys by rotation.

Su et al. 2021, "RoFormer: Enhanced transformer with rotary position embedding", section 3.4.

The idea: split the H features of a query or key into H/2 pairs and turn each pair, seen
as a point in the plane, by an angle that grows with the position t: pair i turns by
``t * theta_i`` with ``theta_i = base ** (-2i / H)`` (fast turns for the first pairs, slow
ones for the last). A dot product of two turned vectors depends only on the *difference*
of their angles, so the score of query t and key s sees only ``t - s``: relative positions,
with nothing added to the logits.

Pairs here are (feature i, feature i + H/2), the "rotate half" layout of GPT-NeoX, LLaMA and
Gemma (the paper pairs neighbours 2i, 2i + 1: the same rotation on permuted features).
"""

import numpy as np

from ._dtypes import compute_dtype
from ._validate import check_float


def rotary_features(H: int, fraction: float) -> int:
    """How many of the H features are rotated: ``H * fraction`` rounded down to an even
    number (pairs); a ``ValueError`` names the arguments when that leaves no pair."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1]; got {fraction!r}")
    R = int(H * fraction) // 2 * 2
    if R < 2:
        raise ValueError(f"rotary embeddings rotate pairs of features: H * fraction must be at least 2; "
                         f"got H={H}, fraction={fraction}")
    return R


def check_rotary(x, positions, base, fraction) -> int:
    """The checks of :func:`apply_rotary`, shared by both halves; returns R, the rotated features."""
    check_float("x", x)
    if len(x.shape) < 3:
        raise ValueError(f"x must have shape (B..., T, N, H); got {tuple(x.shape)}")
    if not str(getattr(positions, "dtype", "")).startswith(("int", "uint")):
        raise TypeError(f"positions must be an integer array broadcastable to (B..., T); got "
                        f"{getattr(positions, 'dtype', type(positions).__name__)}")
    if tuple(positions.shape[-1:]) not in ((), (1,), (x.shape[-3],)):
        raise ValueError(f"positions must be broadcastable to (B..., T) with T={x.shape[-3]} from x; "
                         f"got {tuple(positions.shape)}")
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
        raise ValueError(f"base must be a number greater than 1; got {base!r}")
    return rotary_features(x.shape[-1], fraction)


def apply_rotary(x, positions, *, base=10000.0, fraction=1.0):
    r"""Rotate each pair of features of ``x`` by an angle proportional to its position.

    .. math::
        \theta_i = \text{base}^{-2i/R}, \qquad
        \begin{pmatrix} y_i \\ y_{i + R/2} \end{pmatrix} =
        \begin{pmatrix} \cos t\theta_i & -\sin t\theta_i \\ \sin t\theta_i & \cos t\theta_i \end{pmatrix}
        \begin{pmatrix} x_i \\ x_{i + R/2} \end{pmatrix}, \quad i < R/2

    R = H * fraction rounded down to an even number; features R.. H-1 pass unchanged (partial
    rotary, as GPT-NeoX). Then :math:`\langle y_t(q), y_s(k) \rangle` depends on t and s only
    through ``t - s``.

    Su et al. 2021, "RoFormer", eq. (34).

    Args:
      x: ``(B..., T, N, H)`` queries or keys (after the projection, before the attention).
      positions: int, broadcastable to ``(B..., T)``: the position of each token (per batch
        row while decoding).
      base: the wavelength base, > 1.
      fraction: the share of the H features that is rotated, in (0, 1].

    Returns:
      the shape of ``x``, ``(B, T, N, H)`` for one batch axis, and its dtype (computed in
      float32, float64 for float64).

    Example: at position 0 nothing turns; at position 1 with H = 2 the pair turns by 1 radian,
    so (1, 0) becomes (cos 1, sin 1) = (0.5403, 0.8415).

    >>> x = np.array([[[1.0, 0.0]], [[1.0, 0.0]]])                    # T=2, N=1, H=2
    >>> apply_rotary(x, np.array([0, 1])).round(4)
    array([[[1.    , 0.    ]],
    <BLANKLINE>
           [[0.5403, 0.8415]]])
    """
    x, positions = np.asarray(x), np.asarray(positions)
    R = check_rotary(x, positions, base, fraction)
    compute = compute_dtype(x.dtype)
    # 1. one angle per (position, pair): t * base^(-2i/R)
    theta = base ** (-np.arange(0, R, 2, dtype=compute) / R)                   # (R/2,)
    angle = positions.astype(compute)[..., None, None] * theta              # (B..., T, 1, R/2)
    cos, sin = np.cos(angle), np.sin(angle)
    # 2. turn each pair (x_i, x_{i + R/2}); the features past R pass through
    x1, x2, rest = x[..., : R // 2].astype(compute), x[..., R // 2 : R].astype(compute), x[..., R:]
    turned = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # (B..., T, N, R)
    return np.concatenate([turned.astype(x.dtype), rest], axis=-1)
