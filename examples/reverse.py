"""See attention learn: train the encoder - attention - decoder to reverse digit sequences.

    python -m examples.reverse                          # the tutorial's additive attention
    python -m examples.reverse --attention general      # or dot, concat, location_sensitive
    python -m examples.reverse --hard                   # hard attention (straight-through), beside soft
    python -m examples.reverse --attention none         # no attention: the last encoder state is the only context
    python -m examples.reverse --sweep                  # accuracy against length, with and without attention

Reversing needs attention: the first output digit is the last input digit, which a
decoder without attention would have to recall from one compressed vector. With
attention, each output step looks at one source position, and the learned weights form
the anti-diagonal. Sequences have random lengths 5-15, padded, with source masks.

``--attention none`` is the same GRU encoder - decoder with the attention taken out: the
decoder reads the encoder's last state (the state after the last real token) as its
context at every step, the RNN encoder - decoder of Cho et al. (2014) that attention was
invented to improve. ``--sweep`` trains both, with additive attention and without, on
lengths 2-24 and measures the held-out token accuracy at every length, the experiment of
Bahdanau et al. (2015, figure 2): without attention the accuracy falls as the source
outgrows what one vector holds; with attention it stays high. It writes
``attention_vs_length.png`` (``--sweep-plot``). At its defaults (1000 steps of batch 64,
hidden 64, for each model) it took 3 minutes on one core of a 2-core CPU (training 94 s
with attention, 16 s without; the rest is decoding 200 held-out sequences of each length
in both halves). Token accuracy at lengths 5 / 10 / 15 / 20 / 24: with attention 1.00 /
0.97 / 0.94 / 0.86 / 0.79, without 0.99 / 0.74 / 0.48 / 0.34 / 0.25 (chance is 0.10).

The JAX model (``attention_jax.seq2seq``) trains with optax (Adam); then the trained
parameters run through the NumPy reference, ``attention_np.greedy_decode``, to show that
both halves decode the same sequences. Writes a heatmap of the weights (``--plot``).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from tqdm.auto import tqdm

import attention_jax
import attention_np
from attention_np.viz import plot_attention

PAD, BOS, DIGITS = 0, 1, 10  # token ids: 0 padding, 1 begin-of-sequence, 2..11 the digits 0..9
VOCAB = 2 + DIGITS
MIN_LEN, MAX_LEN = 5, 15
ATTENTIONS = (*attention_np.seq2seq.SEQ2SEQ_ATTENTIONS, "none")
SWEEP_MIN_LEN, SWEEP_MAX_LEN = 2, 24


def make_batch(rng, batch, min_len=MIN_LEN, max_length=MAX_LEN):
    """Random digit sequences of lengths ``min_len..max_length`` and their reverses, padded to ``max_length``.

    Returns ``source_ids, target_in_ids, target_out_ids`` int32 ``(B, max_length)`` and the
    bool ``mask (B, max_length)`` of real tokens (the same for source and target: a reverse
    is as long as its source).
    """
    lengths = rng.integers(min_len, max_length + 1, batch)
    mask = np.arange(max_length) < lengths[:, None]                           # (B, L)
    digits = rng.integers(0, DIGITS, (batch, max_length)) + 2
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


def init_without_attention(rng, *, source_vocab, target_vocab, embed, hidden):
    """The parameters of the tutorial's model (additive attention) without its attention:
    the same embeddings, encoder, decoder GRU (input ``[token; context]``, ``D + H``) and output
    layer (``[state; context]``, ``2H``)."""
    params = attention_jax.init_seq2seq_params(rng, source_vocab=source_vocab, target_vocab=target_vocab,
                                               embed=embed, hidden=hidden, attention="additive")
    return {name: value for name, value in params.items() if name != "attention"}


def _decoder_step_without_attention(xp, seq2seq, params, hidden, context, prev_ids):
    """One decoder step with a fixed context: the Bahdanau decoder with ``c_t = c`` for every t.

    ``xp`` is ``numpy`` or ``jax.numpy`` and ``seq2seq`` the matching ``attention_*.seq2seq``.
    Returns ``(logits (B, V), hidden (B, H))``."""
    x = seq2seq.embed(params["target_embed"]["embedding"], prev_ids, "target_in_ids")       # (B, D)
    hidden = seq2seq.gru_cell(params["decoder"], xp.concatenate([x, context], -1), hidden)  # (B, H)
    logits = xp.concatenate([hidden, context], -1) @ params["out"]["kernel"] + params["out"]["bias"]  # (B, V)
    return logits, hidden


@jax.jit
def forward_without_attention(params, source_ids, target_in_ids, source_mask):
    r"""The encoder - decoder without attention, with teacher forcing: the encoder's last
    state :math:`c = \bar h_S` is the decoder's first state and its context at every step,
    :math:`s_t = \mathrm{GRU}([y_{t-1}; c], s_{t-1})`, :math:`p(y_t) = \mathrm{softmax}([s_t; c] W_o + b_o)`.

    ``source_ids (B, S)``, ``target_in_ids (B, T)``, ``source_mask (B, S)`` -> ``logits (B, T, V)``."""
    seq2seq = attention_jax.seq2seq
    _, context = seq2seq.encode(params, source_ids, source_mask)         # (B, H): the only context

    def step(hidden, prev_ids):
        logits, hidden = _decoder_step_without_attention(jnp, seq2seq, params, hidden, context, prev_ids)
        return hidden, logits

    _, logits = lax.scan(step, context, target_in_ids.T)                  # (T, B, V)
    return logits.swapaxes(0, 1)


def greedy_decode_without_attention(params, source_ids, *, bos_id, max_length, source_mask):
    """Greedy decoding without attention, in NumPy (``attention_np.seq2seq``'s encoder and
    GRU): ``source_ids (B, S)`` -> ``ids (B, max_length)``. With JAX arrays in ``params`` it
    runs on ``attention_jax.seq2seq`` instead, one step at a time."""
    is_jax = isinstance(jax.tree.leaves(params)[0], jax.Array)
    xp, seq2seq = (jnp, attention_jax.seq2seq) if is_jax else (np, attention_np.seq2seq)
    _, context = seq2seq.encode(params, xp.asarray(source_ids), xp.asarray(source_mask))  # (B, H)
    hidden, prev, ids = context, xp.full((len(source_ids),), bos_id, xp.int32), []
    for _ in range(max_length):
        logits, hidden = _decoder_step_without_attention(xp, seq2seq, params, hidden, context, prev)
        prev = logits.argmax(-1).astype(xp.int32)                          # the most likely token
        ids.append(prev)
    return np.stack([np.asarray(i) for i in ids], axis=1)                 # (B, max_length)


def train(attention="additive", *, hard=False, steps=1000, batch=128, embed=32, hidden=64,
          learning_rate=3e-3, seed=0, progress=True, min_len=MIN_LEN, max_length=MAX_LEN):
    """Train the JAX seq2seq (``attention="none"``: without attention); returns ``(params, losses, seconds)``."""
    if attention == "none" and hard:
        raise ValueError("hard attention needs an attention: --hard with --attention none")
    rng = np.random.default_rng(seed)
    init = init_without_attention if attention == "none" else functools.partial(
        attention_jax.init_seq2seq_params, attention=attention)
    params = init(jax.random.key(seed), source_vocab=VOCAB, target_vocab=VOCAB, embed=embed, hidden=hidden)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))
    opt_state = optimizer.init(params)

    def loss_fn(params, source, target_in, target_out, mask):
        if attention == "none":
            logits = forward_without_attention(params, source, target_in, mask)
        else:
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
        params, opt_state, loss, accuracy = step(params, opt_state, *make_batch(rng, batch, min_len, max_length))
        losses.append(float(loss))
        if i % 20 == 0 or i == steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{float(accuracy):.3f}")
    return params, losses, time.perf_counter() - start


def evaluate(params, *, hard=False, n=1000, seed=12345, min_len=MIN_LEN, max_length=MAX_LEN):
    """Greedy decoding of ``n`` held-out sequences in both halves.

    Returns a dict: token and exact-sequence accuracy (JAX), how many NumPy predictions
    equal the JAX ones, and the held-out batch with the JAX ids and weights (None for a
    model without attention, recognised by its parameters).
    """
    source, _, target, mask = make_batch(np.random.default_rng(seed), n, min_len, max_length)
    np_params = jax.tree.map(np.asarray, params)
    if "attention" not in params:
        ids, weights = greedy_decode_without_attention(params, source, bos_id=BOS, max_length=max_length, source_mask=mask), None
        np_ids = greedy_decode_without_attention(np_params, source, bos_id=BOS, max_length=max_length, source_mask=mask)
    else:
        ids, weights = attention_jax.greedy_decode(params, source, bos_id=BOS, max_length=max_length, source_mask=mask, hard=hard)
        ids, weights = np.asarray(ids), np.asarray(weights)
        np_ids, _ = attention_np.greedy_decode(np_params, source, bos_id=BOS, max_length=max_length, source_mask=mask, hard=hard)
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


def accuracy_by_length(params, lengths, *, n=200, seed=54321):
    """Held-out token accuracy of greedy decoding at each source length: ``{length: accuracy}``,
    ``n`` sequences of each length."""
    accuracy = {}
    for i, length in enumerate(lengths):
        result = evaluate(params, n=n, seed=seed + i, min_len=length, max_length=length)
        accuracy[length] = result["token_accuracy"]
    return accuracy


def sweep(*, steps=1000, batch=64, embed=32, hidden=64, learning_rate=3e-3, seed=0, heldout=200,
          min_len=SWEEP_MIN_LEN, max_length=SWEEP_MAX_LEN, attentions=("additive", "none"), progress=True):
    """Train with additive attention and without (``attentions``), on lengths ``min_len..max_length``,
    and measure each one's held-out token accuracy at every length.

    Returns ``{attention: {"accuracy": {length: accuracy}, "seconds": float, "losses": [...]}}``."""
    results = {}
    for attention in attentions:
        params, losses, seconds = train(attention, steps=steps, batch=batch, embed=embed, hidden=hidden,
                                        learning_rate=learning_rate, seed=seed, progress=progress,
                                        min_len=min_len, max_length=max_length)
        accuracy = accuracy_by_length(params, range(min_len, max_length + 1), n=heldout)
        results[attention] = {"accuracy": accuracy, "seconds": seconds, "losses": losses}
    return results


def plot_sweep(results, path, *, title=""):
    """Token accuracy against source length, one line a model, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"none": "without: the last encoder state only"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for attention, result in results.items():
        lengths, accuracy = zip(*sorted(result["accuracy"].items()))
        ax.plot(lengths, accuracy, "o-", label=labels.get(attention, f"with attention ({attention})"))
    ax.axhline(1 / DIGITS, color="gray", ls=":", label="chance: 1 digit in 10")
    ax.set(xlabel="source length (digits)", ylabel="held-out token accuracy", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    if title:
        ax.set_title(title)
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
    parser.add_argument("--attention", default="additive", choices=ATTENTIONS,
                        help="'none': no attention, the last encoder state is the only context")
    parser.add_argument("--hard", action="store_true", help="also train with hard attention (straight-through) and report both")
    parser.add_argument("--steps", type=int, default=None, help="default 1000 (the sweep: 1000 for each model)")
    parser.add_argument("--batch", type=int, default=None, help="default 128 (the sweep: 64)")
    parser.add_argument("--embed", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--heldout", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="reverse_attention.png", help="PNG of held-out attention weights ('' for none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--sweep", action="store_true",
                        help=f"accuracy against length, with and without attention (lengths {SWEEP_MIN_LEN}-{SWEEP_MAX_LEN}; "
                             "batch 64)")
    parser.add_argument("--sweep-plot", default="attention_vs_length.png", help="the sweep's PNG ('' for none)")
    args = parser.parse_args(argv)
    args.steps = 1000 if args.steps is None else args.steps
    if args.sweep:
        args.batch = 64 if args.batch is None else args.batch
        return main_sweep(args)
    args.batch = 128 if args.batch is None else args.batch
    if args.attention == "none" and args.hard:
        parser.error("--hard needs an attention: it cannot go with --attention none")

    results = [run(args.attention, False, args)] + ([run(args.attention, True, args)] if args.hard else [])
    print(f"\nreverse digit sequences of length {MIN_LEN}-{MAX_LEN}; {args.steps} steps of batch {args.batch}; "
          f"held-out: {args.heldout} sequences, greedy decoding")
    print(f"{'attention':<36}{'token acc':>10}{'exact seq':>10}{'train s':>9}{'NumPy == JAX':>15}")
    for r in results:
        kind = "last encoder state" if r["attention"] == "none" else "hard, straight-through" if r["hard"] else "soft"
        name = f"{r['attention']} ({kind})"
        print(f"{name:<36}{r['token_accuracy']:>10.2%}{r['exact_accuracy']:>10.2%}{r['seconds']:>9.0f}"
              f"{r['numpy_agrees']:>9}/{r['n']}")
    print(f"loss: {results[0]['losses'][0]:.3f} at the first step, {np.mean(results[0]['losses'][-20:]):.3f} over the last 20")
    if args.attention == "none":
        return results  # no weights to diagnose or draw
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


def main_sweep(args):
    """``--sweep``: train with and without attention, print and draw accuracy against length."""
    steps, batch = args.steps, args.batch
    results = sweep(steps=steps, batch=batch, embed=args.embed, hidden=args.hidden, learning_rate=args.learning_rate,
                    seed=args.seed, heldout=min(args.heldout, 200), progress=not args.quiet)
    lengths = sorted(results["additive"]["accuracy"])
    print(f"\nreverse digit sequences, trained on lengths {lengths[0]}-{lengths[-1]}: {steps} steps of batch {batch}, "
          f"hidden {args.hidden}; held-out token accuracy by source length")
    print(f"{'length':>8}" + "".join(f"{n:>6}" for n in lengths))
    for attention, result in results.items():
        print(f"{attention:>8}" + "".join(f"{result['accuracy'][n]:>6.2f}" for n in lengths)
              + f"   ({result['seconds']:.0f} s training)")
    if args.sweep_plot:
        plot_sweep(results, args.sweep_plot,
                   title=f"reversing digits: {steps} steps each, trained on lengths {lengths[0]}-{lengths[-1]}")
        print(f"wrote {args.sweep_plot}")
    return results


if __name__ == "__main__":
    main()
