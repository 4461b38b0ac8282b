"""How attention learns: fit the tutorial's additive attention to a target alignment, in NumPy.

    python -m examples.how_attention_learns              # 400 steps, well under a second
    python -m examples.how_attention_learns --steps 100 --learning-rate 0.5

No autodiff, no optimiser library: the gradients come from the hand-written backward pass
``attention_np.additive_attention_vjp`` (``attention_np/backward.py``), and training is
plain gradient descent, ``params -= learning_rate * d_params``.

The setup: one source sentence of S = 6 encoder outputs and T = 4 decoder states (the
tutorial's ``hidden_dim`` H = 8), all random and fixed. Each decoder state is one row of
the batch. The target says where each decoder step should look (a monotone alignment, as
in translation). The loss is the cross-entropy of the weights against the target (the
"supervised attention" of Liu et al. 2016, "Neural machine translation with supervised
attention"):

    L = -(1 / T) sum_t sum_s target[t, s] log weights[t, s]

so the gradient with respect to the weights is ``d_weights = -target / (T * weights)``;
the VJP carries it back through the softmax, ``v``, ``tanh`` and the dense layer to
``params``. Only the attention's parameters learn; the encoder outputs and decoder states
stay fixed.
"""

from __future__ import annotations

import argparse

import numpy as np

import attention_np

H, S = 8, 6  # the tutorial's hidden_dim; source length
# where each of the T = 4 decoder steps should look: one row per decoder step, summing to 1
TARGET = np.array([
    [0.7, 0.3, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.1, 0.8, 0.1, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.5, 0.5, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.1, 0.9],
])
T = len(TARGET)


def make_problem(seed: int = 0):
    """Parameters initialised as PyTorch initialises the tutorial's class, one random source
    sentence ``(1, S, H)`` seen by each of T decoder states ``(T, H)``."""
    rng = np.random.default_rng(seed)
    params = attention_np.init_additive_params(rng, H, dtype=np.float64)
    sentence = rng.normal(size=(1, S, H))
    encoder_outputs = np.repeat(sentence, T, axis=0)                   # (T, S, H): batch = decoder steps
    hidden = rng.normal(size=(T, H))                                   # (T, H)
    return params, hidden, encoder_outputs


def loss_and_gradients(params, hidden, encoder_outputs, target=TARGET):
    """The cross-entropy of the weights against ``target``, and its gradient w.r.t. ``params``."""
    context, weights = attention_np.additive_attention(params, hidden, encoder_outputs)  # (T, 1, H), (T, S)
    # 1. the loss, and its gradient with respect to the weights (zero where the target is zero)
    tiny = np.finfo(weights.dtype).tiny
    loss = -np.sum(target * np.log(np.maximum(weights, tiny))) / len(target)
    d_weights = -target / (len(target) * np.maximum(weights, tiny))    # (T, S)
    # 2. the loss does not read the context: its gradient is zero
    d_context = np.zeros_like(context)                                 # (T, 1, H)
    # 3. back through the attention, by hand (attention_np/backward.py)
    d_params, _, _ = attention_np.additive_attention_vjp(params, hidden, encoder_outputs, d_context, d_weights)
    return loss, weights, d_params


def gradient_step(params, d_params, learning_rate):
    """``params - learning_rate * d_params``, for the nested params dict."""
    if isinstance(params, dict):
        return {name: gradient_step(params[name], d_params[name], learning_rate) for name in params}
    return params - learning_rate * d_params


def fit(steps: int = 400, learning_rate: float = 1.0, seed: int = 0, log_every: int = 0):
    """Gradient descent on the alignment loss. Returns ``(params, losses, weights_before,
    weights_after)``; prints the loss every ``log_every`` steps (0: silent)."""
    params, hidden, encoder_outputs = make_problem(seed)
    losses = []
    weights_before = None
    for step in range(steps + 1):
        loss, weights, d_params = loss_and_gradients(params, hidden, encoder_outputs)
        losses.append(loss)
        weights_before = weights if weights_before is None else weights_before
        if log_every and step % log_every == 0:
            print(f"step {step:4d}   loss {loss:.4f}")
        if step < steps:
            params = gradient_step(params, d_params, learning_rate)
    return params, losses, weights_before, weights


def _table(title, weights):
    rows = [f"  {title}"]
    rows += [f"    step {t}: " + " ".join(f"{w:4.2f}" for w in row) for t, row in enumerate(weights)]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.how_attention_learns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--learning-rate", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"Fitting additive attention (H={H}, S={S}, T={T} decoder steps) to a target alignment")
    print("by gradient descent with the hand-written VJP (attention_np.additive_attention_vjp).\n")
    _, losses, before, after = fit(args.steps, args.learning_rate, args.seed, log_every=max(1, args.steps // 8))
    print(f"\nloss {losses[0]:.4f} -> {losses[-1]:.4f} (the target's own entropy, the lowest possible: "
          f"{-np.sum(TARGET * np.log(np.where(TARGET > 0, TARGET, 1))) / T:.4f})\n")
    print("Attention weights over the S source positions, one row per decoder step:")
    print(_table("before training", before))
    print(_table("after training", after))
    print(_table("target", TARGET))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
