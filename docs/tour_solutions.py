"""Solutions to the tour's exercises, one at the end of each section (``tour.py`` / ``tour.ipynb``).

Try them first: each check cell in the tour says "right" or what is still wrong. The tests
run every check on these answers (``parity_tests/tests/test_tour_exercises.py``).
"""

import numpy as np


# Exercise 1: the masked softmax
def masked_softmax(logits, mask):
    """``logits (T, S)``, bool ``mask (T, S)`` (True = attend) -> ``weights (T, S)``."""
    # 1. masked logits are replaced by the smallest float (never -inf: no inf - inf = NaN)
    logits = np.where(mask, logits, np.finfo(logits.dtype).min)           # (T, S)
    # 2. subtract each row's max before exp, so a large logit cannot overflow
    unnormalized = np.exp(logits - logits.max(axis=-1, keepdims=True))   # (T, S)
    unnormalized = np.where(mask, unnormalized, 0.0)                     # exactly zero where masked
    # 3. normalise; a row that sees no key has total 0: divide by 1 instead, giving zeros
    total = unnormalized.sum(axis=-1, keepdims=True)                     # (T, 1)
    return unnormalized / np.where(total == 0, 1.0, total)


# Exercise 2: a sample by the Gumbel-max trick
def sample(scores, gumbel_noise):
    """``scores (T, S)``, ``gumbel_noise (T, S)`` -> one-hot ``weights (T, S)``: a sample from
    ``softmax(scores)`` in every row, one key each."""
    # 1. perturb the scores, then choose each query's best key
    choice = (scores + gumbel_noise).argmax(axis=-1)                       # (T,)
    # 2. one-hot weights: 1 at the chosen key, 0 elsewhere
    return (np.arange(scores.shape[-1]) == choice[:, None]).astype(float)  # (T, S)


# Exercise 3: causal attention
def causal_attention(query, key, value):
    """``query, key, value (T, H)`` -> ``out (T, H)``: position t attends to positions <= t."""
    T, H = query.shape
    scores = query @ key.T / np.sqrt(H)                                   # (T, T)
    mask = np.tril(np.ones((T, T), dtype=bool))                          # key s <= query t
    return masked_softmax(scores, mask) @ value                          # (T, H)


# Exercise 4: split and merge the heads
def split_heads(x, N):
    """``x (B, T, N*head_dim)`` -> ``(B, T, N, head_dim)``: head n gets the features
    n*head_dim to (n+1)*head_dim - 1, as the library's kernel (E, N, head_dim) is the flat
    (E, N*head_dim) one reshaped."""
    B, T, F = x.shape
    return x.reshape(B, T, N, F // N)                                      # (B, T, N, head_dim)


def merge_heads(heads):
    """``heads (B, T, N, head_dim)`` -> ``(B, T, N*head_dim)``: the inverse of ``split_heads``."""
    B, T, N, head_dim = heads.shape
    return heads.reshape(B, T, N * head_dim)                               # (B, T, N*head_dim)


# Exercise 5: cross-attention
def cross_attention(params, decoder_states, encoder_outputs):
    """``decoder_states (T, E)``, ``encoder_outputs (S, E)`` -> ``out (T, H)``: the decoder
    queries, the encoder is read."""
    def project(name, x):
        return x @ params[name]["kernel"] + params[name]["bias"]           # (., H)

    # 1. queries from the decoder, keys and values from the encoder
    query = project("query", decoder_states)                               # (T, H)
    key, value = project("key", encoder_outputs), project("value", encoder_outputs)  # (S, H) each
    # 2. every decoder position scores every encoder position; softmax over the encoder positions
    scores = query @ key.T / np.sqrt(query.shape[-1])                      # (T, S)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)                         # (T, S)
    # 3. the weighted sum of the encoder's values
    return weights @ value                                                 # (T, H)


# Exercise 6: without 1/sqrt(H). q.k sums H = 256 products of variance 1: variance 256;
# divided by sqrt(H) it is 1. Scores with a standard deviation of 16 differ by tens between
# keys, so the softmax puts nearly all the weight on the largest one.
variance_without_scale = 256
variance_with_scale = 1
nearly_one_hot_without_scale = True


# Exercise 7: the location features
def location_features(prev_weights, kernel):
    """``prev_weights (S,)``, ``kernel (r,)``, r odd -> ``f (S,)``: ``f_s = sum_j kernel_j
    prev_weights[s + j - r // 2]``, zero past the ends. (``np.correlate(prev_weights, kernel,
    "same")`` computes the same; ``np.convolve`` would flip the kernel.)"""
    S, r = len(prev_weights), len(kernel)
    # 1. r // 2 zeros past each end, so that every position has a full window
    padded = np.pad(prev_weights, r // 2)                                  # (S + r - 1,)
    # 2. the window around position s, times the filter, entry by entry
    return np.array([padded[s:s + r] @ kernel for s in range(S)])          # (S,)


# Exercise 8: the local window
def window_mask(T, S, left, right):
    """``(T, S)`` bool: query t sees key s when ``t - left <= s <= t + right``."""
    t, s = np.arange(T)[:, None], np.arange(S)[None, :]                    # (T, 1), (1, S)
    return (t - left <= s) & (s <= t + right)                              # (T, S)


# Exercise 9: one head by hand. Query 0 scores the keys (sqrt(2) ln 3) / sqrt(2) = ln 3 and
# 0: weights 3/4 and 1/4, output 3/4 [4, 0] + 1/4 [0, 8] = [3, 2]. Query 1 scores both keys
# 0: weights 1/2 and 1/2, output [2, 4].
by_hand = np.array([[3.0, 2.0], [2.0, 4.0]])


# Exercise 10: the softmax backward
def softmax_backward(weights, d_weights):
    """``weights = softmax(logits)`` and ``d_weights = dL/dweights``, both ``(T, S)`` ->
    ``dL/dlogits (T, S)``.

    The softmax's Jacobian is ``dw_i/dx_j = w_i ([i = j] - w_j)``, so
    ``dL/dx_j = sum_i d_i w_i ([i = j] - w_j) = w_j (d_j - sum_i d_i w_i)``."""
    return weights * (d_weights - (d_weights * weights).sum(axis=-1, keepdims=True))
