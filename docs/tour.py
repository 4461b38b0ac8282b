# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour of attention, on both halves
#
# This notebook walks through the tutorial this library is built from, section by section:
# the eight types of attention, the encoder - attention - decoder architecture, and the
# tutorial's own PyTorch `Attention` class with its seed-0 run (Steps 1-4). Every mechanism
# is called twice: once in `attention_np` (the NumPy reference, written to be read) and once
# in `attention_jax` (the jit-compiled mirror), and every section ends on one line that
# sums the comparisons up: how many, and the largest difference between the two halves. At
# the end, one backward pass: the hand-written NumPy gradient beside `jax.vjp`.
#
# It runs top to bottom in well under a minute on a laptop CPU
# (`pip install -e '.[docs]'`, then open `docs/tour.ipynb`, or run `python docs/tour.py`,
# which shows the figures in windows, or saves them to `tour_figures/` where there is no
# screen). The test suite executes it, so every number below is checked on every change.

# %%
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

import attention_jax
import attention_np
from attention_np.viz import plot_attention

np.set_printoptions(precision=3, suppress=True)


def to_jax(tree):
    """The same parameters or inputs as JAX arrays: one dict works in both halves."""
    return jax.tree.map(jnp.asarray, tree)


TOLERANCE = 1e-5   # float32 in both halves, so the contract's float32 tolerance applies
differences = []   # the largest |NumPy - JAX| of each comparison since the last summary


def parity(numpy_result, jax_result):
    """Check the largest |NumPy - JAX| over every array of the two results, and keep it for
    the section's summary line."""
    errors = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0)),
        numpy_result, jax_result,
    )
    worst = max(jax.tree.leaves(errors))
    assert worst <= TOLERANCE, errors
    differences.append(worst)


def parity_summary(section):
    """One line for the section: how many comparisons, and the largest difference; then start afresh."""
    count = f"{len(differences)} comparison" + ("s" if len(differences) > 1 else "")
    print(f"parity, {section}: {count} of attention_np with attention_jax, "
          f"max |difference| = {max(differences):.1e} (float32 tolerance {TOLERANCE:.0e})")
    differences.clear()


def entropy(p):
    """Mean entropy of the rows of weights ``p``, in nats: 0 for one-hot, log S for uniform."""
    return float(-(p * np.log(np.where(p > 0, p, 1))).sum(-1).mean())


def show(name):
    """Show the figure just drawn: below the cell in a notebook, in a window from a script.

    With no screen (matplotlib's non-interactive "agg" backend) a script would show nothing,
    so the figure is saved as ``tour_figures/<name>.png`` in the current folder instead."""
    if matplotlib.get_backend().lower() == "agg":
        folder = Path("tour_figures")
        folder.mkdir(exist_ok=True)
        plt.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close("all")
        print(f"saved {folder / name}.png")
    else:
        plt.show()


def show_committed(name, command, figsize):
    """Show ``examples/<name>.png``, a picture committed with the repository, drawn by an
    example's training run (too long for the tour); if it is missing, say how to draw it."""
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a notebook runs in its folder
    for folder in (here, *here.parents):
        picture = folder / "examples" / f"{name}.png"
        if picture.exists():
            plt.figure(figsize=figsize)
            plt.imshow(plt.imread(picture))
            plt.axis("off")
            show(name)
            return
    print(f"run `{command}` to draw the picture")


# %% [markdown]
# ## Exercises along the way
#
# Ten sections end with a short exercise: a cell to fill in, then a check cell that
# compares your answer with the library (or with JAX's own gradient) on inputs you have not
# seen, and prints `right`, or `not yet:` with what is still wrong and why. Left as they
# are, the cells run and say `not yet`. The checks are in `tour_checks.py` beside this
# notebook, the solutions in `tour_solutions.py`: try first. The diagrams of the machinery
# are drawn by `machinery_pictures.py`, also beside this notebook.

# %%
from machinery_pictures import draw_multi_head, draw_self_attention, draw_seq2seq  # beside this notebook
from tour_checks import (
    HAND_KEY,
    HAND_QUERY,
    HAND_VALUE,
    check_causal_attention,
    check_cross_attention,
    check_gumbel_sample,
    check_head_by_hand,
    check_location_features,
    check_masked_softmax,
    check_scale_prediction,
    check_softmax_backward,
    check_split_merge_heads,
    check_window_mask,
)

# %% [markdown]
# ## A sentence to attend over
#
# The examples use one English sentence and its French translation. Each word gets a fixed
# toy embedding of `H = 8` numbers drawn from a seeded generator; a French word's embedding
# is its English translation's plus a little noise, so a query from "chat" really does match
# the key of "cat". (In a trained model the embeddings are learned; here they are made so
# that the pictures are easy to read.) Words are lower-cased first, so "The" and "the" are
# one vector.
#
# The equations are written the way the code computes them: vectors are rows, so a kernel
# `W` of shape `(in, out)` multiplies from the right, `x W` (`x @ W`), and the dot product of
# two vectors is $q k^\top$ (`q @ k`).
#
# Shapes are written with the same letters everywhere, those of `jax.nn.dot_product_attention`:
#
# | letter | what it counts | here |
# |---|---|---|
# | B | batch: sequences processed together | 1 |
# | T | query (target) positions: the words being written | 7 French words |
# | S | key and value (source) positions: the words being read | 6 English words |
# | N | query heads (section 4) | 3 |
# | K | key/value heads; each serves N / K query heads (grouped-query attention) | K = N here |
# | H | features per head; in single-head code, of one word | 8 (section 4's heads: `head_dim` = 4) |
# | E | model width: features into and out of multi-head attention | 8 |
#
# So the English sentence is `(B, S, H) = (1, 6, 8)`: one sequence of six words of eight
# features each. Self-attention has one sequence, so there T = S.

# %%
english = "The cat sat on the mat".split()
french = "Le chat s'est assis sur le tapis".split()
translation = {"le": "the", "chat": "cat", "s'est": "sat", "assis": "sat", "sur": "on", "tapis": "mat"}

H = 8
rng = np.random.default_rng(0)
english_vectors = {w: rng.normal(size=H) for w in dict.fromkeys(w.lower() for w in english)}
french_vectors = {w: english_vectors[translation[w]] + 0.3 * rng.normal(size=H)
                  for w in dict.fromkeys(w.lower() for w in french)}

# one batch element: (B, S, H) for the source, (B, T, H) for the target
source = np.stack([english_vectors[w.lower()] for w in english])[None].astype(np.float32)  # (1, 6, 8)
target = np.stack([french_vectors[w.lower()] for w in french])[None].astype(np.float32)    # (1, 7, 8)
S, T = len(english), len(french)
print("source", source.shape, "target", target.shape)

# %% [markdown]
# ## Types of attention
#
# ### 1. Soft attention
#
# Every source position gets a weight, the weights are a softmax of the scores (positive,
# summing to one), and the result is the weighted average of the values. Because every step
# is smooth, the whole thing trains by gradient descent (Xu et al. 2015, section 4.2).
#
# $$a_{ts} = \frac{\exp e_{ts}}{\sum_{s'} \exp e_{ts'}}, \qquad c_t = \sum_s a_{ts}\, v_s$$
#
# Here the scores are plain dot products $e_{ts} = q_t k_s^\top$ of each French word (the
# query) with each English word (the key), and the values are the English words themselves.

# %%
scores = attention_np.dot_scores(target, source)                   # (1, T, S)
context, weights = attention_np.soft_attention(scores, source)      # (1, T, H), (1, T, S)
print("weights of 'chat' over the English words:", weights[0, 1])
plot_attention(weights[0], english, french, title="soft attention")
show("soft")

scores_jax = attention_jax.dot_scores(target, source)
parity((scores, context, weights), (scores_jax, *attention_jax.soft_attention(scores_jax, source)))
parity_summary("section 1, soft attention")

# %% [markdown]
# #### Exercise 1: the masked softmax
#
# Write `masked_softmax(logits, mask)` for `logits (T, S)` and a bool `mask (T, S)`, True
# where a query may attend a key. A masked key gets exactly zero weight; the others share
# the whole weight as a softmax. Two traps, both in the check: a logit of 1000 (`exp`
# overflows unless you subtract the row's maximum first), and a row whose keys are all
# masked, which must get all-zero weights, not NaN (so filling masked logits with `-inf` is
# not enough).

# %%
def masked_softmax(logits, mask):
    raise NotImplementedError  # your code here: return the weights, shape (T, S)


# %%
print(check_masked_softmax(masked_softmax))

# %% [markdown]
# ### 2. Hard attention
#
# Instead of a weighted average, pick one position: the weights are one-hot at the best
# score, and the context is that one value. Adding Gumbel noise $g$ before the argmax turns
# the choice into an exact sample from $\mathrm{softmax}(e)$ (Xu et al. 2015, section 4.1).
#
# $$s^*_t = \arg\max_s\, (e_{ts} + g_{ts}), \qquad a_{ts} = [s = s^*_t], \qquad c_t = v_{s^*_t}$$

# %%
context, weights = attention_np.hard_attention(scores, source)      # one-hot (1, T, S)
print("chosen English word for each French word:", [english[s] for s in weights[0].argmax(-1)])
plot_attention(weights[0], english, french, title="hard attention (argmax)")
show("hard")
le = french.index("le")
print(f"'le' scores 'The' {scores[0, le, 0]:.4f} and 'the' {scores[0, le, 4]:.4f}: a tie")

parity((context, weights), attention_jax.hard_attention(scores_jax, source))

# %% [markdown]
# Both "Le" and "le" choose "The", never "the". The words were lower-cased, so "The" and
# "the" are one vector, and a French query scores them exactly alike: a tie. The argmax
# breaks a tie by taking the first of the equal scores (NumPy's and JAX's rule), so the
# earlier position wins every time. With Gumbel noise (exercise 2) each would win half the
# time; a trained model tells the two apart by their positions (the Transformer layer at
# the end adds them to the words).
#
# **Why hard attention does not train by gradient descent.** The context is $v_{s^*}$, and
# $s^* = \arg\max_s e_s$ does not move when a score moves a little: the context is a step
# function of the scores, flat almost everywhere and jumping where two scores cross. Its
# gradient with respect to the scores is zero wherever it exists, so backpropagation gives
# the scores (and the network that computes them) no signal. Three ways around it:
#
# - **REINFORCE** (Williams 1992; Xu et al. 2015, section 4.1): treat the choice as a sample
#   $s \sim p = \mathrm{softmax}(e)$ and follow the gradient of the *expected* reward,
#   $\nabla_e\, \mathbb{E}[r_s] = \mathbb{E}\big[r_s\, \nabla_e \log p_s\big]$ with
#   $\nabla_e \log p_s = \mathrm{onehot}(s) - p$: unbiased, but noisy, so it needs many
#   samples (or a baseline subtracted from $r$).
# - **Straight-through** (Bengio et al. 2013): use the one-hot weights going forward, and
#   pretend they were $\mathrm{softmax}(e)$ going backward: biased, but low-noise.
#   `attention_jax.hard_attention(..., straight_through=True)` does this.
# - **Gumbel-softmax** (Jang et al. 2017; Maddison et al. 2017): replace the argmax of
#   $e + g$ by $\mathrm{softmax}((e + g) / \tau)$, which is differentiable and tends to the
#   one-hot sample as the temperature $\tau \to 0$.
#
# Measured for the second "le", the query of the tie, with the reward $r_s$ = the sum of
# value $s$'s features (so the context's sum is the reward of the chosen word). Each row is
# a gradient with respect to the six scores, one number for each English word:

# %%
le_scores, values = scores[:, le:le + 1], source                    # (1, 1, S), (1, S, H): one query
reward = values[0].sum(-1)                                          # (S,): r_s


def summed_context(e, straight_through):
    return attention_jax.hard_attention(e, values, straight_through=straight_through)[0].sum()


p = attention_np.soft_attention(le_scores, values)[1][0, 0]         # (S,): softmax(e)
exact = p * (reward - p @ reward)                                   # d E[r] / d e, written out
samples = np.random.default_rng(8).gumbel(size=(10_000, S)) + le_scores[0, 0]  # e + g, (10000, S)
chosen = samples.argmax(-1)                                         # (10000,): exact samples from p
score_function = reward[chosen, None] * (np.eye(S)[chosen] - p)     # r_s (onehot(s) - p), (10000, S)
print("softmax(e), the chances:           ", p.round(3))
print("gradient of the hard context:      ", np.asarray(jax.grad(summed_context)(le_scores, False))[0, 0])
print("straight-through (softmax's):      ", np.asarray(jax.grad(summed_context)(le_scores, True))[0, 0].round(3))
print("exact gradient of E[r]:            ", exact.round(3))
for n in (100, 10_000):
    print(f"REINFORCE, mean of {n:6d} samples: ", score_function[:n].mean(0).round(3))
for tau in (1.0, 0.1):
    relaxed = np.exp((samples[0] - samples[0].max()) / tau)
    print(f"Gumbel-softmax of a sample, tau {tau:3.1f}:", (relaxed / relaxed.sum()).round(3))
parity_summary("section 2, hard attention")

# %% [markdown]
# The hard context's gradient is zero. Straight-through gives the soft context's gradient,
# here exactly the gradient of the expected reward, since the reward is linear in the
# weights (in general it is only close). REINFORCE reaches the same numbers from the samples
# alone, but only on average: from a hundred samples even the sign of the first entry, for
# "The", is wrong; from ten thousand it is close. The Gumbel-softmax turns one sample into
# weights that can be differentiated, softened at $\tau = 1$ and nearly one-hot at
# $\tau = 0.1$.

# %% [markdown]
# #### Exercise 2: a sample by the Gumbel-max trick
#
# The argmax above makes the same choice every time. Write `sample(scores, gumbel_noise)`
# for `scores (T, S)` and noise `(T, S)` of standard Gumbel draws (`rng.gumbel(size=(T, S))`):
# return one-hot weights `(T, S)`, in each row a 1 at $\arg\max_s\, (e_{ts} + g_{ts})$ and 0
# elsewhere. With fresh noise at every call, row $t$ chooses key $s$ with probability
# $\mathrm{softmax}(e_t)_s$, the weight soft attention would give it: a sample, not the
# best. Use the noise you are given (it is the randomness; draw none of your own). The check
# compares with the weights of `attention_np.hard_attention(..., gumbel_noise=...)` on
# scores and noise you have not seen.

# %%
def sample(scores, gumbel_noise):
    raise NotImplementedError  # your code here: return the one-hot weights, shape (T, S)


# %%
print(check_gumbel_sample(sample))

# %% [markdown]
# ### 3. Self-attention
#
# One sequence attends to itself: every word is a query, a key and a value, after three
# learned projections $q = x W_q + b_q$ (and the same for $k$, $v$; the kernels are
# `(E, H)` and multiply from the right). The tutorial's example is "The dog ran across the
# field"; ours is the English sentence (Vaswani et al. 2017, section 3.2.1).
#
# $$\mathrm{out} = \mathrm{softmax}\!\big(q k^\top / \sqrt{H}\big)\, v$$
#
# The machinery, with the shape at every step (drawn from the library's own numbers by
# `machinery_pictures.py`, here with random kernels that project each word's 8 features to
# 4): one sentence `x`, three projections of it, every query against every key, a softmax
# along each row, and the values averaged with each row's weights.

# %%
draw_self_attention()
show("machinery_self_attention")

# %% [markdown]
# #### From an average to attention
#
# Where do those steps come from? Karpathy's "Let's build GPT: from scratch, in code,
# spelled out" (2023) arrives at self-attention in four steps, each a small change to the
# one before; here they are on our sentence, with the words themselves as queries, keys and
# values.
#
# 1. The plainest way to let a word see the others: replace it by the **average** of all the
#    words. The weights are $1/S$ everywhere.
# 2. A decoder writing word $t$ cannot see the words after it: a **causal average** over the
#    words $s \le t$. The weights are the lower triangle, each row divided by its length.
# 3. The same weights as a **masked softmax of zeros**: $e^0 = 1$ wherever a word may look
#    and $e^{-\infty} = 0$ where it may not, normalised. Nothing changes, except that the
#    zeros are now a place to put numbers.
# 4. Put **scores** there, $q_t k_s^\top / \sqrt{H}$: the average becomes a *weighted* one,
#    which leans towards the words that match. This is causal self-attention.

# %%
x = source[0]                                                       # (S, H): the six English words
lower = np.tril(np.ones((S, S)))                                    # (S, S): 1 where s <= t
# 1. the plain average: every row 1/S
average = np.full((S, S), 1 / S)                                    # (S, S)
# 2. the causal average: row t is 1/(t + 1) on the words s <= t
causal_average = lower / lower.sum(-1, keepdims=True)               # (S, S)
# 3. a masked softmax of zeros gives the same weights
zeros = np.where(lower == 1, 0.0, -np.inf)                          # (S, S): -inf where s > t
softmax_of_zeros = np.exp(zeros) / np.exp(zeros).sum(-1, keepdims=True)
# 4. scores in place of the zeros: causal self-attention
logits = np.where(lower == 1, x @ x.T / np.sqrt(H), -np.inf)        # (S, S)
self_weights = np.exp(logits - logits.max(-1, keepdims=True))
self_weights /= self_weights.sum(-1, keepdims=True)                 # (S, S)

steps = {"1. average": average, "2. causal average": causal_average,
         "3. softmax of zeros": softmax_of_zeros, "4. softmax of scores": self_weights}
fig, axes = plt.subplots(1, 4, figsize=(18, 4.4), layout="constrained")
for ax, (name, w) in zip(axes, steps.items()):
    plot_attention(w, english, english, ax=ax, title=name)
show("average_to_attention")
for name, w in steps.items():
    print(f"{name:21s} weights of 'on': {w[3].round(3)}  out['on'][:3] = {(w @ x)[3, :3].round(3)}")
one_head = source[:, :, None, :]                                    # (1, S, 1, H): q = k = v = the words
_, library = attention_np.scaled_dot_product_attention(one_head, one_head, one_head, is_causal=True)
print("step 4 is the library's causal attention:", np.allclose(self_weights, library[0, 0], atol=1e-6))

# %% [markdown]
# The library's self-attention adds the three learned projections in front. The parameters
# are a plain dict. With identity kernels the projections keep the words as they are, so the
# picture shows which words are alike: "The" and "the" attend to each other. A trained model
# learns kernels that pick out other relations.

# %%
identity = {"kernel": np.eye(H, dtype=np.float32), "bias": np.zeros(H, np.float32)}
self_params = {"query": identity, "key": identity, "value": identity}
out, weights = attention_np.self_attention(self_params, source)     # (1, S, H), (1, S, S)
plot_attention(weights[0], english, english, title="self-attention")
show("self_attention")

parity((out, weights), attention_jax.self_attention(to_jax(self_params), source))

# %% [markdown]
# With `is_causal=True` position $t$ sees only positions $\le t$, as in a decoder that
# writes one word at a time. On the left the causal mask (1 where query $t$ may see key $s$,
# the lower triangle), on the right the weights: each row is a softmax over its triangle
# only, so the first word attends to itself alone and every row still sums to 1.

# %%
out, weights = attention_np.self_attention(self_params, source, is_causal=True)
causal = np.tril(np.ones((S, S)))                                   # (S, S): key s <= query t
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
plot_attention(causal, english, english, ax=axes[0], title="the causal mask")
plot_attention(weights[0], english, english, ax=axes[1], title="causal self-attention")
show("causal")
parity((out, weights), attention_jax.self_attention(to_jax(self_params), source, is_causal=True))
parity_summary("section 3, self-attention")

# %% [markdown]
# #### Exercise 3: make attention causal
#
# Write single-head scaled dot-product attention for `query`, `key`, `value` of shape
# `(T, H)` in which position $t$ sees only positions $s \le t$: the scores
# $q_t k_s^\top / \sqrt{H}$, masked above the diagonal, softmaxed, times the values (your
# `masked_softmax` helps). The check compares with
# `attention_np.scaled_dot_product_attention(..., is_causal=True)`.

# %%
def causal_attention(query, key, value):
    raise NotImplementedError  # your code here: return out, shape (T, H)


# %%
print(check_causal_attention(causal_attention))

# %% [markdown]
# ### 4. Multi-head attention
#
# Several attentions run side by side, each with its own projections into a smaller space,
# and their outputs are projected back and summed; each head can look for a different
# relation (the tutorial's example: one head links "cat" with "sat", another "on" with
# "mat"). Parameters have `flax.nnx.MultiHeadAttention`'s names and shapes (Vaswani et al.
# 2017, section 3.2.2).
#
# $$\mathrm{head}_n = \mathrm{Attention}(x W^Q_n, x W^K_n, x W^V_n), \qquad
#   \mathrm{out} = \textstyle\sum_n \mathrm{head}_n W^O_n + b^O$$
#
# The machinery: the queries (and the keys and values, the same way) are split into N heads
# of their own features, every head attends on its own, and the heads' outputs are put side
# by side and mixed back to the model width by the output kernel (drawn from the library's
# numbers, with $N = 3$ heads of 2 features).

# %%
draw_multi_head()
show("machinery_multi_head")

# %% [markdown]
# Here the words go in as they are, so the model width is a word's 8 features, $E = 8$; each
# of $N = 3$ heads projects them into 4 features of its own (`head_dim`), so the projection
# kernels are `(E, N, head_dim)` and the output kernel `(N, head_dim, E)`. The heads are
# randomly initialised, so their patterns are arbitrary; training is what gives each a job
# (the trained heads are below).

# %%
E, N, head_dim = H, 3, 4            # model width E = a word's 8 features; N heads of head_dim features each
mha_params = attention_np.init_multi_head_params(np.random.default_rng(1), E, N, head_dim)
print(jax.tree.map(np.shape, mha_params))
out, weights = attention_np.multi_head_attention(mha_params, source)  # (1, S, E), (1, N, S, S)
fig, axes = plt.subplots(1, N, figsize=(15, 4.2), layout="constrained")
for n, ax in enumerate(axes):
    plot_attention(weights[0, n], english, english, ax=ax, title=f"head {n + 1}")
show("multi_head")

parity((out, weights), attention_jax.multi_head_attention(to_jax(mha_params), source))

# %% [markdown]
# Trained on a task that needs two jobs, two heads take one each. In
# `python -m examples.specialised_heads` every position holds a key letter and a value digit,
# every key appears twice, and at each position the model must say two things: the key of
# the previous position (a job by *position*) and, at a key's second appearance, the value
# stored at its first (a job by *content*: find the matching token). The model is one layer
# of two-head self-attention (`attention_jax.multi_head_attention`; each position sees only
# the positions before it) and two linear read-outs; nothing says which head does what.
# After 600 steps of Adam (seconds on a CPU) both answers are 100% right on 1000
# held-out sequences, and the heads have split the work: head 1 puts a mean weight of 1.00
# on the previous position (the sub-diagonal), head 2 puts 1.00 on the matching key (at a
# key's first appearance there is nothing to match, and its row is arbitrary). The picture
# is the committed `examples/specialised_heads.png`.

# %%
show_committed("specialised_heads", "python -m examples.specialised_heads --plot examples/specialised_heads.png",
               figsize=(14, 6.5))
parity_summary("section 4, multi-head attention")

# %% [markdown]
# #### Exercise 4: split and merge the heads
#
# The projections above have kernels `(E, N, head_dim)`, one `(E, head_dim)` kernel a head.
# Many implementations (PyTorch's `nn.MultiheadAttention`, nanoGPT) keep one flat kernel
# `(E, N * head_dim)` instead: they project once, split the result into heads, and after the
# attention merge the heads back before the output projection. Write `split_heads(x, N)`,
# from `(B, T, N * head_dim)` to `(B, T, N, head_dim)`, and its inverse `merge_heads(heads)`,
# in the library's layout: head $n$ gets the `head_dim` consecutive features `n * head_dim`
# to `(n + 1) * head_dim - 1` (the flat kernel is `kernel.reshape(E, N * head_dim)`), and
# every position keeps its own features. The check tries them on numbers that say where
# they came from, then puts them around flat kernels and compares with
# `attention_np.multi_head_attention`.

# %%
def split_heads(x, N):
    raise NotImplementedError  # your code here: return the heads, shape (B, T, N, head_dim)


def merge_heads(heads):
    raise NotImplementedError  # your code here: return shape (B, T, N * head_dim)


# %%
print(check_split_merge_heads(split_heads, merge_heads))

# %% [markdown]
# ### 5. Cross-attention
#
# Two sequences: the queries come from one (the French being written), the keys and values
# from the other (the English being read). This is how a translation model finds the source
# word that belongs to "chat" (Vaswani et al. 2017, section 3.2.3, "encoder-decoder
# attention").
#
# $$q = x W_q + b_q,\; k = c\, W_k + b_k,\; v = c\, W_v + b_v, \qquad
#   \mathrm{out} = \mathrm{softmax}\!\big(q k^\top / \sqrt{H}\big)\, v$$
#
# With the identity projections of section 3, $q$ is the French word and $k = v$ the English
# one, so these weights are exactly those of the scaled dot-product attention of section 6;
# learned projections are what make cross-attention more than a comparison of embeddings.

# %%
out, weights = attention_np.cross_attention(self_params, target, source)  # (1, T, H), (1, T, S)
cross_weights = weights[0]                                          # (T, S), compared in section 6
plot_attention(weights[0], english, french, title="cross-attention: French queries, English keys")
show("cross_attention")
print("'chat' attends most to:", english[weights[0, 1].argmax()])

parity((out, weights), attention_jax.cross_attention(to_jax(self_params), target, source))
parity_summary("section 5, cross-attention")

# %% [markdown]
# #### Exercise 5: cross-attention, written out
#
# Write `cross_attention(params, decoder_states, encoder_outputs)` for one pair of
# sequences: `decoder_states (T, E)`, the one being written (the $x$ above), and
# `encoder_outputs (S, E)`, the one being read (the $c$), with parameters shaped like
# `self_params`: `{"query"|"key"|"value": {"kernel": (E, H), "bias": (H,)}}`. Return
# `out (T, H)`, the equation above, one row per decoder position. In the check the two
# sequences have different lengths, $T \ne S$, and the projections have biases, so taking
# the keys or values from the wrong sequence shows; it compares with
# `attention_np.cross_attention`.

# %%
def cross_attention(params, decoder_states, encoder_outputs):
    raise NotImplementedError  # your code here: return out, shape (T, H)


# %%
print(check_cross_attention(cross_attention))

# %% [markdown]
# ### 6. Scaled dot-product attention
#
# The core of the Transformer: dot-product scores divided by $\sqrt{H}$, a softmax, a
# weighted sum. The tensors have heads: query `(B, T, N, H)`, key and value `(B, S, K, H)`,
# weights `(B, N, T, S)`, as `jax.nn.dot_product_attention` (Vaswani et al. 2017, eq. 1).
#
# $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\Big(\frac{Q K^\top}{\sqrt{H}}\Big) V$$
#
# Why $\sqrt{H}$: if the $H$ entries of $q$ and $k$ are independent with mean 0 and variance
# 1, then $q k^\top = \sum_{i=1}^H q_i k_i$ is a sum of $H$ terms of variance 1, so its
# variance is $H$. Without the scale, wide heads give large scores, the softmax saturates to
# nearly one-hot and its gradients vanish; dividing by $\sqrt{H}$ brings the variance back
# to 1. Measured:

# %%
for width in (8, 64, 512):
    q, k = np.random.default_rng(2).normal(size=(2, 10_000, width))
    dots = (q * k).sum(-1)
    print(f"H = {width:3d}: variance of q.k = {dots.var():7.1f},  of q.k / sqrt(H) = {(dots / np.sqrt(width)).var():.2f}")

# %% [markdown]
# What the growing variance does to the softmax: 2000 random queries over 16 random keys
# (entries $N(0, 1)$), for widths $H$ from 2 to 512. Unscaled, the weights lose their
# entropy (they head for one-hot) and the gradient that reaches the scores through the
# softmax, $dL = P \odot (dP - \mathrm{rowsum}(dP \odot P))$ for a random upstream $dP$
# (the rule of the backward pass at the end of the tour), shrinks: from $H = 8$ on, to a
# fifth at $H = 512$. Scaled, both stay nearly level at every width.

# %%
widths, results = [2, 8, 32, 128, 512], {"q.k": [], "q.k / sqrt(H)": []}
for width in widths:
    q, k = np.random.default_rng(width).normal(size=(2000, width)), np.random.default_rng(width + 1).normal(size=(16, width))
    d_weights = np.random.default_rng(width + 2).normal(size=(2000, 16))           # a random upstream gradient dP
    for name, scale in (("q.k", 1.0), ("q.k / sqrt(H)", 1 / np.sqrt(width))):
        logits = q @ k.T * scale                                                   # (2000, 16)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)                                              # softmax weights
        d_logits = p * (d_weights - (d_weights * p).sum(-1, keepdims=True))        # back through the softmax
        results[name].append((entropy(p), float(np.linalg.norm(d_logits, axis=-1).mean())))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
for name, rows in results.items():
    axes[0].plot(widths, [e for e, _ in rows], "o-", label=name)
    axes[1].plot(widths, [g for _, g in rows], "o-", label=name)
axes[0].axhline(np.log(16), color="gray", ls=":", label="uniform: log 16")
for ax, label in zip(axes, ("entropy of the weights (nats)", "size of the gradient at the scores")):
    ax.set(xscale="log", xlabel="H (features per head)", ylabel=label, ylim=(0, None))
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.legend()
show("saturation")
for name, rows in results.items():
    print(f"{name:14s} entropy {' '.join(f'{e:.2f}' for e, _ in rows)}   gradient {' '.join(f'{g:.3f}' for _, g in rows)}")

# %% [markdown]
# Section 1's soft attention used the same French queries and English keys, without the
# scale. Side by side, the scale is the one difference, and it softens every row: "chat"
# puts nearly all its weight on "cat" unscaled, much less scaled. Its scores for "cat" and
# "on" are 9.42 and 3.29; divided by $\sqrt{8} = 2.83$ they are 3.33 and 1.16, so the
# ratio of the two weights drops from $e^{6.13} \approx 460$ to $e^{2.17} \approx 8.8$.
#
# Why is the unscaled softmax already this sharp with only $H = 8$ features? Not because the
# scores are larger than the variance argument says: their variance is about $H$ (printed
# below). The argument is about unrelated vectors, and these words were made to match: a
# French word is its English translation plus a little noise, so for that pair $q \approx k$
# and $q k^\top \approx k k^\top = \sum_i k_i^2$, a sum of squares, positive, of mean $H$
# for random vectors, where an unrelated pair scores $0 \pm \sqrt{H}$ (printed below: the
# mean score of a word and its translation, and of the other pairs; "chat" on "cat", 9.42,
# is more than $3 \sqrt{H}$). And even for unrelated random vectors $H = 8$ is wide enough
# to saturate the softmax partly: in the sweep above, the unscaled weights at $H = 8$
# already have less entropy than the scaled ones.

# %%
query, key = target[:, :, None, :], source[:, :, None, :]          # (1, T, 1, H), (1, S, 1, H): one head
out, weights = attention_np.scaled_dot_product_attention(query, key, key)  # (1, T, 1, H), (1, 1, T, S)
dots = attention_np.dot_scores(target, source)                     # (1, T, S): section 1's scores, unscaled
_, unscaled = attention_np.soft_attention(dots, source)             # section 1, (1, T, S)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
plot_attention(unscaled[0], english, french, ax=axes[0], title="soft: q.k (section 1)")
plot_attention(weights[0, 0], english, french, ax=axes[1], title="scaled dot-product: q.k / sqrt(H)")
show("soft_vs_scaled")

chat, cat, on = french.index("chat"), english.index("cat"), english.index("on")
print(f"'chat' scores 'cat' and 'on': {dots[0, chat, cat]:.2f} and {dots[0, chat, on]:.2f} unscaled, "
      f"{dots[0, chat, cat] / np.sqrt(H):.2f} and {dots[0, chat, on] / np.sqrt(H):.2f} scaled")
print(f"'chat' on 'cat': {unscaled[0, chat, cat]:.3f} unscaled, {weights[0, 0, chat, cat]:.3f} scaled")
translated = np.array([[translation[f.lower()] == e.lower() for e in english] for f in french])  # (T, S)
print(f"scores q.k: variance {dots.var():.1f} (H = {H}); mean {dots[0][translated].mean():.1f} "
      f"for a word and its translation, {dots[0][~translated].mean():.1f} for the other pairs")
print("the same weights as the cross-attention of section 5:", np.allclose(weights[0, 0], cross_weights, atol=1e-6))
print(f"entropy of the weights: {entropy(unscaled[0]):.2f} nats unscaled, {entropy(weights[0, 0]):.2f} scaled "
      f"(uniform over {S} words: {np.log(S):.2f})")

parity((out, weights), attention_jax.scaled_dot_product_attention(query, key, key))
parity_summary("section 6, scaled dot-product attention")

# %% [markdown]
# #### Exercise 6: without $1/\sqrt{H}$
#
# Predict, for a width the cells above did not try: 2000 queries and 16 keys of width
# $H = 256$, every entry drawn from $N(0, 1)$. What is the variance of the scores
# $q k^\top$? Of $q k^\top / \sqrt{H}$? And without the scale, are the softmax weights
# nearly one-hot (the largest weight of a row above 0.5 on average)? The check compares
# your variances with the true ones (a variance within 15% counts as right; a sample of
# scores only comes near the true value) and measures the weights on such a sample. Answer
# the last with `True` or `False`.

# %%
variance_without_scale = None       # a number
variance_with_scale = None          # a number
nearly_one_hot_without_scale = None  # True or False

# %%
print(check_scale_prediction(variance_without_scale, variance_with_scale, nearly_one_hot_without_scale))

# %% [markdown]
# ### 7. Location-based attention
#
# The score depends on *where* a position is, not only on what it holds. Luong et al. (2015,
# eq. 8) score the source positions from the decoder state alone, $a_t =
# \mathrm{softmax}(h_t W_a)$ with a kernel `(H, S)`: one score per position, whatever word
# is there (the first picture below, with a random, untrained kernel: its pattern means
# nothing yet; training is what would make it point at the right positions). Chorowski
# et al. (2015), for speech, add features of the previous step's weights (a convolution $F *
# a_{i-1}$) to an additive score, so the attention can learn to move forward along the input:
#
# $$e_{i,s} = \tanh\!\big(q_i W + h_s V + f_s U + b\big)\, v, \qquad f = F * a_{i-1}$$
#
# Below, the location-sensitive attention steps through the French words, each step given
# the previous step's weights. The parameters are chosen by hand to show the mechanism alone:
# the content terms are switched off ($W = V = 0$) and the convolution shifts the previous
# weights one position to the right, so starting from "The" (step 0) each step attends one
# word further than the last, whatever the words say. A trained model mixes such a location term with the content terms.

# %%
location_params = {"kernel": np.random.default_rng(3).normal(size=(H, S)).astype(np.float32)}
location = attention_np.location_scores(location_params, target[0])      # (T, S): from each French word alone
location_weights = np.exp(location - location.max(-1, keepdims=True))
location_weights /= location_weights.sum(-1, keepdims=True)               # softmax over the positions
plot_attention(location_weights, [f"{s}: {w}" for s, w in enumerate(english)], french,
               title="Luong location, untrained (random W_a): softmax(h_t W_a), positions only")
show("luong_location")
parity(location, attention_jax.location_scores(to_jax(location_params), target[0]))

ls_params = attention_np.init_location_sensitive_params(np.random.default_rng(4), H, H, 1, filters=1, width=3)
print(jax.tree.map(np.shape, ls_params))
ls_params["query"]["kernel"][:] = 0                                 # W = 0: no content from the query
ls_params["keys"]["kernel"][:] = 0                                  # V = 0: no content from the keys
ls_params["conv"]["kernel"][:, 0, 0] = [1, 0, 0]                    # f_s = a_{i-1, s-1}: shift right by one
ls_params["location"]["kernel"][:] = 1                              # U = 1
ls_params["bias"][:], ls_params["v"][:] = 0, 8                      # e_s = 8 tanh(f_s)
prev = np.eye(S, dtype=np.float32)[None, 0]                        # (1, S): step 0 sits on 'The'
rows, rows_jax, prev_jax = [], [], prev
for i in range(1, S):                                               # steps 1 .. S-1, each from the last
    context, prev = attention_np.location_sensitive_attention(ls_params, target[:, i], source, prev)
    context_jax, prev_jax = attention_jax.location_sensitive_attention(to_jax(ls_params), target[:, i], source, prev_jax)
    rows, rows_jax = rows + [prev[0]], rows_jax + [prev_jax[0]]
plot_attention(np.stack(rows), english, [f"step {i}" for i in range(1, S)],
               title="location-sensitive attention: one word further each step")
show("location_sensitive")
parity(np.stack(rows), np.stack(rows_jax))
parity_summary("section 7, location-based attention")

# %% [markdown]
# #### Exercise 7: the location features
#
# Write the $f = F * a_{i-1}$ of Chorowski's score for one filter: `location_features(prev_weights,
# kernel)` for the previous step's weights `prev_weights (S,)` and a filter `kernel (r,)` of
# odd width $r$, returning `f (S,)`, one feature per source position:
#
# $$f_s = \sum_{j=0}^{r-1} F_j\, a_{i-1,\, s + j - \lfloor r/2 \rfloor},
#   \qquad a_{i-1, s'} = 0 \text{ outside } 0 \le s' < S$$
#
# the filter's middle entry reads position $s$ itself, and positions past either end count
# as 0 ("SAME" padding). This is how a convolution layer computes (PyTorch's `Conv1d`,
# `jax.lax.conv_general_dilated`), and with the filter `[1, 0, 0]` above, $f_s = a_{i-1,
# s-1}$: the shift that moved the attention one word on. The check compares with the
# library's `location_sensitive_attention` on weights and a filter you have not seen.

# %%
def location_features(prev_weights, kernel):
    raise NotImplementedError  # your code here: return f, shape (S,)


# %%
print(check_location_features(location_features))

# %% [markdown]
# ### 8. Global attention
#
# "Global" has two meanings, and both are in the literature.
#
# **(a) The tutorial's:** "every position in the input sequence attends to all other
# positions", so that the model considers the entire context; the opposite is *local* attention, where each position sees only a
# window of its neighbours (as sliding-window attention does in long-context Transformers).
# In this sense the self-attention of section 3 is global. The library's local window is
# `local_window_size=(left, right)` of `scaled_dot_product_attention` (the argument of
# `jax.nn.dot_product_attention`): position $t$ sees positions $t - \mathrm{left}$ to
# $t + \mathrm{right}$. Below, the self-attention of section 3, unrestricted on the left and
# with a window of one word either side on the right: "The" no longer sees "the", four words
# away, and each row shares its weight among at most three words.

# %%
x = source[:, :, None, :]                                           # (1, S, 1, H): one head, q = k = v = the words
_, global_weights = attention_np.scaled_dot_product_attention(x, x, x)                       # (1, 1, S, S)
_, local_weights = attention_np.scaled_dot_product_attention(x, x, x, local_window_size=1)   # (1, 1, S, S)
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
plot_attention(global_weights[0, 0], english, english, ax=axes[0], title="global: every word sees every word")
plot_attention(local_weights[0, 0], english, english, ax=axes[1], title="local: a window of one word either side")
show("global_vs_local")
print("nonzero weights per row, global:", (global_weights[0, 0] > 0).sum(-1), " local:", (local_weights[0, 0] > 0).sum(-1))
parity((global_weights, local_weights),
       (attention_jax.scaled_dot_product_attention(x, x, x)[1],
        attention_jax.scaled_dot_product_attention(x, x, x, local_window_size=1)[1]))

# %% [markdown]
# **(b) Luong et al.'s (2015, section 3.1):** in an encoder - decoder, the decoder state
# $h_t$ at each target step attends to *all* the encoder outputs $\bar h_s$, as opposed to
# their *local-p* attention, which looks at a window around a predicted position (below).
# This is what `global_attention` implements: score $h_t$ against each $\bar h_s$ ("dot",
# "general", "concat" or "location"), take the context, and combine it with the state into
# the attentional state that predicts the next word:
#
# $$a_t = \mathrm{softmax}(\mathrm{score}(h_t, \bar h_s)), \quad c_t = \sum_s a_{ts} \bar h_s,
#   \quad \tilde h_t = \tanh([c_t; h_t]\, W_c)$$
#
# The decoder state is one vector `(B, H)` per step; here each French word is one batch row,
# attending to the same English sentence. With the "dot" score and the words as the states,
# the weights are exactly section 1's soft attention; what global attention adds is the
# attentional state $\tilde h_t$, from which the decoder predicts.

# %%
global_params = attention_np.init_global_params(np.random.default_rng(5), H, score="dot")
decoder_states = target[0]                                          # (T, H): T rows of one step each
encoder_outputs = np.repeat(source, T, axis=0)                      # (T, S, H)
attentional, weights = attention_np.global_attention(global_params, decoder_states, encoder_outputs, score="dot")
plot_attention(weights, english, french, title="global attention (dot score)")
show("global_attention")
print("the same weights as the soft attention of section 1:", np.allclose(weights, unscaled[0], atol=1e-6))

parity((attentional, weights),
       attention_jax.global_attention(to_jax(global_params), decoder_states, encoder_outputs, score="dot"))

# %% [markdown]
# Luong's *local-p* attention looks at a window instead: it predicts an aligned position
# $p_t = S\, \sigma(\tanh(h_t W_p)\, v_p)$, keeps the positions $|s - p_t| \le D$, and
# multiplies their softmax weights by a Gaussian of width $\sigma = D/2$ around $p_t$, so the
# weights sum to less than 1 (Luong et al. 2015, section 3.2). With $D = 1$ each row has at
# most three nonzero weights; the red mark is $p_t$. The position predictor is untrained
# here: training would teach it where each word's source is.

# %%
local_params = attention_np.init_local_params(np.random.default_rng(5), H, score="dot")
attentional, weights = attention_np.local_attention(local_params, decoder_states, encoder_outputs,
                                                    window=1, score="dot")               # (T, H), (T, S)
hidden = np.tanh(decoder_states @ local_params["position"]["kernel"])                    # (T, A)
positions = S / (1 + np.exp(-(hidden @ local_params["position"]["v"])))                   # (T,): p_t
ax = plot_attention(weights, english, french, title="local-p attention, D = 1")
ax.scatter(positions, np.arange(T), marker="|", s=400, color="red")
show("local_p")
print("p_t:", positions.round(2), " row sums:", weights.sum(-1).round(2))

parity((attentional, weights),
       attention_jax.local_attention(to_jax(local_params), decoder_states, encoder_outputs, window=1, score="dot"))
parity_summary("section 8, global attention")

# %% [markdown]
# #### Exercise 8: the local window
#
# Back to the tutorial's sense: global attention lets every query see every key, local
# attention only a window. Write `window_mask(T, S, left, right)`, the bool mask `(T, S)` of
# `local_window_size=(left, right)`: True where query $t$ may see key $s$, that is where
#
# $$t - \mathrm{left} \le s \le t + \mathrm{right}$$
#
# (`left` keys before the query's own position, `right` after it; positions are the indices
# $0, 1, \ldots$ of both sequences, as in `jax.nn.dot_product_attention`). The check tries a
# window with `left` $\ne$ `right` and $T \ne S$, and compares with the keys that
# `attention_np.scaled_dot_product_attention(..., local_window_size=(left, right))` gives a
# weight.

# %%
def window_mask(T, S, left, right):
    raise NotImplementedError  # your code here: return the bool mask, shape (T, S)


# %%
print(check_window_mask(window_mask))

# %% [markdown]
# ## How attention works, in three lines
#
# Every type above is the same three steps, in different clothes: **score** how well a
# query matches each key ($e_{ts}$: a dot product, a small network, a position), turn the
# scores into **weights** ($a_{ts}$: a softmax, or a one-hot choice), and take the
# **context**, the weighted sum of the values ($c_t = \sum_s a_{ts} v_s$). In the NumPy
# reference these are the numbered steps of every function; the types differ in where the
# queries, keys and values come from and how the score is computed.
#
# One query, by hand: "cat" attending over "The cat sat on the mat", as in the
# self-attention of section 3 (identity projections, so the query, the keys and the values
# are the word vectors themselves). Every number below can be checked with a calculator:
# each weight is its $\exp$ divided by the column's sum, and the context is the weights
# times the value vectors.

# %%
t = english.index("cat")                                            # the query: position 1
q = source[0, t]                                                    # (H,)
keys = values = source[0]                                           # (S, H)
# 1. score: how well the query matches each key
cat_scores = keys @ q / np.sqrt(H)                                  # (S,)
# 2. weights: softmax of the scores (the max is subtracted first; it cancels in the ratio)
exps = np.exp(cat_scores - cat_scores.max())                        # (S,)
cat_weights = exps / exps.sum()                                     # (S,)
# 3. context: the weighted sum of the values
cat_context = cat_weights @ values                                  # (H,)

print(f"{'key':>5} {'score q.k/sqrt(H)':>18} {'exp(score - max)':>17} {'weight':>7}")
for word, score, e, w in zip(english, cat_scores, exps, cat_weights):
    print(f"{word:>5} {score:18.3f} {e:17.4f} {w:7.3f}")
print(f"{'sum':>5} {'':18} {exps.sum():17.4f} {cat_weights.sum():7.3f}")
print("context = sum_s weight_s v_s =", cat_context)

out, weights = attention_np.self_attention(self_params, source)     # the library gives the same row
assert np.allclose(weights[0, t], cat_weights, atol=1e-6) and np.allclose(out[0, t], cat_context, atol=1e-5)

# %% [markdown]
# In the library these three lines are `scaled_dot_product_attention_core`, at the top of
# `attention_np/dot_product.py`: the equation and nothing else. Read it before
# `scaled_dot_product_attention`, the function the rest of the library calls, which runs
# the same three lines with the options research code needs around them (grouped heads,
# masks of every kind, bias, soft cap, sinks, dropout).

# %%
from attention_jax.dot_product import scaled_dot_product_attention_core as core_jax
from attention_np.dot_product import scaled_dot_product_attention_core

core_out, core_weights = scaled_dot_product_attention_core(source, source, source)  # (B, S, H): q = k = v = x
print("the core's weights for 'cat':", core_weights[0, t].round(3),
      " as by hand:", np.allclose(core_weights[0, t], cat_weights, atol=1e-6))
parity((core_out, core_weights), core_jax(source, source, source))

# %% [markdown]
# #### Where scores come from
#
# The first step is where the types differ most. The score functions as the literature
# lists them (Graves et al. 2014, Bahdanau et al. 2015, Luong et al. 2015, Vaswani et al.
# 2017), each one function of `attention_np` and `attention_jax` (query $q_t$, key $k_s$;
# vectors are rows):
#
# | score | $e_{ts}$ | paper | function |
# |---|---|---|---|
# | content-based (cosine) | $\beta\, q_t k_s^\top / (\lVert q_t \rVert\, \lVert k_s \rVert)$ | Graves, Wayne & Danihelka 2014, "Neural Turing machines" | `cosine_scores(query, keys, strength=beta)` |
# | additive (concat) | $\tanh([q_t; k_s]\, W + b)\, v$ | Bahdanau, Cho & Bengio 2015 | `concat_scores`, `additive_attention` |
# | location-based | $(q_t W_a)_s$: the query alone, one score a position | Luong, Pham & Manning 2015 | `location_scores` |
# | general | $q_t\, (k_s W)^\top$ | Luong, Pham & Manning 2015 | `general_scores` |
# | dot | $q_t k_s^\top$ | Luong, Pham & Manning 2015 | `dot_scores` |
# | scaled dot | $q_t k_s^\top / \sqrt{H}$ | Vaswani et al. 2017 | `scaled_dot_scores`, `scaled_dot_product_attention` |
#
# The content-based score of the Neural Turing machine is the cosine of the angle between
# query and key: it ignores their lengths and lies in $[-1, 1]$, and the key strength
# $\beta$, which the network emits beside each key, sets how sharp the softmax of the scores
# is. A zero vector scores 0 (its length is taken as at least $10^{-8}$). On the sentence:

# %%
dot = attention_np.dot_scores(target, source)                       # (1, T, S)
cosine = attention_np.cosine_scores(target, source)                  # (1, T, S): in [-1, 1]
sharp = attention_np.cosine_scores(target, source, strength=10.0)    # beta = 10
chat = french.index("chat")
print("'chat' over", english)
print("  dot scores:               ", dot[0, chat].round(2))
print("  cosine scores:            ", cosine[0, chat].round(2))
print("  softmax of the cosines:   ", attention_np.soft_attention(cosine, source)[1][0, chat].round(3))
print("  softmax of 10 x cosines:  ", attention_np.soft_attention(sharp, source)[1][0, chat].round(3))
parity((cosine, sharp), (attention_jax.cosine_scores(target, source),
                         attention_jax.cosine_scores(target, source, strength=10.0)))
parity_summary("how attention works")

# %% [markdown]
# ### Exercise 9: one head by hand
#
# The same three steps with pen and paper, no code: the output of one head,
# $\mathrm{softmax}(q k^\top / \sqrt{2})\, v$, for two queries, two keys and two values of
# $H = 2$ features. The key's first entry is $\sqrt{2} \ln 3$, so that after the scale the
# scores are easy:
#
# $$q = \begin{pmatrix} 1 & 0 \\ 0 & 1 \end{pmatrix}, \quad
#   k = \begin{pmatrix} \sqrt{2} \ln 3 & 0 \\ 0 & 0 \end{pmatrix}, \quad
#   v = \begin{pmatrix} 4 & 0 \\ 0 & 8 \end{pmatrix}$$
#
# (rows are positions; they are `HAND_QUERY`, `HAND_KEY`, `HAND_VALUE`). Write the two rows
# of the output as numbers.

# %%
print("q\n", HAND_QUERY, "\nk\n", HAND_KEY, "\nv\n", HAND_VALUE)
by_hand = None  # your answer: np.array([[., .], [., .]])

# %%
print(check_head_by_hand(by_hand))

# %% [markdown]
# ## The architecture: encoder - attention - decoder
#
# The tutorial's second part puts attention between two recurrent networks. The **encoder**
# (a GRU) reads the source and keeps its state at every position: the `encoder_outputs`.
# At each output step the **attention** scores the decoder's state against every encoder
# output and forms a context vector; the **decoder** (another GRU) takes the previous word
# and the context and predicts the next word. `seq2seq_forward` runs this with teacher
# forcing (the true previous words) and returns the logits and the attention weights of
# every step; `greedy_decode` feeds back its own predictions.
#
# The machinery of one decoder step, with the shape at every arrow, as `seq2seq.py` runs it
# with the tutorial's additive attention (two more letters: D, the features of a word's
# embedding, and V, the words of the target vocabulary):

# %%
draw_seq2seq()
show("machinery_seq2seq")

# %% [markdown]
# Here on the sentence, with word ids and an untrained model (D = 8, H = 16): the shapes and
# the loop are the point, and both halves agree.

# %%
src_vocab = {w: i + 2 for i, w in enumerate(dict.fromkeys(w.lower() for w in english))}   # 0 pad, 1 bos
tgt_vocab = {w: i + 2 for i, w in enumerate(dict.fromkeys(w.lower() for w in french))}
source_ids = np.array([[src_vocab[w.lower()] for w in english]], np.int32)                # (1, S)
target_out = np.array([[tgt_vocab[w.lower()] for w in french]], np.int32)                  # (1, T)
target_in = np.concatenate([[[1]], target_out[:, :-1]], axis=1).astype(np.int32)           # shifted right, bos = 1

s2s_params = attention_np.init_seq2seq_params(np.random.default_rng(6), source_vocab=len(src_vocab) + 2,
                                              target_vocab=len(tgt_vocab) + 2, embed=8, hidden=16)
logits, weights = attention_np.seq2seq_forward(s2s_params, source_ids, target_in)   # (1, T, V), (1, T, S)
ids, decode_weights = attention_np.greedy_decode(s2s_params, source_ids, bos_id=1, max_length=T)
print("logits", logits.shape, "weights", weights.shape, "greedy ids", ids[0])

parity((logits, weights), attention_jax.seq2seq_forward(to_jax(s2s_params), source_ids, target_in))
ids_jax, _ = attention_jax.greedy_decode(to_jax(s2s_params), source_ids, bos_id=1, max_length=T)
print("both halves decode the same ids:", bool((np.asarray(ids_jax) == ids).all()))
parity_summary("the encoder - attention - decoder")

# %% [markdown]
# A trained model's weights tell the story. `python -m examples.reverse` trains this model
# (in JAX, about a minute on a 2-core CPU) to reverse digit sequences, then decodes with the
# NumPy reference; reversing needs attention, and the learned weights follow the
# anti-diagonal. Read the picture below row by row: output step 0 looks at the last source
# position, $S - 1$, but every later step $t$ looks at $S - t$, one position to the right of
# the exact anti-diagonal $S - 1 - t$ (in the run that drew this picture, over 1000
# held-out sequences, the largest weight of step 0 is at $S - 1$ in 999, and that of a later
# step at $S - t$ in 98% of cases; a run on another machine trains a little differently). A
# likely reason: the additive attention scores the *previous* decoder state (Bahdanau's
# order), which has just written output $t - 1$, the digit at source position $S - t$; it
# finds that digit, and the encoder state there, having read the source up to it, also
# holds the digit before it, the one to write next.
#
# The picture is the one committed with the repository, `examples/reverse_attention.png`.
# The script writes its own to `./reverse_attention.png`;
# `python -m examples.reverse --plot examples/reverse_attention.png` redraws this one.

# %%
show_committed("reverse_attention", "python -m examples.reverse --plot examples/reverse_attention.png",
               figsize=(14, 5.2))

# %% [markdown]
# Why this helps (the tutorial's "How attention improves traditional models"): an RNN
# encoder alone must squeeze the whole source into its last state; with attention the
# decoder reads a fresh context vector at every step, so long inputs lose nothing on the way.
#
# Measured: `python -m examples.reverse --attention none` is the same GRU encoder - decoder
# with the attention taken out, the encoder's last state its only context at every step.
# `python -m examples.reverse --sweep` trains both on lengths 2-24 (1000 steps each) and
# measures the held-out token accuracy at each length, as Bahdanau et al. (2015, figure 2)
# did for translation. In the committed run below, both are right up to 5 digits; then,
# without attention, the accuracy falls toward chance (0.10) as the source outgrows one
# vector of 64 numbers, while with attention it stays high (with more training it would be
# higher still). The run's numbers and the machine it ran on are on the site's encoder -
# attention - decoder page.

# %%
show_committed("attention_vs_length", "python -m examples.reverse --sweep --sweep-plot examples/attention_vs_length.png",
               figsize=(8, 5))

# %% [markdown]
# ## The tutorial's implementation: Steps 1-4
#
# The tutorial's Step 1 defines a PyTorch class: the decoder state is repeated over the
# source steps, concatenated with each encoder output, passed through a linear layer and
# `tanh` (the "energy"), scored against a vector `v`, and softmaxed. That is additive
# (Bahdanau) attention, `attention_np.additive_attention`:
#
# $$e_s = \tanh\!\big([h; \bar h_s]\, W + b\big)\, v, \quad a = \mathrm{softmax}(e), \quad
#   c = \sum_s a_s \bar h_s$$
#
# with `params = {"attn": {"kernel": (2H, H), "bias": (H,)}, "v": (H,)}`; the kernel is
# the transpose of PyTorch's `attn.weight`. Steps 2-4 seed PyTorch with 0, draw
# `encoder_outputs (1, 4, 8)` and `decoder_hidden (1, 8)`, run the class and print. That
# run is stored in the repository (`parity_tests/golden/`, regenerated by running the
# notebook's cells verbatim), so no PyTorch is needed here: both halves get the same inputs
# and weights and are compared with PyTorch's printed numbers.

# %%
from parity_tests.tutorial import tutorial_step4

step4 = tutorial_step4()    # {quantity: {"pytorch": ..., "numpy": ..., "jax": ...}}
for name in ("attn_weights", "context"):
    print(name)
    for half in ("pytorch", "numpy", "jax"):
        value = step4[name][half]
        error = np.abs(value - step4[name]["pytorch"]).max()
        print(f"  {half:8s}{np.array2string(value.ravel(), precision=4)}   max abs err {error:.1e}")
        assert error <= 1e-6   # the contract's tolerance against the tutorial's PyTorch class

# %% [markdown]
# The same call, written out, for your own inputs:

# %%
import parity_tests

params, decoder_hidden, encoder_outputs, context_pt, weights_pt = parity_tests.load_tutorial_golden()
context, weights = attention_np.additive_attention(params, decoder_hidden, encoder_outputs)
print("attention weights:", weights)          # the tutorial prints [[0.3385, 0.1583, 0.2507, 0.2526]]
plot_attention(weights, [f"s={s}" for s in range(4)], ["decoder_hidden"],
               title="the tutorial's attention weights (its Step 4)")
show("tutorial_weights")
parity((context, weights), attention_jax.additive_attention(to_jax(params), decoder_hidden, encoder_outputs))
parity_summary("the tutorial's implementation")

# %% [markdown]
# ## How attention learns: one backward pass
#
# Training needs the gradient of a loss with respect to the queries, keys and values.
# `attention_np` writes the backward pass out by hand (`attention_np/backward.py`); for
# $P = \mathrm{softmax}(s\, Q K^\top)$ and $O = P V$, given $dO$:
#
# $$dV = P^\top dO, \qquad dP = dO\, V^\top, \qquad
#   dL = P \odot \big(dP - \mathrm{rowsum}(dP \odot P)\big)$$
#
# $$dQ = s\, dL\, K, \qquad dK = s\, dL^\top Q$$
#
# JAX derives the same gradients by itself (`jax.vjp`). Both, for the scaled dot-product
# attention of section 6 (the French queries over the English keys; the values here are
# the keys plus one):

# %%
d_out = np.random.default_rng(7).normal(size=query.shape).astype(np.float32)    # dL/d out, (1, T, 1, H)
grads_np = attention_np.scaled_dot_product_attention_vjp(query, key, key + 1.0, d_out)

out_jax, vjp = jax.vjp(lambda q, k, v: attention_jax.scaled_dot_product_attention(q, k, v)[0],
                       *to_jax((query, key, key + 1.0)))
grads_jax = vjp(jnp.asarray(d_out))
for name, g in zip(("d_query", "d_key", "d_value"), grads_np):
    print(name, g.shape)
parity(grads_np, grads_jax)
parity_summary("one backward pass")

# %% [markdown]
# ### Exercise 10: the softmax backward
#
# Given the weights $w = \mathrm{softmax}(x)$ of each row and the gradient of a loss with
# respect to them, $d = \partial L / \partial w$, return $\partial L / \partial x$. You
# have met the answer: it is the rule $dL = P \odot (dP - \mathrm{rowsum}(dP \odot P))$ of
# the sweep in section 6 and of the backward pass, with $P = w$ and $dP = d$. The exercise
# is to see where it comes from: start from the Jacobian
# $\partial w_i / \partial x_j = w_i([i = j] - w_j)$, sum $d_i\, \partial w_i / \partial x_j$
# over $i$, and check that you arrive at that rule; then write it. The check compares with
# `jax.vjp(jax.nn.softmax, ...)`.

# %%
def softmax_backward(weights, d_weights):
    raise NotImplementedError  # your code here: return d_logits, shape (T, S)


# %%
print(check_softmax_backward(softmax_backward))

# %% [markdown]
# ## Finishing on a Transformer layer
#
# The tutorial ends on attention as the foundation of the Transformer (Vaswani et al. 2017).
# A Transformer *encoder layer* is multi-head self-attention (section 4) plus three small
# things: a residual connection and layer normalisation around each sub-layer, and a
# position-wise feed-forward network (the same two dense layers at every position):
#
# $$z = \mathrm{LayerNorm}\big(x + \mathrm{MultiHead}(x, x, x)\big), \qquad
#   \mathrm{out} = \mathrm{LayerNorm}\big(z + \max(0, z W_1 + b_1) W_2 + b_2\big)$$
#
# (post-norm, the paper's order). Attention by itself does not see word order: "cat sat"
# and "sat cat" give the same weights, only permuted. So positions are added to the
# embeddings first, as waves of different frequencies (the paper's section 3.5):
# $PE_{(t, 2i)} = \sin(t / 10000^{2i/E})$, $PE_{(t, 2i+1)} = \cos(t / 10000^{2i/E})$.
# A decoder layer (`transformer_decoder_layer`) adds causal self-attention and
# cross-attention over the encoder's outputs (section 5) in the same pattern.
#
# The layer below is untrained, so its head's pattern is arbitrary; but look at the columns
# of "The" and "the": one word vector, yet different weights, because their positions differ.

# %%
positions = attention_np.sinusoidal_positions(S, E)                     # (S, E) = (6, 8)
x = source + positions                                                  # (1, 6, 8): words plus positions
layer_params = attention_np.init_transformer_encoder_params(np.random.default_rng(2), E, 2, 32)  # E=8, N=2, M=32
encoded, layer_weights = attention_np.transformer_encoder_layer(layer_params, x)  # (1, 6, 8), (1, 2, 6, 6)
print("positions[:3]\n", positions[:3])
print("encoded", encoded.shape, "weights", layer_weights.shape)
print("every position comes out normalised: mean", encoded.mean(-1).round(3) + 0.0, "std", encoded.std(-1).round(3))
plot_attention(layer_weights[0, 0], english, english, title="encoder layer, head 1")
show("transformer_encoder_head_1")

parity((encoded, layer_weights), attention_jax.transformer_encoder_layer(to_jax(layer_params), x))
parity_summary("a Transformer layer")

# %% [markdown]
# ## Where next
#
# - The design page: shapes, parameter dicts, masking, dtypes, errors and tolerances.
# - The API reference: every function's docstring, with its equation.
# - `python -m parity_tests`: every mechanism, every dtype, both halves, forward and backward.
