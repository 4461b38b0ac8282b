"""Heads that learn different jobs: a two-head attention layer trained on a task that needs two.

    python -m examples.specialised_heads                 # trains, prints, writes specialised_heads.png
    python -m examples.specialised_heads --steps 300     # shorter

The tutorial's multi-head example gives each head a job (one links "cat" with "sat",
another "on" with "mat"). Random heads have no jobs; training gives them one when the task
needs several. Here each position holds a pair, a *key* symbol and a *value* symbol, and
the model must say two things at every position t:

- the key symbol of the previous position, ``key[t - 1]``: a job by *position*;
- the value symbol stored at the earlier position with the same key (every key appears
  twice in a sequence; at its second appearance the answer is the value of its first):
  a job by *content*, a lookup of the matching token.

The model is one layer of multi-head self-attention (``attention_jax.multi_head_attention``,
N = 2 heads, each position seeing only the positions before it) between embeddings
(key + value + position) and two linear read-outs, trained with optax's Adam. Nothing tells
a head which job is its own; one attention pattern cannot do both, so they split the work.
The picture (``--plot``) shows both heads' weights on one held-out sequence: one is the
sub-diagonal (the previous position), the other jumps to the matching key.

At the defaults (600 steps of batch 64) it trains in about 4 s on a 2-core CPU (about 11 s
with start-up and compilation), and the heads specialise cleanly: on 1000 held-out
sequences both answers are 100% right; one head puts a mean weight of 1.00 on the previous
position (0.12 on the matching one), the other 1.00 on the matching position (0.22 on the
previous one). Where there is no match yet (a key's first appearance), the lookup head
has nothing to find and its row is arbitrary.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import attention_jax
from attention_np.viz import plot_attention

LENGTH = 16          # T: positions per sequence
KEYS = LENGTH // 2   # key symbols: each appears exactly twice in a sequence
VALUES = 8           # value symbols, drawn freely


def make_batch(rng, batch):
    """Sequences of (key, value) pairs and the two targets.

    Returns int32 ``keys (B, T)``, ``values (B, T)``, ``previous (B, T)`` (``keys[t - 1]``),
    ``match (B, T)`` (the value at the other, earlier, position of ``keys[t]``) and the bool
    ``has_previous (B, T)``, ``has_match (B, T)``, ``match_position (B, T)`` (that earlier
    position, -1 where there is none).
    """
    keys = np.stack([rng.permutation(np.repeat(np.arange(KEYS), 2)) for _ in range(batch)])  # (B, T)
    values = rng.integers(0, VALUES, (batch, LENGTH))                        # (B, T)
    previous = np.concatenate([np.zeros((batch, 1), keys.dtype), keys[:, :-1]], axis=1)  # (B, T)
    has_previous = np.broadcast_to(np.arange(LENGTH) >= 1, (batch, LENGTH))
    earlier = (keys[:, :, None] == keys[:, None, :]) & np.tri(LENGTH, k=-1, dtype=bool)  # (B, T, S): same key, s < t
    has_match = earlier.any(-1)                                               # (B, T)
    match_position = np.where(has_match, earlier.argmax(-1), -1)              # (B, T)
    match = np.take_along_axis(values, np.maximum(match_position, 0), axis=1)  # (B, T)
    return {"keys": keys.astype(np.int32), "values": values.astype(np.int32), "previous": previous.astype(np.int32),
            "match": match.astype(np.int32), "has_previous": has_previous, "has_match": has_match,
            "match_position": match_position}


def init_params(rng, *, width=32, head_dim=16, num_heads=2):
    """Embeddings ``(KEYS|VALUES|LENGTH, E)``, one multi-head attention layer (Flax layout),
    and two read-outs ``(2E, KEYS)`` and ``(2E, VALUES)`` from ``[x; attention output]``."""
    rngs = jax.random.split(rng, 6)
    normal = lambda r, shape, scale: scale * jax.random.normal(r, shape)
    return {
        "key_embed": normal(rngs[0], (KEYS, width), 1.0),
        "value_embed": normal(rngs[1], (VALUES, width), 1.0),
        "position_embed": normal(rngs[2], (LENGTH, width), 1.0),
        "attention": attention_jax.init_multi_head_params(rngs[3], width, num_heads, head_dim),
        "previous_out": {"kernel": normal(rngs[4], (2 * width, KEYS), (2 * width) ** -0.5), "bias": jnp.zeros(KEYS)},
        "match_out": {"kernel": normal(rngs[5], (2 * width, VALUES), (2 * width) ** -0.5), "bias": jnp.zeros(VALUES)},
    }


def forward(params, keys, values):
    """``keys, values (B, T)`` -> ``(previous_logits (B, T, KEYS), match_logits (B, T, VALUES),
    weights (B, N, T, T))``: position t attends to positions s < t only."""
    x = params["key_embed"][keys] + params["value_embed"][values] + params["position_embed"]  # (B, T, E)
    before = jnp.tri(LENGTH, k=-1, dtype=bool)                               # (T, S): s < t; row 0 sees nothing
    out, weights = attention_jax.multi_head_attention(params["attention"], x, mask=before)  # (B, T, E), (B, N, T, T)
    features = jnp.concatenate([x, out], axis=-1)                            # (B, T, 2E)
    previous_logits = features @ params["previous_out"]["kernel"] + params["previous_out"]["bias"]
    match_logits = features @ params["match_out"]["kernel"] + params["match_out"]["bias"]
    return previous_logits, match_logits, weights


def loss_fn(params, batch):
    """Mean cross-entropy of both targets, each over the positions that have one; and the accuracies."""
    previous_logits, match_logits, _ = forward(params, batch["keys"], batch["values"])
    terms, accuracies = [], []
    for logits, target, where in ((previous_logits, batch["previous"], batch["has_previous"]),
                                  (match_logits, batch["match"], batch["has_match"])):
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, target)  # (B, T)
        terms.append((nll * where).sum() / where.sum())
        accuracies.append(((logits.argmax(-1) == target) * where).sum() / where.sum())
    return terms[0] + terms[1], jnp.stack(accuracies)


def train(*, steps=600, batch=64, learning_rate=1e-2, seed=0, width=32, head_dim=16):
    """Train with Adam; returns ``(params, losses, seconds)``."""
    rng = np.random.default_rng(seed)
    params = init_params(jax.random.key(seed), width=width, head_dim=head_dim)
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses, start = [], time.perf_counter()
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, make_batch(rng, batch))
        losses.append(float(loss))
    return params, losses, time.perf_counter() - start


def head_jobs(params, *, n=1000, seed=12345):
    """On ``n`` held-out sequences: both accuracies, and each head's mean weight on the
    previous position (over t >= 1) and on the matching position (over the positions with
    a match). Returns a dict, with the held-out batch and weights for the picture."""
    batch = make_batch(np.random.default_rng(seed), n)
    _, accuracy = jax.jit(loss_fn)(params, batch)
    _, _, weights = jax.jit(forward)(params, batch["keys"], batch["values"])
    weights = np.asarray(weights)                                            # (B, N, T, T)
    t = np.arange(1, LENGTH)
    on_previous = weights[:, :, t, t - 1].mean(axis=(0, 2))                  # (N,)
    b, q = np.nonzero(batch["has_match"])
    on_match = weights[b, :, q, batch["match_position"][b, q]].mean(axis=0)  # (N,)
    return {"previous_accuracy": float(accuracy[0]), "match_accuracy": float(accuracy[1]),
            "on_previous": on_previous, "on_match": on_match, "batch": batch, "weights": weights}


def plot(result, path, *, row=0, title=""):
    """Both heads' weights on held-out sequence ``row``, side by side, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = result["batch"]
    labels = [f"{'ABCDEFGH'[k]}{v}" for k, v in zip(batch["keys"][row], batch["values"][row])]  # key letter, value digit
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), layout="constrained")
    jobs = {n: ("previous position" if result["on_previous"][n] > result["on_match"][n] else "matching key")
            for n in range(2)}
    for n, ax in enumerate(axes):
        plot_attention(result["weights"][row, n], labels, labels, ax=ax, annotate=False,
                       title=f"head {n + 1}: {jobs[n]} "
                             f"(mean weight {max(result['on_previous'][n], result['on_match'][n]):.2f})")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m examples.specialised_heads", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=1000, help="held-out sequences to measure the heads on")
    parser.add_argument("--plot", default="specialised_heads.png", help="PNG of both heads' weights ('' for none)")
    args = parser.parse_args(argv)

    params, losses, seconds = train(steps=args.steps, batch=args.batch, learning_rate=args.learning_rate, seed=args.seed)
    result = head_jobs(params, n=args.heldout)
    result.update(losses=losses, seconds=seconds)
    print(f"{args.steps} steps of batch {args.batch} in {seconds:.1f} s; loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f}")
    print(f"held-out accuracy ({args.heldout} sequences): previous key {result['previous_accuracy']:.1%}, matching key's value "
          f"{result['match_accuracy']:.1%}")
    for n in range(2):
        print(f"head {n + 1}: mean weight on the previous position {result['on_previous'][n]:.2f}, "
              f"on the matching position {result['on_match'][n]:.2f}")
    if args.plot:
        plot(result, args.plot, title=f"two heads after {args.steps} steps: each row is a position t, "
                                      "each column a position s < t it may look at (labels: key letter, value digit)")
        print(f"wrote {args.plot}")
    return result


if __name__ == "__main__":
    main()
