"""A small language model built from ``attention_jax.nnx.MultiHeadAttention``, trained and sampled.

    python -m examples.tiny_lm                      # about a minute on 2 CPU cores
    python -m examples.tiny_lm --steps 100 --quiet  # a quick look

A decoder-only Transformer (pre-norm blocks: causal multi-head self-attention, then an MLP)
learns to write sentences of a small generated language, one character at a time. It uses
what a model trained today uses: rotary position embeddings (``rotary=True``), grouped-query
attention (``num_kv_heads``), attention dropout, and padding given as lengths
(``query_seq_lengths`` / ``key_value_seq_lengths``, no mask built by hand). After training it
samples with the decode cache: the prompts, of different lengths, are prefilled in one call
(``query_seq_lengths`` with ``decode=True``) and continued together.

The same model with ``flax.nnx.MultiHeadAttention`` trains in the same run, from the same
initial weights where the two have the same parameters, on the same batches. Flax's module
has no rotary embeddings and no lengths, so that model gets learned absolute position
embeddings and a causal-and-padding mask built by hand. Both loss curves are drawn in one
plot (``--plot``).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from attention_jax.nnx import MultiHeadAttention

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the old man", "a small child"]
VERBS = ["sat on", "looked at", "ran to", "jumped over", "slept near", "walked past"]
OBJECTS = ["the mat", "the tree", "a red box", "the river", "the house", "a green hill"]
PAD, BOS = 0, 1
CHARS = sorted(set("".join(SUBJECTS + VERBS + OBJECTS) + "."))
VOCAB = 2 + len(CHARS)
ENCODE = {c: i + 2 for i, c in enumerate(CHARS)}


def sentence(rng) -> str:
    """One sentence of the generated language: subject, verb, object, full stop."""
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."


def decode_text(ids) -> str:
    return "".join(CHARS[i - 2] for i in ids if i >= 2)


def make_batch(rng, batch, length):
    """``(tokens (B, length + 1), lengths (B,))``: BOS, then whole sentences until the row is
    full (a random number of them, so rows differ in length), padded with PAD; the model reads
    ``tokens[:, :-1]`` and predicts ``tokens[:, 1:]`` at positions ``< lengths``."""
    tokens = np.full((batch, length + 1), PAD, np.int32)
    lengths = np.zeros(batch, np.int32)
    for b in range(batch):
        text = ""
        for _ in range(rng.integers(1, 4)):
            nxt = (text + " " if text else "") + sentence(rng)
            if len(nxt) > length:
                break
            text = nxt
        ids = [BOS] + [ENCODE[c] for c in text]
        tokens[b, : len(ids)] = ids
        lengths[b] = len(ids) - 1  # inputs BOS .. second-to-last character, each predicting the next
    lengths = np.minimum(lengths, length)
    return tokens, lengths


class Block(nnx.Module):
    """Pre-norm Transformer block: ``x + attention(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, width, heads, *, flax_attention, dropout, rngs):
        self.norm1, self.norm2 = nnx.LayerNorm(width, rngs=rngs), nnx.LayerNorm(width, rngs=rngs)
        kwargs = dict(num_kv_heads=heads // 2, dropout_rate=dropout, decode=False, rngs=rngs)
        if flax_attention:
            self.attention = nnx.MultiHeadAttention(heads, width, **kwargs)
        else:
            self.attention = MultiHeadAttention(heads, width, rotary=True, **kwargs)
        self.mlp = nnx.Sequential(nnx.Linear(width, 4 * width, rngs=rngs), nnx.gelu, nnx.Linear(4 * width, width, rngs=rngs))

    def __call__(self, x, **attention_options):
        x = x + self.attention(self.norm1(x), **attention_options)
        return x + self.mlp(self.norm2(x))


class TinyLM(nnx.Module):
    """Token embeddings, ``layers`` blocks, a final norm and the logits over the characters."""

    def __init__(self, *, width, heads, layers, max_length, flax_attention=False, dropout=0.1, rngs):
        self.flax_attention = flax_attention
        self.embed = nnx.Embed(VOCAB, width, rngs=rngs)
        # Flax's module has no rotary embeddings: that model learns absolute positions instead
        self.positions = nnx.Embed(max_length, width, rngs=rngs) if flax_attention else nnx.data(None)
        self.blocks = nnx.List([Block(width, heads, flax_attention=flax_attention, dropout=dropout, rngs=rngs)
                                for _ in range(layers)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, VOCAB, rngs=rngs)

    def __call__(self, tokens, lengths=None, *, deterministic=True, decode=False):
        T = tokens.shape[1]
        x = self.embed(tokens)
        if self.flax_attention:
            x = x + self.positions(jnp.arange(T))
            valid = jnp.ones(tokens.shape, bool) if lengths is None else jnp.arange(T) < lengths[:, None]
            causal = jnp.tril(jnp.ones((T, T), bool))
            options = dict(mask=(causal & valid[:, None, :])[:, None])      # causal and padding, by hand
        elif decode:
            options = dict(decode=True, query_seq_lengths=lengths)          # ragged prompts in one call
        else:
            options = dict(is_causal=True, query_seq_lengths=lengths, key_value_seq_lengths=lengths)
        for block in self.blocks:
            x = block(x, deterministic=deterministic, **options)
        return self.head(self.norm(x))


def loss_fn(model, tokens, lengths, deterministic=False):
    """Mean cross-entropy of the next character over the real positions of every row."""
    logits = model(tokens[:, :-1], lengths, deterministic=deterministic)             # (B, T, V)
    targets = tokens[:, 1:]
    real = jnp.arange(targets.shape[1]) < lengths[:, None]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * real) / jnp.sum(real)


@nnx.jit
def train_step(model, optimizer, tokens, lengths):
    loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, lengths)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def decode(model, tokens, lengths=None):
    """One call with the decode cache: the prompts' prefill, or one new token for every row."""
    return model(tokens, lengths, decode=True)


def sample(model, prompts, new_tokens, rng):
    """Continue every prompt by ``new_tokens`` characters (temperature 0.7) with the decode
    cache: the right-padded prompts prefilled in one call, then one token per call for all."""
    lengths = np.array([len(p) + 1 for p in prompts], np.int32)
    tokens = np.full((len(prompts), lengths.max()), PAD, np.int32)
    for b, p in enumerate(prompts):
        tokens[b, : lengths[b]] = [BOS] + [ENCODE[c] for c in p]
    for block in model.blocks:
        block.attention.init_cache((len(prompts), lengths.max() + new_tokens, model.embed.features))
    logits = decode(model, jnp.asarray(tokens), jnp.asarray(lengths))                 # (B, T, V)
    last = np.asarray(logits)[np.arange(len(prompts)), lengths - 1]                  # each row's last real token
    out = [[] for _ in prompts]
    for _ in range(new_tokens):
        probs = np.asarray(jax.nn.softmax(jnp.asarray(last) / 0.7, axis=-1), np.float64)
        nxt = np.array([rng.choice(VOCAB, p=p / p.sum()) for p in probs], np.int32)
        for b, t in enumerate(nxt):
            out[b].append(int(t))
        last = np.asarray(decode(model, jnp.asarray(nxt[:, None])))[:, 0]
    for block in model.blocks:
        block.attention.cached_key = block.attention.cached_value = block.attention.cache_index = None
    return [p + decode_text(o) for p, o in zip(prompts, out)]


def train(args, *, flax_attention, batches):
    model = TinyLM(width=args.width, heads=args.heads, layers=args.layers, max_length=args.length,
                   flax_attention=flax_attention, dropout=args.dropout, rngs=nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adamw(args.learning_rate), wrt=nnx.Param)
    losses, start = [], time.perf_counter()
    for step, (tokens, lengths) in enumerate(batches):
        losses.append(float(train_step(model, optimizer, jnp.asarray(tokens), jnp.asarray(lengths))))
        if not args.quiet and (step % max(1, len(batches) // 10) == 0 or step == len(batches) - 1):
            print(f"  step {step:4d}  loss {losses[-1]:.3f}")
    return model, losses, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64, help="characters per training row")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flax", action="store_true", help="train only the model with our module")
    parser.add_argument("--plot", default="examples/tiny_lm_loss.png", help="the loss curves ('' for none)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    batches = [make_batch(rng, args.batch, args.length) for _ in range(args.steps)]   # the same for both models
    results = {}
    for name, flax_attention in (("ours", False), ("flax", True)):
        if flax_attention and args.no_flax:
            continue
        if not args.quiet:
            print(f"{name}: attention_jax.nnx.MultiHeadAttention" if not flax_attention else
                  f"{name}: flax.nnx.MultiHeadAttention")
        model, losses, seconds = train(args, flax_attention=flax_attention, batches=batches)
        results[name] = {"model": model, "losses": losses, "seconds": seconds}
    ours = results["ours"]["model"]
    samples = sample(ours, ["the cat", "a", "my friend walked"], 40, np.random.default_rng(args.seed))
    results["samples"] = samples
    if not args.quiet:
        for name in ("ours", "flax"):
            if name in results:
                r = results[name]
                print(f"{name}: final loss {np.mean(r['losses'][-20:]):.3f} nats/char, {r['seconds']:.0f} s")
        print("samples (decode cache, ragged prompts in one prefill):")
        for s in samples:
            print("  " + s)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, label in (("ours", "attention_jax.nnx.MultiHeadAttention (RoPE, lengths)"),
                            ("flax", "flax.nnx.MultiHeadAttention (learned positions, mask)")):
            if name in results:
                ax.plot(results[name]["losses"], label=label, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats / character)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title("tiny_lm: the same batches, the same optimizer")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        plt.close(fig)
    return results


if __name__ == "__main__":
    main()
