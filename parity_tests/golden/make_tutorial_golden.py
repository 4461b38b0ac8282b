"""Regenerate ``tutorial_additive.npz``: the tutorial's PyTorch ``Attention`` class, run verbatim.

Needs the ``torch`` extra (``pip install -e '.[torch]'``); nothing else in the project does.
Run from the repository root::

    python -m parity_tests.golden.make_tutorial_golden

The cells below are the tutorial's, in its order: the class, then ``torch.manual_seed(0)``,
the sizes B=1, S=4, H=8, the inputs, the module, the forward pass, the context. The file
stores every input, parameter and output, so tests and the report need no torch.
"""

import pathlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = pathlib.Path(__file__).with_name("tutorial_additive.npz")


# --- the tutorial's class, verbatim -------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, hidden_dim):
        super().__init__()
        self.attn = nn.Linear(hidden_dim * 2, hidden_dim)
        self.v = nn.Parameter(torch.rand(hidden_dim))

    def forward(self, hidden, encoder_outputs):
        # hidden: [batch_size, hidden_dim], encoder_outputs: [batch_size, seq_len, hidden_dim]
        seq_len = encoder_outputs.size(1)
        hidden = hidden.unsqueeze(1).repeat(1, seq_len, 1)
        energy = torch.tanh(self.attn(torch.cat((hidden, encoder_outputs), dim=2)))
        attention_scores = torch.sum(self.v * energy, dim=2)
        attention_weights = F.softmax(attention_scores, dim=1)
        context = torch.bmm(attention_weights.unsqueeze(1), encoder_outputs)
        return context, attention_weights


def tutorial_run():
    """The tutorial's example cell: returns the module, its inputs and its outputs."""
    torch.manual_seed(0)
    batch_size, seq_len, hidden_dim = 1, 4, 8
    hidden = torch.randn(batch_size, hidden_dim)
    encoder_outputs = torch.randn(batch_size, seq_len, hidden_dim)
    attention = Attention(hidden_dim)
    context, attention_weights = attention(hidden, encoder_outputs)
    return attention, hidden, encoder_outputs, context, attention_weights


def main():
    attention, hidden, encoder_outputs, context, weights = tutorial_run()
    state = {k: v.detach().numpy() for k, v in attention.state_dict().items()}
    np.savez(
        OUT,
        hidden=hidden.numpy(),
        encoder_outputs=encoder_outputs.numpy(),
        attn_weight=state["attn.weight"],
        attn_bias=state["attn.bias"],
        v=state["v"],
        context=context.detach().numpy(),
        weights=weights.detach().numpy(),
        torch_version=np.array(torch.__version__),
    )
    print(f"wrote {OUT} (torch {torch.__version__})")
    print("weights:", weights.detach().numpy())


if __name__ == "__main__":
    main()
