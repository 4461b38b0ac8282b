"""The pictures of docs/flex.md: each worked mod, and the blocks its block mask skips.

    python docs/flex_pictures.py        # writes docs/images/flex_*.png

For each mod, left: what it computes on a 32 x 32 grid of (query, key) positions (the bias a
score_mod adds, or the mask); right: ``create_block_mask(...).states`` with 8 x 8 blocks, empty
blocks white (skipped), partial ones light (mask_mod evaluated per element), full ones dark
(never masked), and the attended entries drawn over them.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from attention_jax import create_block_mask  # noqa: E402
from attention_np.mods import (  # noqa: E402
    alibi,
    and_masks,
    causal_mask,
    document_mask,
    prefix_lm_mask,
    relative_position_bias,
    sliding_window_mask,
    soft_cap,
)

L, BLOCK = 32, 8
IMAGES = Path(__file__).with_name("images")
DOCUMENT_IDS = np.repeat(np.arange(4), [10, 6, 12, 4])[None]            # (1, L): four documents
TABLE = np.sin(np.arange(2 * 8 + 1) / 2.0)[None]                         # (N=1, 2D+1), D = 8
STATES = ListedColormap(["white", "#fdd9a8", "#7fa7d1"])                 # empty, partial, full

# name: (score_mod or None, mask_mod or None, what the left panel shows)
MODS = {
    "alibi": (alibi(np.array([0.25])), causal_mask, "bias slope (s - t), with causal_mask"),
    "soft_cap": (soft_cap(2.0), None, "2 tanh(x / 2) of logits x = (s - t) / 4, no mask"),
    "relative_position": (relative_position_bias(TABLE, 8), causal_mask, "table[clip(s - t, -8, 8) + 8], causal"),
    "sliding_window": (None, sliding_window_mask((6, 0)), "sliding_window_mask((6, 0))"),
    "document": (None, and_masks(causal_mask, document_mask(DOCUMENT_IDS)), "documents of 10, 6, 12, 4, causal"),
    "prefix_lm": (None, prefix_lm_mask(12), "prefix_lm_mask(12)"),
}


def draw(name, score_mod, mask_mod, title):
    t, s = np.arange(L)[:, None], np.arange(L)[None, :]
    mask = np.ones((L, L), bool) if mask_mod is None else np.broadcast_to(mask_mod(0, 0, t, s), (L, L))
    block_mask = create_block_mask(mask_mod or (lambda b, h, q_idx, kv_idx: kv_idx >= 0), 1, None, L, L,
                                   block_sizes=(BLOCK, BLOCK))
    states = np.asarray(block_mask.states)[0, 0]                         # (L / 8, L / 8)
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 3.4))
    if score_mod is None:
        left.imshow(mask, cmap="Greys", vmin=0, vmax=1.6)
    else:
        logits = (s - t) / 4.0 if name == "soft_cap" else np.zeros((L, L))
        values = np.broadcast_to(score_mod(logits, 0, 0, t, s), (L, L))
        left.imshow(np.where(mask, values, np.nan), cmap="viridis")
    left.set_title(title, fontsize=8)
    right.imshow(np.kron(states, np.ones((BLOCK, BLOCK))), cmap=STATES, vmin=0, vmax=2)
    right.imshow(np.where(mask, 1.0, np.nan), cmap="Greys", vmin=0, vmax=1.6, alpha=0.6)
    for edge in np.arange(0, L + 1, BLOCK) - 0.5:
        right.axhline(edge, color="black", lw=0.6)
        right.axvline(edge, color="black", lw=0.6)
    counts = [int((states == v).sum()) for v in (0, 1, 2)]
    right.set_title(f"blocks of 8 x 8: {counts[0]} empty, {counts[1]} partial, {counts[2]} full", fontsize=8)
    for ax in (left, right):
        ax.set_xlabel("key s", fontsize=8)
        ax.set_ylabel("query t", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(IMAGES / f"flex_{name}.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    IMAGES.mkdir(exist_ok=True)
    for name, (score_mod, mask_mod, title) in MODS.items():
        draw(name, score_mod, mask_mod, title)
        print(IMAGES / f"flex_{name}.png")
