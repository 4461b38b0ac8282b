"""The tutorial notebook's Step 4, on both halves: ``python -m parity_tests tutorial``.

The notebook prints the encoder outputs, the decoder hidden state, the attention weights and
the context vector of its seed-0 run. Here the stored PyTorch run (``golden/``) is printed
beside what ``attention_np`` and ``attention_jax`` compute from the same inputs and
parameters, with the max abs error of each.
"""

import jax
import numpy as np

from .harness import TUTORIAL_TOLERANCE, load_tutorial_golden

# The notebook's Step 4 labels, in its order, and the golden's names for them.
QUANTITIES = (
    ("Encoder Outputs", "encoder_outputs"),
    ("Decoder Hidden State", "decoder_hidden"),
    ("Attention Weights", "attn_weights"),
    ("Context Vector", "context"),
)


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
