"""See attention learn: train the encoder - attention - decoder to reverse digit sequences.

    python -m examples.reverse                          # the tutorial's additive attention
    python -m examples.reverse --attention general      # or dot, concat, location_sensitive
    python -m examples.reverse --hard                   # hard attention (straight-through), beside soft

Reversing needs attention: the first output digit is the last input digit, which a
decoder without attention would have to recall from one compressed vector. With
attention, each output step looks at one source position, and the learned weights form
the anti-diagonal. Sequences have random lengths 5-15, padded, with source masks.

The JAX model (``attention_jax.seq2seq``) trains with optax (Adam); then the trained
parameters run through the NumPy reference, ``attention_np.greedy_decode``, to show that
both halves decode the same sequences. Writes a heatmap of the weights (``--plot``).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

import attention_jax
import attention_np
from attention_np.viz import plot_attention

PAD, BOS, DIGITS = 0, 1, 10  # token ids: 0 padding, 1 begin-of-sequence, 2..11 the digits 0..9
VOCAB = 2 + DIGITS
MIN_LEN, MAX_LEN = 5, 15


def make_batch(rng, batch):
    """Random digit sequences and their reverses, padded to MAX_LEN.

    Returns ``source_ids, target_in_ids, target_out_ids`` int32 ``(B, MAX_LEN)`` and the
    bool ``mask (B, MAX_LEN)`` of real tokens (the same for source and target: a reverse
    is as long as its source).
    """
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, batch)
    mask = np.arange(MAX_LEN) < lengths[:, None]                           # (B, L)
    digits = rng.integers(0, DIGITS, (batch, MAX_LEN)) + 2
    source = np.where(mask, digits, PAD)
    target = np.full_like(source, PAD)
    for b, n in enumerate(lengths):
        target[b, :n] = source[b, :n][::-1]
    target_in = np.concatenate([np.full((batch, 1), BOS), target[:, :-1]], axis=1)  # shifted right
    return source.astype(np.int32), target_in.astype(np.int32), target.astype(np.int32), mask


def token_accuracy(predicted, target, mask):
    """``(token accuracy, exact-sequence accuracy)`` over the real target positions."""
    correct = (np.asarray(predicted) == target) | ~mask
    return float(correct[mask].mean()), float(correct.all(axis=1).mean())


def train(attention="additive", *, hard=False, steps=1000, batch=128, embed=32, hidden=64,
          learning_rate=3e-3, seed=0, progress=True):
    """Train the JAX seq2seq; returns ``(params, losses, seconds)``."""
    rng = np.random.default_rng(seed)
    params = attention_jax.init_seq2seq_params(
        jax.random.key(seed), source_vocab=VOCAB, target_vocab=VOCAB, embed=embed, hidden=hidden, attention=attention
    )
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))
    opt_state = optimizer.init(params)

    def loss_fn(params, source, target_in, target_out, mask):
        logits, _ = attention_jax.seq2seq_forward(params, source, target_in, source_mask=mask, hard=hard)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, target_out)  # (B, T)
        accuracy = ((logits.argmax(-1) == target_out) * mask).sum() / mask.sum()
        return (nll * mask).sum() / mask.sum(), accuracy

    @jax.jit
    def step(params, opt_state, source, target_in, target_out, mask):
        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, source, target_in, target_out, mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, accuracy

    losses = []
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"{attention}{' hard' if hard else ''}", disable=not progress, mininterval=0.5)
    for i in bar:
        params, opt_state, loss, accuracy = step(params, opt_state, *make_batch(rng, batch))
        losses.append(float(loss))
        if i % 20 == 0 or i == steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{float(accuracy):.3f}")
    return params, losses, time.perf_counter() - start


def evaluate(params, *, hard=False, n=1000, seed=12345):
    """Greedy decoding of ``n`` held-out sequences in both halves.

    Returns a dict: token and exact-sequence accuracy (JAX), how many NumPy predictions
    equal the JAX ones, and the held-out batch with the JAX ids and weights.
    """
    source, _, target, mask = make_batch(np.random.default_rng(seed), n)
    ids, weights = attention_jax.greedy_decode(params, source, bos_id=BOS, max_len=MAX_LEN, source_mask=mask, hard=hard)
    ids, weights = np.asarray(ids), np.asarray(weights)
    np_params = jax.tree.map(np.asarray, params)
    np_ids, _ = attention_np.greedy_decode(np_params, source, bos_id=BOS, max_len=MAX_LEN, source_mask=mask, hard=hard)
    token, exact = token_accuracy(ids, target, mask)
    agree = int(((np_ids == ids) | ~mask).all(axis=1).sum())
    return {"token_accuracy": token, "exact_accuracy": exact, "numpy_agrees": agree, "n": n,
            "source": source, "mask": mask, "ids": ids, "weights": weights}


def diagnose(result):
    """``alignment_diagnostics`` of each held-out sequence's (length x length) weights, averaged;
    also on the source read backwards, where a perfect reversal is a monotonic diagonal."""
    rows = []
    for weights, n in zip(result["weights"], result["mask"].sum(1)):
        block = weights[:n, :n]
        forward = attention_np.alignment_diagnostics(block, band=0)
        backward = attention_np.alignment_diagnostics(block[:, ::-1], band=0)
        rows.append((forward["entropy"], forward["monotonicity"], backward["monotonicity"],
                     backward["diagonal_focus"], forward["coverage"].min(), forward["coverage"].max()))
    names = ("entropy", "monotonicity", "monotonicity_reversed_source", "anti_diagonal_focus", "coverage_min", "coverage_max")
    return dict(zip(names, np.mean(rows, axis=0)))


def plot(result, path, *, rows=(0, 1, 2), title=""):
    """Heatmaps of the held-out weights for a few sequences, side by side, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4.6))
    for ax, b in zip(np.atleast_1d(axes), rows):
        n = int(result["mask"][b].sum())
        source = [str(t - 2) for t in result["source"][b, :n]]
        predicted = [str(t - 2) if t >= 2 else "?" for t in result["ids"][b, :n]]
        plot_attention(result["weights"][b, :n, :n], source, predicted, ax=ax, title=f"held-out sequence, length {n}",
                       xlabel="source", ylabel="target")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run(attention, hard, args):
    params, losses, seconds = train(
        attention, hard=hard, steps=args.steps, batch=args.batch, embed=args.embed, hidden=args.hidden,
        learning_rate=args.learning_rate, seed=args.seed, progress=not args.quiet,
    )
    result = evaluate(params, hard=hard, n=args.heldout)
    result.update(losses=losses, seconds=seconds, attention=attention, hard=hard)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m examples.reverse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", default="additive", choices=attention_np.seq2seq.SEQ2SEQ_ATTENTIONS)
    parser.add_argument("--hard", action="store_true", help="also train with hard attention (straight-through) and report both")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--embed", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--heldout", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="reverse_attention.png", help="PNG of held-out attention weights ('' for none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    results = [run(args.attention, False, args)] + ([run(args.attention, True, args)] if args.hard else [])
    print(f"\nreverse digit sequences of length {MIN_LEN}-{MAX_LEN}; {args.steps} steps of batch {args.batch}; "
          f"held-out: {args.heldout} sequences, greedy decoding")
    print(f"{'attention':<36}{'token acc':>10}{'exact seq':>10}{'train s':>9}{'NumPy == JAX':>15}")
    for r in results:
        name = f"{r['attention']} ({'hard, straight-through' if r['hard'] else 'soft'})"
        print(f"{name:<36}{r['token_accuracy']:>10.2%}{r['exact_accuracy']:>10.2%}{r['seconds']:>9.0f}"
              f"{r['numpy_agrees']:>9}/{r['n']}")
    print(f"loss: {results[0]['losses'][0]:.3f} at the first step, {np.mean(results[0]['losses'][-20:]):.3f} over the last 20")
    print("alignment diagnostics of the held-out weights (attention_np.alignment_diagnostics, band 0, mean over sequences):")
    for r in results:
        d = diagnose(r)
        print(f"  {'hard' if r['hard'] else 'soft'}: entropy {d['entropy']:.3f} nats, monotonicity {d['monotonicity']:.2f} "
              f"(reading the source backwards: {d['monotonicity_reversed_source']:.2f}), weight on the anti-diagonal "
              f"{d['anti_diagonal_focus']:.2f}, coverage per source token {d['coverage_min']:.2f}-{d['coverage_max']:.2f}")
    if args.plot:
        r = results[0]
        plot(r, args.plot, title=f"{r['attention']} attention after {args.steps} steps: the anti-diagonal is the reversal")
        print(f"wrote {args.plot}")
    return results


if __name__ == "__main__":
    main()
