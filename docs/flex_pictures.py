"""The pictures of docs/flex.md: each worked mod, and the blocks its block mask skips.

    python docs/flex_pictures.py        # writes docs/images/flex_*.png

For each mod, left: what it computes on a 32 x 32 grid of (query, key) positions (the bias a
score_mod adds, with a colour bar, or the mask); right: ``create_block_mask(...).states`` with
8 x 8 blocks, empty blocks white (skipped), partial ones light (mask_mod evaluated per element),
full ones dark (never masked), a legend for the three, and a dot on every attended entry.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

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

# name: (score_mod or None, mask_mod or None, the title: what the mod does, what the left panel shows)
MODS = {
    "alibi": (alibi(np.array([0.25])), causal_mask, "ALiBi: bias 0.25 (s - t) on each score, causal"),
    "soft_cap": (soft_cap(2.0), None, "soft cap: logits x = (s - t) / 4 become 2 tanh(x / 2), no mask"),
    "relative_position": (relative_position_bias(TABLE, 8), causal_mask,
                          "relative position: bias table[clip(s - t, -8, 8) + 8], causal"),
    "sliding_window": (None, sliding_window_mask((6, 0)), "sliding window: the key and the 6 before it"),
    "document": (None, and_masks(causal_mask, document_mask(DOCUMENT_IDS)),
                 "documents of 10, 6, 12 and 4 tokens, causal within each"),
    "prefix_lm": (None, prefix_lm_mask(12), "prefix LM: the first 12 keys seen by all, then causal"),
}
LEGEND = [Patch(facecolor=STATES(0), edgecolor="black", lw=0.6, label="empty: skipped"),
          Patch(facecolor=STATES(1), edgecolor="black", lw=0.6, label="partial: mask_mod per entry"),
          Patch(facecolor=STATES(2), edgecolor="black", lw=0.6, label="full: no mask_mod"),
          Line2D([], [], ls="", marker="s", ms=3, color="black", label="an attended entry")]


def draw(name, score_mod, mask_mod, title):
    t, s = np.arange(L)[:, None], np.arange(L)[None, :]
    mask = np.ones((L, L), bool) if mask_mod is None else np.broadcast_to(mask_mod(0, 0, t, s), (L, L))
    block_mask = create_block_mask(mask_mod or (lambda b, h, q_idx, kv_idx: kv_idx >= 0), 1, None, L, L,
                                   block_sizes=(BLOCK, BLOCK))
    states = np.asarray(block_mask.states)[0, 0]                         # (L / 8, L / 8)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.9), gridspec_kw={"width_ratios": [1.15, 1]})
    fig.suptitle(title, fontsize=12)
    if score_mod is None:
        left.imshow(mask, cmap=ListedColormap(["white", "#4d4d4d"]), vmin=0, vmax=1)
        left.legend(handles=[Patch(facecolor="#4d4d4d", label="attended"),
                             Patch(facecolor="white", edgecolor="black", lw=0.6, label="masked")],
                    loc="upper right", fontsize=8.5, framealpha=0.95)
        left.set_title("the mask: query t attends key s", fontsize=10)
    else:
        logits = (s - t) / 4.0 if name == "soft_cap" else np.zeros((L, L))
        values = np.broadcast_to(score_mod(logits, 0, 0, t, s), (L, L))
        image = left.imshow(np.where(mask, values, np.nan), cmap="viridis")
        fig.colorbar(image, ax=left, fraction=0.046, pad=0.03).set_label(
            "the score after score_mod" if name == "soft_cap" else "bias added to the score", fontsize=9)
        left.set_title("what score_mod gives" + (" (white: masked)" if mask_mod else ""), fontsize=10)
    right.imshow(np.kron(states, np.ones((BLOCK, BLOCK))), cmap=STATES, vmin=0, vmax=2)
    attended_t, attended_s = np.nonzero(mask)
    right.scatter(attended_s, attended_t, s=1.2, marker="s", color="black", linewidths=0)
    for edge in np.arange(0, L + 1, BLOCK) - 0.5:
        right.axhline(edge, color="black", lw=0.6)
        right.axvline(edge, color="black", lw=0.6)
    counts = [int((states == v).sum()) for v in (0, 1, 2)]
    right.set_title(f"block mask, 8 x 8 blocks: {counts[0]} empty, {counts[1]} partial, {counts[2]} full",
                    fontsize=10)
    right.legend(handles=LEGEND, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8.5, frameon=False)
    for ax in (left, right):
        ax.set_xlabel("key s", fontsize=9.5)
        ax.set_ylabel("query t", fontsize=9.5)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(IMAGES / f"flex_{name}.png", dpi=80, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    IMAGES.mkdir(exist_ok=True)
    for name, (score_mod, mask_mod, title) in MODS.items():
        draw(name, score_mod, mask_mod, title)
        print(IMAGES / f"flex_{name}.png")
