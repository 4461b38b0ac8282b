"""Rotary position embeddings (Su et al. 2021): mirror of ``attention_np/rotary.py``."""

import jax.numpy as jnp

from attention_np.rotary import check_rotary, rotary_frequencies, rotary_options

from ._dtypes import compute_dtype
from ._jit import jit


def apply_rotary(x, positions, *, base=10000.0, fraction=1.0, scaling=None, interleaved=False):
    r"""Rotate each pair of features of ``x`` by an angle proportional to its position.

    .. math::
        \theta_i = \text{base}^{-2i/R}, \qquad
        \begin{pmatrix} y_i \\ y_{i + R/2} \end{pmatrix} = a
        \begin{pmatrix} \cos t\theta_i & -\sin t\theta_i \\ \sin t\theta_i & \cos t\theta_i \end{pmatrix}
        \begin{pmatrix} x_i \\ x_{i + R/2} \end{pmatrix}, \quad i < R/2

    R = H * fraction rounded down to an even number; features R.. H-1 pass unchanged. Pairs
    are (i, i + R/2), the "rotate half" layout of GPT-NeoX, LLaMA and Gemma, or with
    ``interleaved=True`` (2i, 2i + 1), as GPT-J and Meta's LLaMA. ``a = 1`` and ``theta_i`` as
    written unless ``scaling`` stretches them as transformers does (linear, Llama 3.1, YaRN:
    see ``attention_np.rotary``). Su et al. 2021, "RoFormer", eq. (34); Peng et al. 2023, "YaRN".

    Args:
      x: ``(B..., T, N, H)`` queries or keys (after the projection, before the attention).
      positions: int, broadcastable to ``(B..., T)`` (traced: a decode position is fine).
      base: the wavelength base, > 1 (``rope_theta``). Static.
      fraction: the share of the H features that is rotated, in (0, 1]. Static.
      scaling: None, or Hugging Face's rope parameters ``{"rope_type": "default" | "linear" |
        "llama3" | "yarn", ...}`` with its keys. Static.
      interleaved: pairs of neighbours instead of halves. Static.

    Returns:
      the shape of ``x``, ``(B, T, N, H)`` for one batch axis, and its dtype (computed in
      float32, float64 for float64).
    """
    # the dict as its sorted items: hashable, so jit holds it as a static argument
    return _apply_rotary(x, positions, base=base, fraction=fraction, scaling=rotary_options(scaling, interleaved),
                         interleaved=interleaved)


@jit(static_argnames=("base", "fraction", "scaling", "interleaved"))
def _apply_rotary(x, positions, *, base, fraction, scaling, interleaved):
    x, positions = jnp.asarray(x), jnp.asarray(positions)
    R = check_rotary(x, positions, base, fraction, scaling, interleaved)
    compute = compute_dtype(x.dtype)
    # 1. one angle per (position, pair): t theta_i, theta_i = base^(-2i/R) as `scaling` stretches it
    theta, attention_factor = rotary_frequencies(R, base, scaling)                 # (R/2,), a
    angle = positions.astype(compute)[..., None, None] * jnp.asarray(theta, compute)  # (B..., T, 1, R/2)
    cos, sin = jnp.cos(angle) * attention_factor, jnp.sin(angle) * attention_factor
    # 2. turn each pair; the features past R pass through
    rotated, rest = x[..., :R].astype(compute), x[..., R:]
    if interleaved:  # pairs (x_2i, x_2i+1), turned and put back side by side
        x1, x2 = rotated[..., 0::2], rotated[..., 1::2]                             # (B..., T, N, R/2)
        turned = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rotated.shape)  # (.., R)
    else:  # pairs (x_i, x_i+R/2)
        x1, x2 = rotated[..., : R // 2], rotated[..., R // 2 :]                     # (B..., T, N, R/2)
        turned = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # (B..., T, N, R)
    return jnp.concatenate([turned.astype(x.dtype), rest], axis=-1)
