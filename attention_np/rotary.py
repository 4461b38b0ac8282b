"""Rotary position embeddings (RoPE): positions written into queries and keys by rotation.

Su et al. 2021, "RoFormer: Enhanced transformer with rotary position embedding", section 3.4.

The idea: split the H features of a query or key into H/2 pairs and turn each pair, seen
as a point in the plane, by an angle that grows with the position t: pair i turns by
``t * theta_i`` with ``theta_i = base ** (-2i / H)`` (fast turns for the first pairs, slow
ones for the last). A dot product of two turned vectors depends only on the *difference*
of their angles, so the score of query t and key s sees only ``t - s``: relative positions,
with nothing added to the logits.

Pairs are (feature i, feature i + H/2) by default, the "rotate half" layout of GPT-NeoX,
Hugging Face's LLaMA and Gemma; ``interleaved=True`` pairs neighbours (2i, 2i + 1), the
paper's layout, as GPT-J and Meta's original LLaMA code write it. Both are the same rotation
on permuted features, so weights trained with one layout need that layout.

Models trained for long contexts stretch the wavelengths ``2 pi / theta_i``; ``scaling``
takes the rope parameters of a Hugging Face config (``rope_scaling``, or ``rope_parameters``)
with their key names, and gives what transformers' rotary embeddings give:

- ``{"rope_type": "linear", "factor": f}``: position interpolation, every ``theta_i / f``
  (Chen et al. 2023);
- ``{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
  "original_max_position_embeddings"}``: Llama 3.1 (Meta 2024) stretches the long
  wavelengths by the factor, keeps the short ones, and blends smoothly between;
- ``{"rope_type": "yarn", "factor", "original_max_position_embeddings"}`` and optionally
  ``"beta_fast"`` (32), ``"beta_slow"`` (1), ``"truncate"`` (True), ``"attention_factor"``
  (``0.1 ln(factor) + 1``), ``"mscale"``, ``"mscale_all_dim"``: YaRN (Peng et al. 2023, as
  gpt-oss and DeepSeek-V3 use it) keeps the pairs that turn many times over the original
  context, stretches those that turn few times, ramps linearly between, and multiplies cos
  and sin by the attention factor (so the logits by its square).
"""

import math
import numbers
from collections.abc import Mapping

import numpy as np

from ._dtypes import compute_dtype
from ._validate import check_float

# rope_type: (the keys it needs, the keys it may have), with Hugging Face's names
ROPE_TYPES = {
    "default": ((), ()),
    "linear": (("factor",), ()),
    "llama3": (("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), ()),
    "yarn": (("factor", "original_max_position_embeddings"),
             ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")),
}
# in every Hugging Face dict: the type (``type`` is its older name), and what base and fraction hold
_COMMON_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")


def rotary_features(H: int, fraction: float) -> int:
    """How many of the H features are rotated: ``H * fraction`` rounded down to an even
    number (pairs); a ``ValueError`` names the arguments when that leaves no pair."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1]; got {fraction!r}")
    R = int(H * fraction) // 2 * 2
    if R < 2:
        raise ValueError(f"rotary embeddings rotate pairs of features: H * fraction must be at least 2; "
                         f"got H={H}, fraction={fraction}")
    return R


def rotary_options(scaling, interleaved):
    """The checks of ``scaling`` and ``interleaved`` (static options), shared by both halves.
    Returns ``scaling`` as its items sorted by key, or None: hashable, so that compiled code
    and a module can hold it as fixed configuration; every function that takes ``scaling``
    takes this form too."""
    if not isinstance(interleaved, bool):
        raise TypeError(f"interleaved must be True or False; got {interleaved!r}")
    if scaling is None:
        return None
    if isinstance(scaling, tuple) and all(isinstance(item, tuple) and len(item) == 2 for item in scaling):
        scaling = dict(scaling)
    if not isinstance(scaling, Mapping):
        raise TypeError(f"scaling must be a dict of Hugging Face rope parameters, e.g. {{'rope_type': 'linear', "
                        f"'factor': 2.0}}, or None; got {scaling!r}")
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type is None:
        raise ValueError(f"scaling needs the key 'rope_type' (one of {', '.join(map(repr, ROPE_TYPES))}); got the "
                         f"keys {', '.join(map(repr, scaling)) or 'none'}")
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"scaling['rope_type'] must be one of {', '.join(map(repr, ROPE_TYPES))}; got {rope_type!r} "
                         f"(dynamic and longrope scaling depend on the sequence length and are not supported)")
    needed, optional = ROPE_TYPES[rope_type]
    for name in needed:
        if scaling.get(name) is None:
            raise ValueError(f"scaling with rope_type {rope_type!r} needs the key {name!r}; got the keys "
                             f"{', '.join(map(repr, scaling))}")
    for name, value in scaling.items():
        if name not in needed + optional + _COMMON_KEYS:
            takes = ", ".join(map(repr, needed + optional)) or "no other key"
            raise ValueError(f"scaling with rope_type {rope_type!r} takes {takes}; got the key {name!r}")
        if name in ("rope_type", "type") or value is None:
            continue
        if name == "truncate":
            if not isinstance(value, bool):
                raise ValueError(f"scaling['truncate'] must be True or False; got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
            raise ValueError(f"scaling[{name!r}] must be a positive number; got {value!r}")
    if rope_type == "llama3" and not scaling["low_freq_factor"] < scaling["high_freq_factor"]:
        raise ValueError(f"scaling['low_freq_factor'] must be less than scaling['high_freq_factor']; got "
                         f"{scaling['low_freq_factor']!r} and {scaling['high_freq_factor']!r}")
    return tuple(sorted(scaling.items()))


def check_rotary(x, positions, base, fraction, scaling=None, interleaved=False) -> int:
    """The checks of :func:`apply_rotary`, shared by both halves; returns R, the rotated features."""
    scaling = rotary_options(scaling, interleaved)  # first: the JAX half checks them before tracing too
    check_float("x", x)
    if len(x.shape) < 3:
        raise ValueError(f"x must have shape (B..., T, N, H); got {tuple(x.shape)}")
    if not str(getattr(positions, "dtype", "")).startswith(("int", "uint")):
        raise TypeError(f"positions must be an integer array broadcastable to (B..., T); got "
                        f"{getattr(positions, 'dtype', type(positions).__name__)}")
    if tuple(positions.shape[-1:]) not in ((), (1,), (x.shape[-3],)):
        raise ValueError(f"positions must be broadcastable to (B..., T) with T={x.shape[-3]} from x; "
                         f"got {tuple(positions.shape)}")
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
        raise ValueError(f"base must be a number greater than 1; got {base!r}")
    R = rotary_features(x.shape[-1], fraction)
    # a Hugging Face dict may carry base and fraction too: they must agree
    for name, value, argument in (("rope_theta", base, "base"), ("partial_rotary_factor", fraction, "fraction")):
        given = dict(scaling or ()).get(name)
        if given is not None and given != value:
            raise ValueError(f"scaling[{name!r}] is {given!r} but {argument} is {value!r}: pass "
                             f"{argument}=scaling[{name!r}]")
    return R


def rotary_frequencies(R: int, base: float, scaling=None):
    """The R/2 angular frequencies ``theta_i`` (float64) and the factor on cos and sin, as
    transformers' ``_compute_{default,linear_scaling,llama3,yarn}_parameters`` compute them.

    >>> theta, attention_factor = rotary_frequencies(4, 100.0, {"rope_type": "linear", "factor": 2.0})
    >>> theta, attention_factor                                        # 100^0 / 2, 100^(-1/2) / 2
    (array([0.5 , 0.05]), 1.0)
    """
    scaling = dict(scaling or ())
    theta = base ** (-np.arange(0, R, 2, dtype=np.float64) / R)                   # (R/2,)
    match scaling.get("rope_type", scaling.get("type", "default")):
        case "linear":
            return theta / scaling["factor"], 1.0
        case "llama3":
            return _llama3_frequencies(theta, scaling), 1.0
        case "yarn":
            return _yarn_frequencies(theta, R, base, scaling)
    return theta, 1.0


def _llama3_frequencies(theta, scaling):
    """Llama 3.1: wavelengths longer than ``original_max_position_embeddings / low_freq_factor``
    are stretched by ``factor``, those shorter than ``.. / high_freq_factor`` kept, and the
    ones between blended by how many times they fit in the original context."""
    factor, context = scaling["factor"], scaling["original_max_position_embeddings"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelength = 2 * math.pi / theta                                               # (R/2,)
    smooth = (context / wavelength - low) / (high - low)                           # 0 long .. 1 short
    blended = (1 - smooth) * theta / factor + smooth * theta
    return np.where(wavelength > context / low, theta / factor,
                    np.where(wavelength < context / high, theta, blended))


def _yarn_frequencies(theta, R, base, scaling):
    """YaRN (Peng et al. 2023): ``theta_i`` kept for the pairs that turn more than
    ``beta_fast`` times over the original context, divided by ``factor`` for those that turn
    fewer than ``beta_slow`` times, a linear ramp over the pairs between; and the attention
    factor ``0.1 ln(factor) + 1`` (DeepSeek: a ratio of two such with ``mscale``)."""
    factor, context = scaling["factor"], scaling["original_max_position_embeddings"]
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1
    # 1. the (fractional) pair index that turns `turns` times over the original context
    pair_turning = lambda turns: R * math.log(context / (turns * 2 * math.pi)) / (2 * math.log(base))
    low, high = pair_turning(beta_fast), pair_turning(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, R - 1)
    if low == high:
        high += 0.001  # a ramp of one step, not a division by zero
    # 2. a ramp over the pairs: 0 keeps theta_i (extrapolation), 1 divides it (interpolation)
    ramp = np.clip((np.arange(R // 2, dtype=np.float64) - low) / (high - low), 0, 1)   # (R/2,)
    extrapolation = 1 - ramp
    theta = theta / factor * (1 - extrapolation) + theta * extrapolation
    # 3. the factor on cos and sin
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    return theta, float(attention_factor)


def _yarn_mscale(factor, mscale=1.0):
    """YaRN's ``0.1 mscale ln(factor) + 1``; 1 when nothing is stretched."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def apply_rotary(x, positions, *, base=10000.0, fraction=1.0, scaling=None, interleaved=False):
    r"""Rotate each pair of features of ``x`` by an angle proportional to its position.

    .. math::
        \theta_i = \text{base}^{-2i/R}, \qquad
        \begin{pmatrix} y_i \\ y_{i + R/2} \end{pmatrix} = a
        \begin{pmatrix} \cos t\theta_i & -\sin t\theta_i \\ \sin t\theta_i & \cos t\theta_i \end{pmatrix}
        \begin{pmatrix} x_i \\ x_{i + R/2} \end{pmatrix}, \quad i < R/2

    R = H * fraction rounded down to an even number; features R.. H-1 pass unchanged (partial
    rotary, as GPT-NeoX). Then :math:`\langle y_t(q), y_s(k) \rangle` depends on t and s only
    through ``t - s``. ``a = 1`` and ``theta_i`` as written unless ``scaling`` stretches them
    (see the module's docstring); ``interleaved=True`` turns the pairs ``(x_{2i}, x_{2i+1})``.

    Su et al. 2021, "RoFormer", eq. (34); Peng et al. 2023, "YaRN"; Meta 2024, Llama 3.1.

    Args:
      x: ``(B..., T, N, H)`` queries or keys (after the projection, before the attention).
      positions: int, broadcastable to ``(B..., T)``: the position of each token (per batch
        row while decoding).
      base: the wavelength base, > 1 (Hugging Face's ``rope_theta``).
      fraction: the share of the H features that is rotated, in (0, 1]
        (``partial_rotary_factor``).
      scaling: None, or Hugging Face's rope parameters: ``{"rope_type": "default" | "linear" |
        "llama3" | "yarn", ...}`` with its keys, e.g. a config's ``rope_scaling``.
      interleaved: pairs of neighbours (GPT-J, Meta's LLaMA) instead of halves.

    Returns:
      the shape of ``x``, ``(B, T, N, H)`` for one batch axis, and its dtype (computed in
      float32, float64 for float64).

    Example: at position 0 nothing turns; at position 1 with H = 2 the pair turns by 1 radian,
    so (1, 0) becomes (cos 1, sin 1) = (0.5403, 0.8415). Linear scaling by 2 turns position 2
    as far as position 1 turned before.

    >>> x = np.array([[[1.0, 0.0]], [[1.0, 0.0]]])                    # T=2, N=1, H=2
    >>> apply_rotary(x, np.array([0, 1])).round(4)
    array([[[1.    , 0.    ]],
    <BLANKLINE>
           [[0.5403, 0.8415]]])
    >>> apply_rotary(x, np.array([0, 2]), scaling={"rope_type": "linear", "factor": 2.0}).round(4)
    array([[[1.    , 0.    ]],
    <BLANKLINE>
           [[0.5403, 0.8415]]])
    """
    x, positions = np.asarray(x), np.asarray(positions)
    R = check_rotary(x, positions, base, fraction, scaling, interleaved)
    compute = compute_dtype(x.dtype)
    # 1. one angle per (position, pair): t theta_i, theta_i = base^(-2i/R) as `scaling` stretches it
    theta, attention_factor = rotary_frequencies(R, base, scaling)                 # (R/2,), a
    angle = positions.astype(compute)[..., None, None] * np.asarray(theta, compute)  # (B..., T, 1, R/2)
    cos, sin = np.cos(angle) * attention_factor, np.sin(angle) * attention_factor
    # 2. turn each pair; the features past R pass through
    rotated, rest = x[..., :R].astype(compute), x[..., R:]
    if interleaved:  # pairs (x_2i, x_2i+1), turned and put back side by side
        x1, x2 = rotated[..., 0::2], rotated[..., 1::2]                             # (B..., T, N, R/2)
        turned = np.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rotated.shape)  # (.., R)
    else:  # pairs (x_i, x_i+R/2)
        x1, x2 = rotated[..., : R // 2], rotated[..., R // 2 :]                     # (B..., T, N, R/2)
        turned = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # (B..., T, N, R)
    return np.concatenate([turned.astype(x.dtype), rest], axis=-1)
