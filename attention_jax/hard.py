"""Hard attention: attend to exactly one source position (Xu et al. 2015)."""

import jax
import jax.numpy as jnp

from attention_np._validate import check_hard

from ._dtypes import compute_dtype
from ._jit import jit
from ._masking import attended_keys, masked_softmax


@jit(static_argnames=("straight_through",))
def hard_attention(scores, values, *, mask=None, gumbel_noise=None, rng=None, straight_through=False):
    r"""Hard attention: one-hot weights at the best (or a sampled) source position.

    .. math::
        s^*_t = \arg\max_s \,(e_{ts} + g_{ts}), \qquad a_{ts} = [s = s^*_t], \qquad c_t = v_{s^*_t}

    With ``g = 0`` this is the deterministic argmax (ties go to the lowest index); with
    Gumbel noise ``g`` it is an exact sample from ``softmax(e)`` (the Gumbel-max trick;
    Xu et al. 2015, "Show, attend and tell", section 4.1, "stochastic hard attention").
    Masked positions are never chosen; a query with every position masked gets zero
    weights and a zero context.

    Args:
      scores: ``(B, T, S)``.
      values: ``(B, S, H)``.
      mask: optional bool broadcastable to ``(B, T, S)``, True = attend.
      gumbel_noise: optional ``(B, T, S)`` noise added to the scores before the argmax.
      rng: optional JAX PRNG key that draws standard Gumbel noise (not with ``gumbel_noise``).
      straight_through: if True, the forward pass is unchanged (one-hot) but gradients are
        those of ``softmax(scores + noise)``, the straight-through Gumbel-softmax estimator
        (Jang et al. 2017, "Categorical reparameterization with Gumbel-softmax", section
        2.2; Bengio et al. 2013), so hard attention can be trained by backpropagation.
        Without it, the scores get zero gradient (argmax is piecewise constant).

    Returns:
      ``(context, weights)``: ``(B, T, H)`` and one-hot ``(B, T, S)``, in the dtype of ``values``.
    """
    scores, values = jnp.asarray(scores), jnp.asarray(values)
    check_hard(scores, values, mask, gumbel_noise, rng)
    dtype, compute = values.dtype, compute_dtype(values.dtype)
    B, T, S = scores.shape
    if S == 0:  # nothing to attend to: a zero context, as for a query whose every position is masked
        return jnp.zeros((B, T, values.shape[-1]), dtype), jnp.zeros((B, T, 0), dtype)
    logits = scores.astype(compute)
    if rng is not None:
        gumbel_noise = jax.random.gumbel(rng, (B, T, S), compute)
    # 1. perturb (or not), then choose the best unmasked position
    if gumbel_noise is not None:
        logits = logits + jnp.asarray(gumbel_noise).astype(compute)
    logits_before_mask = logits
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)                           # never chosen
    index = logits.argmax(axis=-1)                                         # (B, T)
    # 2. one-hot weights; queries with nothing to attend to get none
    weights = (jnp.arange(S) == index[..., None]).astype(compute)           # (B, T, S)
    context = jnp.take_along_axis(values.astype(compute), index[..., None], axis=1)  # (B, T, H)
    if mask is not None:
        anything = jnp.broadcast_to(mask, (B, T, S)).any(axis=-1, keepdims=True)  # (B, T, 1)
        weights, context = weights * anything, jnp.where(anything, context, 0)
    if straight_through:
        # 3. forward: exactly the one-hot weights; backward: the softmax's gradient
        soft = masked_softmax(logits_before_mask, mask)                    # (B, T, S)
        weights = weights + (soft - jax.lax.stop_gradient(soft))          # forward: + 0 exactly
        values = values.astype(compute)
        if mask is not None:
            values = jnp.where(attended_keys(mask, (B, T, S))[..., None], values, 0)  # 0 * NaN cannot leak
        context = context + (soft - jax.lax.stop_gradient(soft)) @ values  # forward: + 0
    return context.astype(dtype), weights.astype(dtype)
