"""The tutorial notebook's Step 4, on both halves: ``python -m parity_tests tutorial``.

The notebook prints the encoder outputs, the decoder hidden state, the attention weights and
the context vector of its seed-0 run. Here the stored PyTorch run (``golden/``) is printed
beside what ``attention_np`` and ``attention_jax`` compute from the same inputs and
parameters, with the max abs error of each.
"""

import pathlib

import jax
import numpy as np

from .gradients import to_jax
from .harness import compare
from .registry import Result

TUTORIAL_TOLERANCE = 1e-6  # either half vs the tutorial's PyTorch class, float32

# The notebook's Step 4 labels, in its order, and the golden's names for them.
QUANTITIES = (
    ("Encoder Outputs", "encoder_outputs"),
    ("Decoder Hidden State", "decoder_hidden"),
    ("Attention Weights", "attn_weights"),
    ("Context Vector", "context"),
)


GOLDEN_PATH = pathlib.Path(__file__).with_name("golden") / "tutorial_additive.npz"


def load_tutorial_golden():
    """The notebook's own run (``torch.manual_seed(0)``, B=1, S=4, H=8), as stored by
    ``parity_tests/golden/make_tutorial_golden.py``: ``(params, decoder_hidden,
    encoder_outputs, context, attn_weights)`` with ``params`` already in this package's layout."""
    import attention_np

    with np.load(GOLDEN_PATH) as g:
        state = {"attn.weight": g["attn_weight"], "attn.bias": g["attn_bias"], "v": g["v"]}
        params = attention_np.additive_params_from_torch(state)
        return params, g["decoder_hidden"], g["encoder_outputs"], g["context"], g["attn_weights"]


def run_tutorial_golden() -> list[Result]:
    """Both halves, float32, against the outputs of the tutorial's PyTorch class."""
    import attention_jax
    import attention_np

    params, hidden, encoder_outputs, context, weights = load_tutorial_golden()
    results = []
    for half, fn in (("numpy", attention_np.additive_attention), ("jax", attention_jax.additive_attention)):
        args = (params, hidden, encoder_outputs) if half == "numpy" else to_jax((params, hidden, encoder_outputs))
        with jax.default_matmul_precision("highest"):
            actual = jax.device_get(fn(*args))
        comparison = compare((context, weights), actual, TUTORIAL_TOLERANCE)
        results.append(Result("tutorial golden (PyTorch)", "additive_attention", "B=1 S=4 H=8", "float32", half, comparison, reference="PyTorch, stored"))
    return results


def tutorial_step4() -> dict:
    """``{name: {"pytorch": array, "numpy": array, "jax": array}}`` for the four quantities.

    Each half gets the stored inputs and parameters (converted with
    ``additive_params_from_torch``) and returns its own copy of the inputs (as the array it
    computed with, float32) and its context and weights.
    """
    import attention_jax
    import attention_np

    params, decoder_hidden, encoder_outputs, context, attn_weights = load_tutorial_golden()
    golden = {"encoder_outputs": encoder_outputs, "decoder_hidden": decoder_hidden, "attn_weights": attn_weights, "context": context}
    values = {name: {"pytorch": value} for name, value in golden.items()}
    for half, module, asarray in (("numpy", attention_np, np.asarray), ("jax", attention_jax, jax.numpy.asarray)):
        h, e = asarray(decoder_hidden), asarray(encoder_outputs)
        with jax.default_matmul_precision("highest"):
            ctx, weights = module.additive_attention(jax.tree.map(asarray, params), h, e)
        outputs = {"encoder_outputs": e, "decoder_hidden": h, "attn_weights": weights, "context": ctx}
        for name, value in outputs.items():
            values[name][half] = np.asarray(jax.device_get(value))
    return values


def _err(expected, actual) -> float:
    return float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))


def worst_error(values) -> float:
    """The largest max abs error of either half against PyTorch, over the four quantities."""
    return max(_err(v["pytorch"], v[half]) for v in values.values() for half in ("numpy", "jax"))


def format_step4(values) -> str:
    """The notebook's Step 4 printout with both halves beside PyTorch, and a summary."""
    fmt = {"float_kind": lambda x: f"{x: .4f}"}
    lines = [
        "The tutorial notebook's Step 4 (torch.manual_seed(0), batch_size=1, seq_len=4, hidden_dim=8):",
        "the stored PyTorch run beside attention_np and attention_jax (float32, same inputs and parameters).",
    ]
    for label, name in QUANTITIES:
        lines.append(f"\n{label}: shape {values[name]['pytorch'].shape}")
        for half, title in (("pytorch", "PyTorch"), ("numpy", "NumPy"), ("jax", "JAX")):
            text = np.array2string(values[name][half], formatter=fmt, max_line_width=100, prefix=" " * 10)
            err = "" if half == "pytorch" else f"   max abs err {_err(values[name]['pytorch'], values[name][half]):.1e}"
            lines.append(f"  {title:<8}{text}{err}")
    worst = worst_error(values)
    verdict = "pass" if worst <= TUTORIAL_TOLERANCE else "FAIL"
    lines.append(f"\nworst max abs err over both halves: {worst:.1e} (tol {TUTORIAL_TOLERANCE:.0e}): {verdict}")
    return "\n".join(lines)


def main() -> int:
    values = tutorial_step4()
    print(format_step4(values))
    return 0 if worst_error(values) <= TUTORIAL_TOLERANCE else 1
