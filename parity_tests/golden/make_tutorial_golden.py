"""Regenerate ``tutorial_additive.npz`` by running the tutorial notebook's code cells verbatim.

Needs the ``torch`` extra (``pip install -e '.[torch]'``); nothing else in the project does.
Run from the repository root::

    python -m parity_tests.golden.make_tutorial_golden

``CELLS`` holds the notebook's first three code cells character for character (Step 1: the
``Attention`` class; Step 2: ``torch.manual_seed(0)``, B=1, S=4, H=8, ``encoder_outputs``
drawn *before* ``decoder_hidden``; Step 3: the module and its forward pass). They run in
one namespace, in the notebook's order, exactly as a Jupyter kernel runs them. Step 4 (the
prints) is ``python -m parity_tests tutorial``. The file stores every input, parameter and
output, so the tests and the report need no torch.
"""

import pathlib

import numpy as np

OUT = pathlib.Path(__file__).with_name("tutorial_additive.npz")

# The notebook's code cells, verbatim (Steps 1, 2 and 3).
CELLS = (
    '''import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, hidden_dim):
        super(Attention, self).__init__()
        self.attn = nn.Linear(hidden_dim * 2, hidden_dim)
        self.v = nn.Parameter(torch.rand(hidden_dim))

    def forward(self, hidden, encoder_outputs):
        batch_size = encoder_outputs.shape[0]
        seq_len = encoder_outputs.shape[1]
        hidden = hidden.unsqueeze(1).repeat(1, seq_len, 1)
        energy = torch.tanh(
            self.attn(torch.cat((hidden, encoder_outputs), dim=2)))
        energy = energy.permute(0, 2, 1)
        v = self.v.repeat(batch_size, 1).unsqueeze(1)
        attention_scores = torch.bmm(v, energy).squeeze(1)
        attention_weights = F.softmax(attention_scores, dim=1)
        context = torch.bmm(attention_weights.unsqueeze(1), encoder_outputs)
        return context, attention_weights
''',
    '''torch.manual_seed(0)

batch_size = 1
seq_len = 4
hidden_dim = 8
encoder_outputs = torch.randn(batch_size, seq_len, hidden_dim)
decoder_hidden = torch.randn(batch_size, hidden_dim)
''',
    '''attention = Attention(hidden_dim)
context, attn_weights = attention(decoder_hidden, encoder_outputs)
''',
)


def run_cells(cells=CELLS) -> dict:
    """Run ``cells`` in one fresh namespace (as a notebook kernel does) and return it."""
    namespace = {"__name__": "tutorial"}
    for i, cell in enumerate(cells):
        exec(compile(cell, f"<tutorial cell {i + 1}>", "exec"), namespace)
    return namespace


def tutorial_attention_class():
    """The notebook's ``Attention`` class (Step 1 only: no seed, no draws)."""
    return run_cells(CELLS[:1])["Attention"]


def golden_arrays(namespace) -> dict:
    """What the ``.npz`` stores, from a namespace in which the three cells have run."""
    state = {k: v.detach().numpy() for k, v in namespace["attention"].state_dict().items()}
    return {
        "encoder_outputs": namespace["encoder_outputs"].numpy(),
        "decoder_hidden": namespace["decoder_hidden"].numpy(),
        "attn_weight": state["attn.weight"],
        "attn_bias": state["attn.bias"],
        "v": state["v"],
        "context": namespace["context"].detach().numpy(),
        "attn_weights": namespace["attn_weights"].detach().numpy(),
    }


def main():
    namespace = run_cells()
    torch = namespace["torch"]
    np.savez(OUT, **golden_arrays(namespace), torch_version=np.array(torch.__version__))
    print(f"wrote {OUT} (torch {torch.__version__})")
    print("attn_weights:", namespace["attn_weights"].detach().numpy())


if __name__ == "__main__":
    main()
