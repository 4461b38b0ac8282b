"""Pictures of attention: a heatmap of the weights, one row per query, one column per key.

Needs matplotlib (the ``viz`` extra: ``pip install -e '.[viz]'``), imported only when called.
Works with the weights of either half (anything ``numpy.asarray`` takes).
"""

import numpy as np

ANNOTATE_UP_TO = 64  # cells: up to 8 x 8 the numbers fit in the cells and are worth reading


def plot_attention(weights, source_tokens, target_tokens, *, path=None, ax=None, title=None,
                   xlabel="key", ylabel="query", annotate=None, vmax=1.0):
    """Draw attention ``weights (T, S)`` as a heatmap, as in Bahdanau et al. 2015, figure 3.

    Rows are the queries (T, the target steps of a decoder), columns the keys (S, the source
    positions); a row of soft weights sums to 1.

    Args:
      weights: ``(T, S)``, or ``(1, T, S)`` (one batch element); rows are queries.
      source_tokens: S labels for the columns (the keys). target_tokens: T labels for the
        rows (the queries).
      path: if given, the figure is saved there (PNG by the suffix) and closed.
      ax: a matplotlib ``Axes`` to draw into (e.g. one panel of a grid); default: a new figure.
      title: optional title of the panel.
      xlabel, ylabel: the axes' names: ``"key"`` and ``"query"``; a decoder over an encoder
        may say ``"source"`` and ``"target"``.
      annotate: write each weight in its cell (two decimals); default: when there are at
        most 64 cells.
      vmax: the weight drawn brightest (default 1; a mask or a Gaussian window may use its
        own maximum).

    Returns:
      the ``Axes`` drawn into.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 3 and weights.shape[0] == 1:
        weights = weights[0]
    if weights.ndim != 2:
        raise ValueError(f"weights must have shape (T, S) or (1, T, S); got {weights.shape}")
    T, S = weights.shape
    if len(source_tokens) != S or len(target_tokens) != T:
        raise ValueError(
            f"need one label per column and row: weights are (T, S) = {weights.shape}; "
            f"got {len(target_tokens)} target_tokens and {len(source_tokens)} source_tokens"
        )
    import matplotlib

    if ax is None and path is not None:
        matplotlib.use("Agg")  # a file needs no screen
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(0.45 * S + 1.5, 0.45 * T + 1.2))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(S), [str(t) for t in source_tokens], rotation=90 if max(map(len, map(str, source_tokens)), default=0) > 2 else 0)
    ax.set_yticks(range(T), [str(t) for t in target_tokens])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if annotate is None:
        annotate = T * S <= ANNOTATE_UP_TO
    if annotate:
        for t in range(T):
            for s in range(S):
                # dark text on the bright end of viridis, light text on the dark end
                color = "black" if weights[t, s] > 0.6 * vmax else "white"
                ax.text(s, t, f"{weights[t, s]:.2f}", ha="center", va="center", fontsize=8, color=color)
    if title:
        ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if path is not None:
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
        if fig is not None:
            plt.close(fig)
    return ax
