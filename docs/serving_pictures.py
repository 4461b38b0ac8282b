"""The pictures of docs/serving.md: a paged KV cache and packed (varlen) sequences.

    python docs/serving_pictures.py     # writes docs/images/serving_*.png

``serving_paged.png``: three rows of 7, 13 and 3 tokens written with
``attention_np.paged_kv_write`` into a pool of 10 pages of 4 slots through a shuffled page
table; left, each row's logical sequence cut into logical pages and the page table; right, the
pool, each slot labelled with the row and position the write put there (read back from the
pool itself).

``serving_varlen.png``: three sequences of 5, 3 and 6 tokens packed in one axis, where
``cu_seqlens`` cuts them; below, the causal mask this packing gives (a query attends keys of its
own sequence up to its position), for the self-attention of the packed tokens and for 2, 1 and 3
new queries against the same keys (bottom-right alignment), computed by
``attention_jax.fast.varlen``'s own mask and block mask (4 x 4 blocks: empty ones white, skipped;
partial light; full dark).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import attention_np  # noqa: E402
from attention_jax.fast.varlen import pack, packed_block_mask, packed_mask_mod  # noqa: E402

IMAGES = Path(__file__).with_name("images")
ROWS = ["#7fa7d1", "#f4a259", "#8cc084"]                                 # one colour a row / sequence
STATES = ListedColormap(["white", "#fde6c8", "#c9d9ea"])                 # empty, partial, full

# the paged picture: 3 rows, pages of 4, a pool of 10 pages (2, 4, 7 free)
PAGE_SIZE, NUM_PAGES = 4, 10
LENGTHS = [7, 13, 3]
PAGE_TABLE = np.array([[6, 1, -1, -1],
                       [3, 8, 0, 5],
                       [9, -1, -1, -1]])                                 # -1: not used (never read)

# the varlen picture
SEQ_LENGTHS_K = [5, 3, 6]
SEQ_LENGTHS_Q = [2, 1, 3]                                                # new queries of each sequence
BLOCK = 4


def paged_pool():
    """The pool after writing every row's tokens: value ``1000 (b + 1) + p`` at row b's
    position p, so that each slot says which token lives there (0: empty)."""
    B, max_len = len(LENGTHS), max(LENGTHS)
    cache = attention_np.init_paged_kv_cache(NUM_PAGES, PAGE_SIZE, 1, 1, dtype=np.float64)
    tag = 1000 * (np.arange(B)[:, None] + 1) + np.arange(max_len)       # (B, max_len)
    for b, n in enumerate(LENGTHS):  # one write a row: rows of different lengths
        value = tag[b:b + 1, :n].reshape(1, n, 1, 1).astype(np.float64)
        cache = attention_np.paged_kv_write(cache, PAGE_TABLE[b:b + 1], np.array([0]), np.zeros_like(value), value)
    return cache["value_pages"][:, :, 0, 0].astype(int)                  # (P, page_size)


def draw_paged(path):
    pool = paged_pool()
    fig = plt.figure(figsize=(8.4, 4.4))
    logical = fig.add_axes([0.02, 0.36, 0.56, 0.56])
    table = fig.add_axes([0.1, 0.04, 0.4, 0.26])
    physical = fig.add_axes([0.66, 0.04, 0.32, 0.88])
    # left: each row's logical sequence, cut into logical pages
    width = max(len(r) for r in PAGE_TABLE) * PAGE_SIZE
    for b, n in enumerate(LENGTHS):
        y = len(LENGTHS) - 1 - b
        for p in range(n):
            logical.add_patch(Rectangle((p, y), 0.92, 0.62, color=ROWS[b]))
            logical.text(p + 0.46, y + 0.31, str(p), ha="center", va="center", fontsize=7)
        for i in range(-(-n // PAGE_SIZE)):
            logical.plot([i * PAGE_SIZE, (i + 1) * PAGE_SIZE - 0.08], [y - 0.08] * 2, color="black", lw=1)
            logical.text(i * PAGE_SIZE + 2, y - 0.24, f"{i}: page {PAGE_TABLE[b, i]}",
                         ha="center", va="center", fontsize=7)
        logical.text(-0.3, y + 0.31, f"row {b}\nlength {n}", ha="right", va="center", fontsize=7)
    logical.set_xlim(-3.2, width + 0.2)
    logical.set_ylim(-0.45, len(LENGTHS) - 0.2)
    logical.set_title("each row's tokens (positions), cut into logical pages of 4:\n"
                      "logical page i of row b is physical page page_table[b, i]", fontsize=8)
    logical.axis("off")
    # bottom left: the page table
    table.imshow(np.where(PAGE_TABLE >= 0, np.arange(len(LENGTHS))[:, None], np.nan),
                 cmap=ListedColormap(ROWS), vmin=0, vmax=len(ROWS) - 1, alpha=0.6, aspect="auto")
    for (b, i), page in np.ndenumerate(PAGE_TABLE):
        table.text(i, b, str(page), ha="center", va="center", fontsize=8, color="black" if page >= 0 else "grey")
    table.set_xticks(range(PAGE_TABLE.shape[1]), [f"i={i}" for i in range(PAGE_TABLE.shape[1])], fontsize=7)
    table.set_yticks(range(len(LENGTHS)), [f"b={b}" for b in range(len(LENGTHS))], fontsize=7)
    table.set_title("page_table (B, max_pages): logical page i of row b", fontsize=8)
    # right: the pool, each slot labelled from what the write put there
    for page in range(NUM_PAGES):
        for slot in range(PAGE_SIZE):
            tag = pool[page, slot]
            y = NUM_PAGES - 1 - page
            if tag:
                b, p = tag // 1000 - 1, tag % 1000
                physical.add_patch(Rectangle((slot, y), 0.94, 0.86, color=ROWS[b]))
                physical.text(slot + 0.47, y + 0.43, f"{b}:{p}", ha="center", va="center", fontsize=7)
            else:
                used = page in PAGE_TABLE
                physical.add_patch(Rectangle((slot, y), 0.94, 0.86, facecolor="#f2f2f2" if used else "white",
                                             edgecolor="#bbbbbb", hatch="///" if used else None, lw=0.5))
        physical.text(-0.2, y + 0.43, f"page {page}" + ("" if page in PAGE_TABLE else " (free)"),
                      ha="right", va="center", fontsize=7)
    physical.set_xlim(-2.6, PAGE_SIZE)
    physical.set_ylim(-0.4, NUM_PAGES)
    physical.set_title("the pool (P, page_size): slot = row:position", fontsize=8)
    physical.text(PAGE_SIZE, -0.3, "hatched: past the row's length, never read", ha="right", fontsize=6)
    physical.axis("off")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def mask_and_states(lengths_q, lengths_k):
    """The packed causal mask ``(total_q, total_k)`` and the block states, from the library."""
    cu_q, cu_k = np.cumsum([0] + lengths_q), np.cumsum([0] + lengths_k)
    total_q, total_k = int(cu_q[-1]), int(cu_k[-1])
    packing = pack(cu_q, cu_k, total_q, total_k)
    t, s = np.arange(total_q)[:, None], np.arange(total_k)[None, :]
    mask = np.asarray(packed_mask_mod(packing, True, None)(0, 0, t, s))
    states = np.asarray(packed_block_mask(packing, True, None, block_sizes=(BLOCK, BLOCK)).states)[0, 0]
    query_ids, key_ids = np.asarray(packing.query_ids), np.asarray(packing.key_ids)
    return mask, states, query_ids, key_ids, cu_q, cu_k


def draw_mask(ax, lengths_q, lengths_k, title):
    mask, states, query_ids, _, cu_q, cu_k = mask_and_states(lengths_q, lengths_k)
    total_q, total_k = mask.shape
    background = np.kron(states, np.ones((BLOCK, BLOCK)))[:total_q, :total_k]
    ax.imshow(background, cmap=STATES, vmin=0, vmax=2)
    colours = np.where(mask, query_ids[:, None], np.nan)
    ax.imshow(colours, cmap=ListedColormap(ROWS), vmin=0, vmax=len(ROWS) - 1)
    for edge in np.arange(0, total_k + 1, BLOCK) - 0.5:
        ax.axvline(edge, color="black", lw=0.5)
    for edge in np.arange(0, total_q + 1, BLOCK) - 0.5:
        ax.axhline(edge, color="black", lw=0.5)
    for c in cu_k[1:-1]:
        ax.axvline(c - 0.5, color="#c0392b", lw=1, ls="--")
    for c in cu_q[1:-1]:
        ax.axhline(c - 0.5, color="#c0392b", lw=1, ls="--")
    counts = [int((states == v).sum()) for v in (0, 1, 2)]
    ax.set_title(f"{title}\nblocks of 4: {counts[0]} empty, {counts[1]} partial, {counts[2]} full", fontsize=8)
    ax.set_xlabel("key row (packed)", fontsize=8)
    ax.set_ylabel("query row (packed)", fontsize=8)
    ax.set_xticks(range(total_k))
    ax.set_yticks(range(total_q))
    ax.tick_params(labelsize=6)


def draw_varlen(path):
    fig = plt.figure(figsize=(8.4, 5.6))
    strip = fig.add_axes([0.06, 0.8, 0.9, 0.13])
    left = fig.add_axes([0.06, 0.08, 0.5, 0.6])
    right = fig.add_axes([0.62, 0.08, 0.36, 0.6])
    # top: the packed tokens and cu_seqlens
    cu = np.cumsum([0] + SEQ_LENGTHS_K)
    for b, n in enumerate(SEQ_LENGTHS_K):
        for i in range(n):
            strip.add_patch(Rectangle((cu[b] + i, 0), 0.94, 1, color=ROWS[b]))
            strip.text(cu[b] + i + 0.47, 0.5, str(cu[b] + i), ha="center", va="center", fontsize=7)
        strip.text(cu[b] + n / 2, -0.35, f"sequence {b}: {n} tokens", ha="center", va="center", fontsize=7)
    for b, c in enumerate(cu):
        strip.plot([c - 0.03] * 2, [-0.1, 1.45], color="#c0392b", lw=1.2)
        strip.text(c, 1.6, f"cu_seqlens[{b}] = {c}", ha="center", va="bottom", fontsize=7, color="#c0392b")
    strip.set_xlim(-0.6, cu[-1] + 0.6)
    strip.set_ylim(-0.6, 2.3)
    strip.axis("off")
    fig.text(0.5, 0.97, f"one packed axis (total = {cu[-1]}): query/key/value rows of sequence b are "
             "cu_seqlens[b] : cu_seqlens[b + 1]", ha="center", va="top", fontsize=8)
    draw_mask(left, SEQ_LENGTHS_K, SEQ_LENGTHS_K, f"cu_seqlens_q = cu_seqlens_k = {cu.tolist()}, is_causal")
    cu_q = np.cumsum([0] + SEQ_LENGTHS_Q).tolist()
    draw_mask(right, SEQ_LENGTHS_Q, SEQ_LENGTHS_K, f"cu_seqlens_q = {cu_q}: the last {SEQ_LENGTHS_Q}\n"
              "queries, causal from the bottom right")
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    IMAGES.mkdir(exist_ok=True)
    for name, draw in (("paged", draw_paged), ("varlen", draw_varlen)):
        draw(IMAGES / f"serving_{name}.png")
        print(IMAGES / f"serving_{name}.png")
