"""The tour notebook (docs/tour.ipynb): in sync with its py:percent twin, committed without
outputs, and executed top to bottom in under a minute, so it cannot rot.

After editing ``docs/tour.py``, regenerate the notebook with ``jupytext --sync docs/tour.py``.
"""

import re
import time
from pathlib import Path

import numpy as np
import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")

DOCS = Path(__file__).resolve().parents[2] / "docs"
NOTEBOOK, TWIN = DOCS / "tour.ipynb", DOCS / "tour.py"
RUNTIME_LIMIT_S = 60


def cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_notebook_and_py_twin_have_the_same_cells():
    from_ipynb, from_py = jupytext.read(NOTEBOOK), jupytext.read(TWIN)
    assert from_ipynb.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert len(cells(from_ipynb)) > 20
    for i, (a, b) in enumerate(zip(cells(from_ipynb), cells(from_py), strict=False)):
        assert a == b, f"cell {i} differs between tour.ipynb and tour.py: run `jupytext --sync docs/tour.py`"
    assert len(cells(from_ipynb)) == len(cells(from_py)), "run `jupytext --sync docs/tour.py`"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    with_outputs = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert not with_outputs, f"code cells {with_outputs} have outputs: clear them (jupytext --sync docs/tour.py)"


def test_tour_follows_the_tutorial_in_order():
    text = TWIN.read_text()
    sections = [
        "### 1. Soft attention", "### 2. Hard attention", "### 3. Self-attention", "### 4. Multi-head attention",
        "### 5. Cross-attention", "### 6. Scaled dot-product attention", "### 7. Location-based attention",
        "### 8. Global attention", "## How attention works, in three lines",
        "## The architecture: encoder - attention - decoder",
        "## The tutorial's implementation: Steps 1-4", "## How attention learns: one backward pass",
    ]
    positions = [text.index(s) for s in sections]
    assert positions == sorted(positions)


def test_script_saves_figures_where_there_is_no_screen(tmp_path, monkeypatch):
    # `python docs/tour.py` on a machine without a screen: matplotlib's backend is "agg",
    # where plt.show() draws nothing, so the tour's show() must save the figure instead
    matplotlib = pytest.importorskip("matplotlib")
    assert "IPython" not in TWIN.read_text()  # a script would print "<IPython.core.display.Image object>"
    setup = next(cell.source for cell in jupytext.read(TWIN).cells if cell.cell_type == "code")
    monkeypatch.chdir(tmp_path)
    backend = matplotlib.get_backend()
    matplotlib.use("agg")
    try:
        namespace = {}
        with np.printoptions():  # the setup cell sets numpy's print options: keep them to this test
            exec(setup, namespace)
        namespace["plt"].plot([0, 1], [1, 0])
        namespace["show"]("a_line")
    finally:
        matplotlib.use(backend)
    assert (tmp_path / "tour_figures" / "a_line.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not namespace["plt"].get_fignums(), "the saved figure is closed, not left to pile up"


@pytest.fixture(scope="module")
def executed():
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=RUNTIME_LIMIT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(DOCS)}}).execute()
    return notebook, time.perf_counter() - start


def _text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_tour_runs_top_to_bottom_in_under_a_minute(executed):
    notebook, seconds = executed
    assert seconds < RUNTIME_LIMIT_S, f"the tour took {seconds:.0f} s"
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


PARITY_SECTIONS = ["section 1, soft attention", "section 2, hard attention", "section 3, self-attention",
                   "section 4, multi-head attention", "section 5, cross-attention",
                   "section 6, scaled dot-product attention", "section 7, location-based attention",
                   "section 8, global attention", "how attention works", "the encoder - attention - decoder",
                   "the tutorial's implementation", "one backward pass", "a Transformer layer"]


def test_tour_shows_heatmaps_and_parity(executed):
    notebook, _ = executed
    images = sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))
    # eight types (multi-head in one figure), the causal mask, the average-to-attention steps, soft
    # beside scaled, Luong's location weights, global beside local self-attention, local-p, the
    # trained model's picture, the tutorial's weights; the three pictures of the machinery; and the
    # committed pictures of the trained heads and of accuracy by length
    assert images >= 20
    text = _text(notebook)
    # one parity line a section, in order, each within the float32 tolerance (the notebook asserts
    # it too); no line for each call
    lines = [line for line in text.splitlines() if line.startswith("parity, ")]
    pattern = (r"parity, (.+): (\d+) comparisons? of attention_np with attention_jax, "
               r"max \|difference\| = (\S+) \(float32 tolerance 1e-05\)")
    parsed = [re.fullmatch(pattern, line) for line in lines]
    assert all(parsed), lines
    assert [m[1] for m in parsed] == PARITY_SECTIONS
    assert sum(int(m[2]) for m in parsed) >= 18   # one comparison per mechanism call (18 in the tour)
    assert max(float(m[3]) for m in parsed) <= 1e-5
    assert "max |attention_np" not in text
    # the tutorial's own printed weights (Step 4), from the stored PyTorch run
    assert "[0.3385 0.1583 0.2507 0.2526]" in text


def test_tour_shows_that_the_scale_softens_the_weights(executed):
    notebook, _ = executed
    lines = _text(notebook).splitlines()
    line = next(x for x in lines if x.startswith("'chat' on 'cat':"))
    unscaled, scaled = map(float, re.findall(r"\d+\.\d+", line))
    # the text says: nearly all of the weight unscaled, much less scaled
    assert unscaled > 0.99 and 0.5 < scaled < 0.9
    line = next(x for x in lines if x.startswith("entropy of the weights"))
    unscaled_nats, scaled_nats, uniform = map(float, re.findall(r"\d+\.\d+", line))
    assert unscaled_nats < scaled_nats < uniform
    assert abs(uniform - np.log(6)) < 0.005   # six English words
    # the sweep over H: unscaled, entropy and gradient fall with the width; scaled, they stay level
    sweep = {x.split("entropy")[0].strip(): x for x in lines if " entropy " in x and "gradient" in x}
    unscaled_row = [float(v) for v in re.findall(r"\d+\.\d+", sweep["q.k"])]
    scaled_row = [float(v) for v in re.findall(r"\d+\.\d+", sweep["q.k / sqrt(H)"])]
    (entropy_u, gradient_u), (entropy_s, gradient_s) = (
        (row[:5], row[5:]) for row in (unscaled_row, scaled_row))
    assert entropy_u == sorted(entropy_u, reverse=True) and entropy_u[-1] < 0.2   # nearly one-hot at H = 512
    assert max(entropy_s) - min(entropy_s) < 0.3 and min(entropy_s) > entropy_u[0]
    assert gradient_u[-1] < 0.25 * gradient_s[-1] and max(gradient_s) - min(gradient_s) < 0.05


def test_tour_says_why_the_unscaled_softmax_is_sharp_and_states_what_it_prints(executed):
    # the scores' variance is about H, as the argument says; what makes the softmax sharp is that a
    # word and its translation match (a mean score far above the others'), and the numbers the
    # text quotes are the ones the cell prints
    notebook, _ = executed
    lines = _text(notebook).splitlines()
    line = next(x for x in lines if x.startswith("scores q.k: variance"))
    variance, H, matched, others = map(float, re.findall(r"-?\d+(?:\.\d+)?", line.split(":", 1)[1]))
    assert H == 8 and 0.75 * H < variance < 1.25 * H, line
    assert matched - others > np.sqrt(H), line
    text = TWIN.read_text()
    section = text[text.index("# Section 1's soft attention used the same"):text.index("### 7. Location-based")]
    printed = next(x for x in lines if x.startswith("'chat' scores 'cat' and 'on':"))
    for number in re.findall(r"\d+\.\d+", printed):
        assert number in section, (number, printed)


def test_tour_keeps_one_meaning_per_letter_and_one_vector_convention():
    text = TWIN.read_text()
    # H is the features of one word / one head (8) throughout; the model width is E, a head's width head_dim
    assert not re.search(r"\bH\s*=\s*4\b", text)
    for call in ("init_multi_head_params(", "init_transformer_encoder_params(", "sinusoidal_positions("):
        arguments = text[text.index(call) + len(call):].split("\n", 1)[0].split("#", 1)[0]  # the code on that line
        assert not re.search(r"\bH\b", arguments), (call, arguments)
    # vectors are rows, so a dot product is q k^T, never the column form q^T k
    assert not re.search(r"[qk](_\w)?\^\\top\s*[kq]", text)
    # the tutorial's weights are one row, for the decoder state, not a decoder step
    assert '["step 4"]' not in text


def test_tour_says_which_pictures_are_the_same_and_checks_it(executed):
    # cross-attention with identity projections is scaled dot-product attention; Luong's
    # global attention with the dot score has the weights of soft attention on dot scores
    notebook, _ = executed
    same = [x for x in _text(notebook).splitlines() if x.startswith("the same weights as")]
    assert same == ["the same weights as the cross-attention of section 5: True",
                    "the same weights as the soft attention of section 1: True"]


def test_tour_exercises_run_open_and_say_not_yet(executed):
    # the exercises are left for the learner: each check cell prints "not yet: ...", none fails
    notebook, _ = executed
    verdicts = [x for x in _text(notebook).splitlines() if x.startswith(("not yet: ", "right"))]
    assert len(verdicts) == 10 and all(v.startswith("not yet: ") for v in verdicts), verdicts


def test_tour_shows_global_attention_in_both_senses(executed):
    # the tutorial's sense: every word sees all six; a window of one either side: two or three
    notebook, _ = executed
    line = next(x for x in _text(notebook).splitlines() if x.startswith("nonzero weights per row, global:"))
    assert line == "nonzero weights per row, global: [6 6 6 6 6 6]  local: [2 3 3 3 3 2]"
    text = TWIN.read_text()
    section = text[text.index("### 8. Global attention"):text.index("## How attention works")]
    assert "local_window_size=1" in section and "global_attention(" in section and "local_attention(" in section


def test_tour_defines_the_shape_letters_where_it_first_uses_them():
    text = TWIN.read_text()
    table = text.index("| letter | what it counts | here |")
    assert table < text.index("(B, ")
    rows = text[table:text.index("\n\n", table)]
    assert re.findall(r"^# \| ([A-Z]) \|", rows, re.M) == ["B", "T", "S", "N", "K", "H", "E"]


def test_tour_explains_the_tie_and_how_hard_attention_is_trained(executed):
    notebook, _ = executed
    lines = _text(notebook).splitlines()
    # "Le" and "le" score "The" and "the" alike, and the argmax takes the first
    tie = next(x for x in lines if x.startswith("'le' scores 'The'"))
    the, the_lower = re.findall(r"-?\d+\.\d+", tie)
    assert the == the_lower
    assert "['The', 'cat', 'sat', 'sat', 'on', 'The', 'mat']" in next(x for x in lines if x.startswith("chosen English"))

    def row(start):
        line = next(x for x in lines if x.startswith(start))
        return np.array([float(v) for v in re.findall(r"-?\d+\.\d*", line.split(":", 1)[1])])

    assert np.all(row("gradient of the hard context:") == 0)   # argmax is flat: no signal
    exact = row("exact gradient of E[r]:")
    np.testing.assert_allclose(row("straight-through (softmax's):"), exact, atol=1e-3)
    few, many = row("REINFORCE, mean of    100 samples:"), row("REINFORCE, mean of  10000 samples:")
    assert np.abs(many - exact).max() < 0.01 < np.abs(few - exact).max()   # unbiased, but noisy
    assert np.sign(few[0]) != np.sign(exact[0])                              # as the text says
    assert row("Gumbel-softmax of a sample, tau 0.1:").max() > 0.95
    text = TWIN.read_text()
    section = text[text.index("### 2. Hard attention"):text.index("### 3. Self-attention")]
    for said in ("REINFORCE", "Straight-through", "Gumbel-softmax", "first of the equal scores"):
        assert said in section, said


def test_tour_builds_self_attention_from_an_average(executed):
    # Karpathy's path, before the library's self-attention: average, causal average, masked
    # softmax of zeros (the same weights), softmax of scores (causal self-attention)
    notebook, _ = executed
    lines = _text(notebook).splitlines()
    weights = {x.split("weights")[0].strip(): x.split(":")[1].split("out")[0] for x in lines
               if x[:2] in ("1.", "2.", "3.", "4.") and "weights of 'on'" in x}
    assert list(weights) == ["1. average", "2. causal average", "3. softmax of zeros", "4. softmax of scores"]
    assert weights["2. causal average"] == weights["3. softmax of zeros"]
    assert "step 4 is the library's causal attention: True" in lines
    text = TWIN.read_text()
    section = text[text.index("### 3. Self-attention"):text.index("### 4. Multi-head attention")]
    assert section.index("From an average to attention") < section.index("attention_np.self_attention(")


def test_tour_lists_the_score_functions_and_each_exists_in_both_halves():
    import attention_jax
    import attention_np

    text = TWIN.read_text()
    table = text[text.index("| score | $e_{ts}$ | paper | function |"):]
    table = table[:table.index("\n#\n")]
    rows = table.splitlines()[2:]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == ["content-based (cosine)", "additive (concat)", "location-based", "general", "dot", "scaled dot"]
    for paper in ("Graves, Wayne & Danihelka 2014", "Bahdanau", "Luong", "Vaswani"):
        assert paper in table, paper
    functions = re.findall(r"`(\w+)(?:\(|`)", table)
    assert "cosine_scores" in functions and len(functions) >= 8
    for name in functions:
        assert callable(getattr(attention_np, name)) and callable(getattr(attention_jax, name)), name


def test_tour_reads_the_core_first_and_runs_it(executed):
    notebook, _ = executed
    assert any(x.startswith("the core's weights for 'cat':") and x.endswith("as by hand: True")
               for x in _text(notebook).splitlines())
    text = TWIN.read_text()
    section = text[text.index("## How attention works, in three lines"):text.index("## The architecture")]
    assert "scaled_dot_product_attention_core" in section


def test_tour_pictures_say_what_they_show():
    # the saturation plot's axes start at 0; the random Luong kernel is called untrained
    text = TWIN.read_text()
    saturation = text[text.index("widths, results ="):text.index('show("saturation")')]
    assert "ylim=(0, None)" in saturation
    luong = text[text.index("location_params ="):text.index('show("luong_location")')]
    assert "untrained" in luong
    for draw in ("draw_self_attention()", "draw_multi_head()", "draw_seq2seq()"):
        assert draw in text, draw
