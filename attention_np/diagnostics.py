"""Alignment diagnostics: numbers that say how a matrix of attention weights looks.

For weights ``(..., T, S)`` (T target steps, S source positions; any leading axes, e.g.
batch and heads), as a learner reads a heatmap: is each row sharp or spread out, does the
focus move forward, does it follow the diagonal, and did every source position get looked at.
"""

import numpy as np

from ._validate import check_alignment_weights


def alignment_diagnostics(weights, *, band=1):
    r"""Entropy, monotonicity, diagonal focus and coverage of attention weights.

    With :math:`a_{ts}` the weights of one matrix, :math:`s^*_t = \arg\max_s a_{ts}`, and the
    diagonal of a T x S grid through the cell centres, :math:`d_t = (t + \tfrac12) S / T - \tfrac12`:

    .. math::
        \mathrm{entropy} = \tfrac1T \textstyle\sum_t -\sum_s a_{ts} \log a_{ts} \quad (0 \log 0 = 0), \\
        \mathrm{monotonicity} = \tfrac{1}{T - 1} \textstyle\sum_{t \ge 1} [s^*_t \ge s^*_{t-1}], \\
        \mathrm{diagonal\_focus} = \tfrac1T \textstyle\sum_t \sum_{s:\,|s - d_t| \le \mathrm{band}} a_{ts}, \\
        \mathrm{coverage}_s = \textstyle\sum_t a_{ts}

    each averaged over the leading axes (``coverage`` keeps them). Entropy is in nats: 0 for
    one-hot rows, :math:`\log S` for uniform ones. Monotonicity is 1 when the focus never
    moves backwards (speech, transliteration; Chorowski et al. 2015 and Raffel et al. 2017
    motivate monotonic attention), 0 for a reversal; it is 1 when T < 2. Coverage near 1 at
    every position means each source position was attended once in total (the "coverage"
    of Tu et al. 2016).

    Args:
      weights: ``(..., T, S)``, e.g. ``(B, T, S)`` from soft attention or ``(B, N, T, S)``
        from multi-head attention; rows summing to 1 (or 0 for fully masked rows).
      band: the half-width of the diagonal band, in source positions (>= 0).

    Returns:
      ``{"entropy": float, "monotonicity": float, "diagonal_focus": float,
      "coverage": (..., S)}``.
    """
    weights = np.asarray(weights)
    check_alignment_weights(weights, band)
    a = weights.astype(np.float64)
    T, S = a.shape[-2:]
    # 1. entropy of each row, 0 log 0 = 0
    logs = np.log(np.where(a > 0, a, 1.0))                                 # (..., T, S)
    entropy = -(a * logs).sum(axis=-1)                                     # (..., T)
    # 2. does the argmax ever move backwards?
    focus = a.argmax(axis=-1)                                              # (..., T)
    forward = np.diff(focus, axis=-1) >= 0                                 # (..., T - 1)
    monotonicity = float(forward.mean()) if forward.size else 1.0
    # 3. weight within `band` of the diagonal
    diagonal = (np.arange(T) + 0.5) * S / T - 0.5                          # (T,)
    near = np.abs(np.arange(S) - diagonal[:, None]) <= band                # (T, S)
    diagonal_focus = (a * near).sum(axis=-1)                               # (..., T)
    # 4. how much attention each source position received in total
    coverage = a.sum(axis=-2)                                              # (..., S)
    mean = (lambda x: float(x.mean())) if T else (lambda x: 0.0)
    return {
        "entropy": mean(entropy),
        "monotonicity": monotonicity,
        "diagonal_focus": mean(diagonal_focus),
        "coverage": coverage,
    }
