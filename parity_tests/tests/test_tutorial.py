"""``python -m parity_tests tutorial``: the notebook's Step 4 for both halves beside PyTorch."""

import numpy as np

from parity_tests import load_tutorial_golden
from parity_tests.__main__ import main
from parity_tests.tutorial import QUANTITIES, tutorial_step4


def test_step4_prints_every_quantity_for_both_halves(capsys):
    assert main(["tutorial"]) == 0
    out = capsys.readouterr().out
    for label, _ in QUANTITIES:
        assert f"\n{label}: shape" in out
    assert out.count("max abs err") == 2 * len(QUANTITIES) + 1  # NumPy and JAX per quantity, and the summary
    assert out.rstrip().endswith(": pass")
    # the notebook's run: torch.randn under seed 0 starts with -1.1258 (encoder_outputs is drawn first)
    assert "[[[-1.1258 -1.1524" in out


def test_step4_values_are_the_golden_within_the_tutorial_tolerance():
    _, decoder_hidden, encoder_outputs, context, attn_weights = load_tutorial_golden()
    values = tutorial_step4()
    for expected, name in ((encoder_outputs, "encoder_outputs"), (decoder_hidden, "decoder_hidden"),
                           (context, "context"), (attn_weights, "attn_weights")):
        np.testing.assert_array_equal(values[name]["pytorch"], expected)
        for half in ("numpy", "jax"):
            assert values[name][half].shape == expected.shape
            np.testing.assert_allclose(values[name][half], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(values["attn_weights"]["numpy"].sum(-1), 1.0, rtol=1e-6)
