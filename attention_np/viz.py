"""Pictures of attention: a heatmap of the weights, target tokens down, source tokens across.

Needs matplotlib (the ``viz`` extra: ``pip install -e '.[viz]'``), imported only when called.
Works with the weights of either half (anything ``numpy.asarray`` takes).
"""

import numpy as np


def plot_attention(weights, source_tokens, target_tokens, *, path=None, ax=None, title=None):
    """Draw attention ``weights (T, S)`` as a heatmap, as in Bahdanau et al. 2015, figure 3.

    Args:
      weights: ``(T, S)``, or ``(1, T, S)`` (one batch element); rows are target steps.
      source_tokens: S labels for the columns. target_tokens: T labels for the rows.
      path: if given, the figure is saved there (PNG by the suffix) and closed.
      ax: a matplotlib ``Axes`` to draw into (e.g. one panel of a grid); default: a new figure.
      title: optional title of the panel.

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
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(S), [str(t) for t in source_tokens], rotation=90 if max(map(len, map(str, source_tokens)), default=0) > 2 else 0)
    ax.set_yticks(range(T), [str(t) for t in target_tokens])
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if path is not None:
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
        if fig is not None:
            plt.close(fig)
    return ax
