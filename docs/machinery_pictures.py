"""Pictures of the machinery, drawn from the library's own numbers: what goes in, what comes
out, and the shape at every arrow.

    python docs/machinery_pictures.py   # writes docs/images/machinery_*.png

- ``machinery_self_attention.png``: one sentence, its queries, keys and values (three
  projections of the same words), the scores, the weights and the output of
  ``attention_np.self_attention``.
- ``machinery_multi_head.png``: multi-head attention split into heads, attended in every
  head, and the heads concatenated and mixed back (``attention_np.multi_head_attention``).
- ``machinery_seq2seq.png``: the encoder - attention - decoder of ``seq2seq.py`` (the
  tutorial's architecture, with its additive attention), one decoder step, the shape at
  every arrow.

Every matrix is drawn cell by cell from the arrays the library computes on a seeded input,
so the pictures change when the code does; the tour imports these functions and shows the
figures, and the tests redraw the files.
"""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch, Rectangle

import attention_np

IMAGES = Path(__file__).with_name("images")
WORDS = "The cat sat on the mat".split()
CELL = 0.45                                            # the side of one drawn matrix entry, in canvas units
UNITS_PER_INCH = 2.0
HEAD_COLOURS = ("Blues", "Oranges", "Greens")          # one colour map a head
ARROW = {"arrowstyle": "-|>", "color": "#444444", "lw": 1.3, "shrinkA": 2, "shrinkB": 2, "mutation_scale": 14}
NOTE = {"fontsize": 9, "color": "#333333"}


def _canvas(width, height, title, subtitle):
    """A blank figure of ``width`` x ``height`` canvas units (two to the inch), title and subtitle on top."""
    fig = plt.figure(figsize=(width / UNITS_PER_INCH, height / UNITS_PER_INCH))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, width), ylim=(0, height))
    ax.axis("off")
    ax.text(width / 2, height - 0.3, title, ha="center", va="top", fontsize=14)
    ax.text(width / 2, height - 1.15, subtitle, ha="center", va="top", **NOTE)
    return fig, ax


def _matrix(ax, x, y, values, *, cmap="Greys", title=None, shape=None, row_labels=None, groups=None):
    """Draw ``values (rows, cols)`` cell by cell with the lower-left corner at ``(x, y)``: the
    shade is the entry's size (weights: their value); ``title`` above, ``shape`` below,
    ``row_labels`` on the left. ``groups``: that many equal blocks of columns, each in its own
    colour map and frame (the heads). Returns ``(x0, y0, x1, y1)``."""
    rows, cols = values.shape
    span = np.abs(values).max() or 1.0
    block = cols // groups if groups else cols
    for r in range(rows):
        for c in range(cols):
            colours = plt.get_cmap(HEAD_COLOURS[c // block] if groups else cmap)
            ax.add_patch(Rectangle((x + c * CELL, y + (rows - 1 - r) * CELL), CELL, CELL,
                                   facecolor=colours(0.12 + 0.8 * abs(values[r, c]) / span), edgecolor="white", lw=0.8))
    width, height = cols * CELL, rows * CELL
    for g in range(groups or 0):
        ax.add_patch(Rectangle((x + g * block * CELL, y), block * CELL, height, fill=False, lw=1.8,
                               edgecolor=plt.get_cmap(HEAD_COLOURS[g])(0.9)))
    if title:
        ax.text(x + width / 2, y + height + 0.15, title, ha="center", va="bottom", fontsize=11)
    if shape:
        ax.text(x + width / 2, y - 0.12, shape, ha="center", va="top", fontsize=9.5, family="monospace")
    for r, label in enumerate(row_labels or []):
        ax.text(x - 0.1, y + (rows - 1 - r + 0.5) * CELL, label, ha="right", va="center", fontsize=9.5)
    return x, y, x + width, y + height


def _middle(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _arrow(ax, start, end, label=None, *, at=0.5, dy=0.12, va="bottom", colour="#444444", **style):
    """An arrow from ``start`` to ``end``, ``label`` at the fraction ``at`` of the way, ``dy`` above it."""
    ax.annotate("", xy=end, xytext=start, arrowprops={**ARROW, "color": colour, **style})
    if label:
        where = (start[0] + at * (end[0] - start[0]), start[1] + at * (end[1] - start[1]) + dy)
        ax.text(*where, label, ha="center", va=va, fontsize=9.5, linespacing=1.3,
                bbox={"boxstyle": "round,pad=0.12", "facecolor": "white", "edgecolor": "none"})


def _words(seed=0, features=8):
    """The six words of the sentence as ``(B, S, E) = (1, 6, 8)`` toy embeddings; "The" and "the" are one."""
    rng = np.random.default_rng(seed)
    vectors = {w: rng.normal(size=features) for w in dict.fromkeys(w.lower() for w in WORDS)}
    return np.stack([vectors[w.lower()] for w in WORDS])[None]          # (1, 6, 8)


def draw_self_attention():
    """Self-attention of one sentence: q, k and v are three projections of the same words."""
    x = _words()                                                          # (B, S, E) = (1, 6, 8)
    E, H = x.shape[-1], 4
    rng = np.random.default_rng(1)
    params = {name: {"kernel": rng.normal(size=(E, H)) / np.sqrt(E), "bias": np.zeros(H)}
              for name in ("query", "key", "value")}
    q, k, v = (x @ params[name]["kernel"] for name in ("query", "key", "value"))  # (B, S, H) each
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(H)                        # (B, S, S)
    out, weights = attention_np.self_attention(params, x)                 # (B, S, H), (B, S, S)
    fig, ax = _canvas(27.5, 15, "Self-attention: one sequence, three projections",
                      "B = 1 sentence, S = 6 words of E = 8 features, projected to H = 4 features (random, untrained "
                      "kernels). Queries, keys and values all come from x, so T = S;\ncross-attention takes the keys "
                      "and values from another sequence. Shades: the size of each number.")
    x0 = _matrix(ax, 1.6, 5.2, x[0], title="x: the words", shape="(B, S, E) = (1, 6, 8)", row_labels=WORDS)
    projected = {}
    for letter, name, y, cmap in (("q", "queries", 9.6, "Blues"), ("k", "keys", 5.2, "Oranges"),
                                  ("v", "values", 0.9, "Greens")):
        projected[letter] = _matrix(ax, 10.4, y, {"q": q, "k": k, "v": v}[letter][0], cmap=cmap,
                                    title=f"${letter}$: the {name}", shape="(B, S, H) = (1, 6, 4)")
        _arrow(ax, (x0[2] + 0.15, _middle(x0)[1]), (projected[letter][0] - 0.15, _middle(projected[letter])[1]),
               rf"$x W_{letter} + b_{letter}$" + "\n" + rf"$W_{letter}$: (E, H) = (8, 4)", at=0.55, dy=-0.55)
    s0 = _matrix(ax, 16.0, 7.6, scores[0], cmap="Purples", title=r"scores $q k^\top / \sqrt{H}$",
                 shape="(B, T, S) = (1, 6, 6)", row_labels=WORDS)
    _arrow(ax, (projected["q"][2] + 0.15, _middle(projected["q"])[1]), (s0[0] - 0.9, s0[3] - 0.6))
    _arrow(ax, (projected["k"][2] + 0.15, _middle(projected["k"])[1]), (s0[0] - 0.9, s0[1] + 0.6))
    ax.text(s0[0] - 0.15, s0[1] - 0.65, "a row a query,\na column a key", ha="right", va="top", **NOTE)
    w0 = _matrix(ax, 21.6, 7.6, weights[0], cmap="viridis", title="weights: softmax of each row",
                 shape="(B, T, S): rows sum to 1")
    _arrow(ax, (s0[2] + 0.15, _middle(s0)[1]), (w0[0] - 0.15, _middle(w0)[1]))
    o0 = _matrix(ax, 22.5, 0.9, out[0], cmap="Greens", title="out = weights $v$", shape="(B, T, H) = (1, 6, 4)")
    _arrow(ax, (_middle(w0)[0], w0[1] - 0.7), (_middle(o0)[0], o0[3] + 0.65))
    _arrow(ax, (projected["v"][2] + 0.15, _middle(projected["v"])[1]), (o0[0] - 0.15, _middle(o0)[1]),
           "each output row: the values averaged with that row's weights")
    return fig


def draw_multi_head():
    """Multi-head attention: project into N heads, attend in each, concatenate, mix back."""
    x = _words()                                                          # (B, T, E) = (1, 6, 8)
    E, N, H = x.shape[-1], 3, 2
    params = attention_np.init_multi_head_params(np.random.default_rng(2), E, N, H, dtype=np.float64)
    q, k, v = (np.einsum("BTE,ENH->BTNH", x, params[n]["kernel"]) for n in ("query", "key", "value"))  # (B, T, N, H)
    heads, weights = attention_np.scaled_dot_product_attention(q, k, v)  # (B, T, N, H), (B, N, T, S)
    out, _ = attention_np.multi_head_attention(params, x)                 # (B, T, E)
    fig, ax = _canvas(30, 14.5, "Multi-head attention: split, attend, concatenate",
                      f"B = 1, T = S = 6 words of E = 8 features; N = {N} heads of H = {H} features each "
                      "(random, untrained kernels). Each head has its own projections and its own weights.")
    x0 = _matrix(ax, 1.6, 5.6, x[0], title="x", shape="(B, T, E) = (1, 6, 8)", row_labels=WORDS)
    q0 = _matrix(ax, 9.0, 5.6, q[0].reshape(6, N * H), groups=N, title="$q$, in N = 3 heads",
                 shape="(B, T, N, H) = (1, 6, 3, 2)")
    _arrow(ax, (x0[2] + 0.15, _middle(x0)[1]), (q0[0] - 0.15, _middle(q0)[1]),
           "$x W^Q$\n$W^Q$: (E, N, H)\n= (8, 3, 2)", dy=-1.5)
    ax.text(_middle(q0)[0], q0[1] - 0.75, "$k$ and $v$ the same way,\nkernels (E, K, H); K = N here",
            ha="center", va="top", **NOTE)
    attended = []
    for n in range(N):
        w0 = _matrix(ax, 15.4, 9.8 - n * 4.45, weights[0, n], cmap=HEAD_COLOURS[n],
                     title=f"head {n + 1}: its weights", shape="(T, S) = (6, 6)")
        _arrow(ax, (q0[2] + 0.15, q0[3] - 0.45 - n * 0.9), (w0[0] - 0.15, _middle(w0)[1]),
               colour=plt.get_cmap(HEAD_COLOURS[n])(0.9), connectionstyle=f"arc3,rad={(0.15, 0.0, -0.15)[n]}")
        attended.append(w0)
    ax.text(_middle(attended[2])[0] + 2.6, attended[2][1] - 0.65,
            r"in each head n: softmax($q_n k_n^\top / \sqrt{H}$) $v_n$, on its own H = 2 features",
            ha="center", va="top", **NOTE)
    h0 = _matrix(ax, 21.0, 5.6, heads[0].reshape(6, N * H), groups=N, title="the heads, side by side",
                 shape="(B, T, N H) = (1, 6, 6)")
    for n, w0 in enumerate(attended):
        _arrow(ax, (w0[2] + 0.15, _middle(w0)[1]), (h0[0] - 0.15, _middle(h0)[1] + (1 - n) * 0.6),
               colour=plt.get_cmap(HEAD_COLOURS[n])(0.9))
    o0 = _matrix(ax, 25.6, 5.6, out[0], cmap="Greys", title="out", shape="(B, T, E) = (1, 6, 8)")
    _arrow(ax, (h0[2] + 0.15, _middle(h0)[1]), (o0[0] - 0.15, _middle(o0)[1]), "$W^O$", dy=0.12)
    ax.text(_middle(o0)[0] - 1.0, o0[1] - 0.75, r"out $= \sum_n \mathrm{head}_n W^O_n + b^O$," "\n"
            "$W^O$: (N, H, E): every output\nfeature mixes every head", ha="center", va="top", **NOTE)
    return fig


def _box(ax, x, y, width, height, text, colour):
    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.1", facecolor=colour,
                                edgecolor="#555555", lw=1.0))
    ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=10.5, linespacing=1.4)
    return x, y, x + width, y + height


def draw_seq2seq():
    """The encoder - attention - decoder of ``seq2seq.py`` with additive attention, one decoder step."""
    B, S, D, H, V = 1, 6, 8, 16, 9
    params = attention_np.init_seq2seq_params(np.random.default_rng(6), source_vocab=V, target_vocab=V, embed=D,
                                              hidden=H)
    source_ids = np.arange(2, 2 + S)[None]                                 # (B, S)
    logits, weights = attention_np.seq2seq_forward(params, source_ids, np.ones((B, 1), np.int32))  # (B, 1, V), (B, 1, S)
    assert logits.shape == (B, 1, V) and weights.shape == (B, 1, S)      # the shapes the picture states
    fig, ax = _canvas(30, 14, "Encoder - attention - decoder: one decoder step t",
                      "seq2seq.py with the tutorial's additive attention (Bahdanau's order: attend from the previous "
                      f"state). The tour's sizes: B = {B},\nS = {S} source words, D = {D} features an embedding, "
                      f"H = {H} hidden features, V = {V} target words.")
    encoder, attention, decoder, words = "#dbe8f5", "#fde6c8", "#dcefd9", "#f2f2f2"
    # the encoder, along the top
    ids = _box(ax, 1.0, 10.0, 3.4, 1.2, "source ids", words)
    emb = _box(ax, 7.4, 10.0, 3.4, 1.2, "embedding", encoder)
    gru = _box(ax, 13.8, 10.0, 4.8, 1.2, "encoder GRU\none step a position", encoder)
    outs = _box(ax, 22.4, 10.0, 5.6, 1.2, "encoder_outputs $h_s$\none state a position", encoder)
    _arrow(ax, (ids[2] + 0.2, 10.6), (emb[0] - 0.2, 10.6), "(B, S)")
    _arrow(ax, (emb[2] + 0.2, 10.6), (gru[0] - 0.2, 10.6), "(B, S, D)")
    _arrow(ax, (gru[2] + 0.2, 10.6), (outs[0] - 0.2, 10.6), "(B, S, H)")
    # the attention, in the middle
    state = _box(ax, 1.0, 5.6, 6.2, 1.6, "decoder state $s_{t-1}$\n($s_0$: the encoder's last state)", decoder)
    att = _box(ax, 12.0, 5.6, 9.0, 1.6, "attention (additive)\n"
               r"$e_s = \tanh([s_{t-1}; h_s]\, W + b)\, v$,  $a = \mathrm{softmax}(e)$", attention)
    ctx = _box(ax, 24.4, 5.6, 4.6, 1.6, "context\n" r"$c_t = \sum_s a_s h_s$", attention)
    _arrow(ax, (gru[0] + 0.6, gru[1] - 0.2), (state[0] + 3.8, state[3] + 0.2), "last state (B, H)", at=0.5,
           dy=-0.2, va="top")
    _arrow(ax, (_middle(outs)[0] - 1.0, outs[1] - 0.2), (att[2] - 2.0, att[3] + 0.2), "$h_s$: (B, S, H)", dy=-0.2,
           va="top")
    _arrow(ax, (state[2] + 0.2, _middle(att)[1]), (att[0] - 0.2, _middle(att)[1]), "the query\n$s_{t-1}$: (B, H)")
    _arrow(ax, (att[2] + 0.2, _middle(att)[1]), (ctx[0] - 0.2, _middle(att)[1]), "weights\n$a$: (B, S)")
    _arrow(ax, (_middle(outs)[0] + 1.5, outs[1] - 0.2), (_middle(ctx)[0], ctx[3] + 0.2))
    # the decoder, along the bottom
    prev = _box(ax, 1.0, 1.0, 3.4, 1.6, "previous word\n$y_{t-1}$", words)
    demb = _box(ax, 7.4, 1.0, 3.4, 1.6, "embedding", decoder)
    dgru = _box(ax, 13.8, 1.0, 5.0, 1.6, "decoder GRU\ninput [embedding; $c_t$]", decoder)
    head = _box(ax, 21.6, 1.0, 4.0, 1.6, "output layer\non $[s_t; c_t]$", decoder)
    word = _box(ax, 27.6, 1.0, 2.0, 1.6, "logits", words)
    _arrow(ax, (prev[2] + 0.2, 1.8), (demb[0] - 0.2, 1.8), "(B,)")
    _arrow(ax, (demb[2] + 0.2, 1.8), (dgru[0] - 0.2, 1.8), "(B, D)")
    _arrow(ax, (dgru[2] + 0.2, 1.8), (head[0] - 0.2, 1.8), "$s_t$: (B, H)")
    _arrow(ax, (head[2] + 0.2, 1.8), (word[0] - 0.2, 1.8), "(B, V)", dy=0.5)
    _arrow(ax, (ctx[0] + 0.8, ctx[1] - 0.2), (dgru[2] - 1.0, dgru[3] + 0.2), "$c_t$: (B, H)", at=0.45)
    _arrow(ax, (_middle(ctx)[0] + 1.0, ctx[1] - 0.2), (_middle(head)[0] + 0.8, head[3] + 0.2))
    _arrow(ax, (_middle(state)[0] + 1.5, state[1] - 0.2), (dgru[0] + 0.8, dgru[3] + 0.2), "its state\n(B, H)",
           at=0.5, dy=-0.2, va="top")
    _arrow(ax, (dgru[0] + 2.5, dgru[1] - 0.2), (state[0] + 0.8, state[1] - 0.2), colour="#2c7a2c", ls="--",
           connectionstyle="arc3,rad=-0.35")
    ax.text(17.0, 0.2, "$s_t$ becomes the next step's $s_{t-1}$: one step a target word",
            ha="left", va="bottom", fontsize=9.5, color="#2c7a2c")
    return fig


DRAWINGS = {"self_attention": draw_self_attention, "multi_head": draw_multi_head, "seq2seq": draw_seq2seq}


def main(folder=IMAGES):
    """Write every picture as ``folder/machinery_<name>.png``; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in DRAWINGS.items():
        fig = draw()
        path = folder / f"machinery_{name}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        paths.append(path)
    return paths


if __name__ == "__main__":
    import matplotlib

    matplotlib.use("Agg")
    for path in main():
        print(path)
