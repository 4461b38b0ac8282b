"""Weights of PyTorch attention layers in this package's multi-head layout.

Every attention layer people port keeps the same four projections under different names:

==========================================================  ===============================================
layout (recognised by these keys, all present)              who uses it
==========================================================  ===============================================
``in_proj_weight``, ``out_proj.weight``                     ``torch.nn.MultiheadAttention``
``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``,    ``torch.nn.MultiheadAttention`` with ``kdim`` or
``out_proj.weight``                                         ``vdim`` other than ``embed_dim``
``q_proj.weight``, ``k_proj.weight``, ``v_proj.weight``,    Llama, Mistral, Qwen2, gpt-oss (and its
``o_proj.weight``                                           ``sinks``); grouped key/value heads
``q_proj.weight``, ..., ``out_proj.weight``                 BART, Whisper, CLIP
``self.query.weight``, ``self.key.weight``,                 BERT's ``BertAttention``
``self.value.weight``, ``output.dense.weight``
``q_attn.weight``, ``c_attn.weight``, ``c_proj.weight``     GPT-2's cross-attention (``Conv1D``)
``c_attn.weight``, ``c_proj.weight``                        GPT-2 (``Conv1D``, q, k, v packed in ``c_attn``)
``q.weight``, ``k.weight``, ``v.weight``, ``o.weight``      T5 (no biases; logits unscaled)
==========================================================  ===============================================

The keys are those of the attention layer's own ``state_dict()`` (no model prefix). In all
of them head ``n`` owns the output features ``n H .. (n + 1) H - 1`` of the query projection
(and of the key and value projections, with K heads) and reads the same input features of the
output projection, so splitting into heads is a reshape. ``nn.Linear`` computes ``x W^T + b``
with ``W (out, in)``; GPT-2's ``Conv1D`` computes ``x W + b`` with ``W (in, out)``; here a
projection is ``x W + b`` with ``W (E_in, N, H)``. No array math beyond transposes, slices and
reshapes: the map is a rearrangement, so it also maps gradients (``check_port`` relies on it).
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

_UNSUPPORTED = ("bias_k", "bias_v")  # add_bias_kv=True: an extra learned key/value position
_HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_head", "n_heads")  # torch, HF configs, GPT-2, T5
_KV_HEAD_COUNTS = ("num_key_value_heads", "num_kv_heads")


def _array(x):
    """Any array-like as NumPy, a PyTorch tensor included (detached), without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy has no bfloat16 of its own
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


# --- one reader a layout: each pops its keys and returns the four projections as (kernel (in, out), bias or None)

def _linear(state, name):
    """``nn.Linear`` ``name`` computes ``x W^T + b`` with ``W (out, in)``: the kernel is ``W^T``."""
    return state.pop(f"{name}.weight").T, state.pop(f"{name}.bias", None)


def _conv1d(state, name):
    """GPT-2's ``Conv1D`` ``name`` computes ``x W + b`` with ``W (in, out)`` already: no transpose."""
    return state.pop(f"{name}.weight"), state.pop(f"{name}.bias", None)


def _split(layer, parts):
    """A packed projection's output features cut into ``parts`` equal projections (q | k | v)."""
    kernel, bias = layer
    biases = [None] * parts if bias is None else np.split(bias, parts)
    return list(zip(np.split(kernel, parts, axis=1), biases))


def _read_torch_multihead(state):
    if "in_proj_weight" in state:  # packed: rows 0:E query, E:2E key, 2E:3E value
        query, key, value = _split((state.pop("in_proj_weight").T, state.pop("in_proj_bias", None)), 3)
    else:  # kdim/vdim: three weights of different input widths, but still one packed bias
        bias = state.pop("in_proj_bias", None)
        biases = [None] * 3 if bias is None else np.split(bias, 3)
        query, key, value = ((state.pop(f"{x}_proj_weight").T, b) for x, b in zip("qkv", biases))
    return {"query": query, "key": key, "value": value, "out": _linear(state, "out_proj")}


def _read_q_proj(state):
    out = "o_proj" if "o_proj.weight" in state else "out_proj"
    layers = {"query": _linear(state, "q_proj"), "key": _linear(state, "k_proj"),
              "value": _linear(state, "v_proj"), "out": _linear(state, out)}
    if "sinks" in state:  # gpt-oss: one logit per query head that joins the softmax
        layers["sinks"] = state.pop("sinks")
    return layers


def _read_bert(state):
    return {"query": _linear(state, "self.query"), "key": _linear(state, "self.key"),
            "value": _linear(state, "self.value"), "out": _linear(state, "output.dense")}


def _read_gpt2(state):
    if "q_attn.weight" in state:  # cross-attention: queries apart, keys and values packed
        query = _conv1d(state, "q_attn")
        key, value = _split(_conv1d(state, "c_attn"), 2)
    else:
        query, key, value = _split(_conv1d(state, "c_attn"), 3)
    return {"query": query, "key": key, "value": value, "out": _conv1d(state, "c_proj")}


def _read_t5(state):
    return {name: _linear(state, x) for name, x in zip(("query", "key", "value", "out"), "qkvo")}


class _Layout(NamedTuple):
    name: str
    keys: tuple           # all present: this layout
    read: Callable
    left_out: tuple = ()  # keys that are not attention weights: accepted, and not in the params
    scale: float | None = None  # the logits' factor when it is not 1/sqrt(H)


_GPT2_MASKS = ("bias", "masked_bias")  # the causal-mask buffers older transformers saved with the weights
_LAYOUTS = (  # the first whose keys are all present is the one
    _Layout("torch.nn.MultiheadAttention", ("in_proj_weight", "out_proj.weight"), _read_torch_multihead),
    _Layout("torch.nn.MultiheadAttention (kdim/vdim)",
            ("q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight"), _read_torch_multihead),
    _Layout("q_proj/k_proj/v_proj/o_proj (Llama, Mistral, Qwen2, gpt-oss)",
            ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"), _read_q_proj),
    _Layout("q_proj/k_proj/v_proj/out_proj (BART, Whisper, CLIP)",
            ("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"), _read_q_proj),
    _Layout("query/key/value + output.dense (BERT)",
            ("self.query.weight", "self.key.weight", "self.value.weight", "output.dense.weight"), _read_bert,
            left_out=("output.LayerNorm.weight", "output.LayerNorm.bias")),  # after the residual: not attention
    _Layout("q_attn + c_attn/c_proj Conv1D (GPT-2 cross-attention)", ("q_attn.weight", "c_attn.weight", "c_proj.weight"),
            _read_gpt2, left_out=_GPT2_MASKS),
    _Layout("c_attn/c_proj Conv1D (GPT-2)", ("c_attn.weight", "c_proj.weight"), _read_gpt2, left_out=_GPT2_MASKS),
    _Layout("q/k/v/o (T5)", ("q.weight", "k.weight", "v.weight", "o.weight"), _read_t5,
            left_out=("relative_attention_bias.weight",), scale=1.0),  # a position bias: pass it as bias=
)


def _layout(state):
    """The layout whose keys ``state`` has, or a ValueError listing the keys seen and the layouts known."""
    for layout in _LAYOUTS:
        if all(key in state for key in layout.keys):
            return layout
    known = "; ".join(f"{layout.name}: {', '.join(layout.keys)}" for layout in _LAYOUTS)
    raise ValueError(f"module_or_state_dict matches no attention layout known here; got keys {sorted(state)}. "
                     f"Known layouts (the keys of the attention layer's own state_dict()): {known}")


# --- the sizes a module carries

def _owners(module):
    """Where a layer keeps its sizes: itself, its ``config``, and BERT's inner ``self`` layer and its config."""
    inner = getattr(module, "self", None)
    owners = (module, getattr(module, "config", None), inner, getattr(inner, "config", None))
    return [owner for owner in owners if owner is not None]


def _size(module, names):
    """The first int attribute named in ``names`` on the module or its config, and its name."""
    for owner in _owners(module):
        for name in names:
            value = getattr(owner, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value, name
    return None, None


def _is_module(x):
    return hasattr(x, "state_dict") and callable(x.state_dict)


def _source_scale(module_or_state_dict, head_dim):
    """The factor the source layer puts on its logits: T5's 1.0, a Hugging Face module's own
    ``scaling`` (Gemma's ``query_pre_attn_scalar``), GPT-2's options, else ``1/sqrt(H)``."""
    module = module_or_state_dict
    state = module.state_dict() if _is_module(module) else module
    layout = _layout(state)
    if layout.scale is not None:
        return layout.scale
    if not _is_module(module):
        return head_dim ** -0.5
    for owner in _owners(module):
        scaling = getattr(owner, "scaling", None)
        if isinstance(scaling, (int, float)) and not isinstance(scaling, bool):
            return float(scaling)
    scale = head_dim ** -0.5 if getattr(module, "scale_attn_weights", True) else 1.0  # GPT-2's options
    if getattr(module, "scale_attn_by_inverse_layer_idx", False):
        scale /= module.layer_idx + 1
    return scale


# --- the map

def _heads(layers, N, num_kv_heads, kv_source):
    """The four ``(kernel (in, out), bias)`` projections split into heads: H from the query's width."""
    q_kernel, k_kernel, v_kernel, o_kernel = (layers[name][0] for name in ("query", "key", "value", "out"))
    o_bias = layers["out"][1]
    width, kv_width = q_kernel.shape[1], k_kernel.shape[1]
    if N <= 0 or width % N:
        raise ValueError(f"num_heads must divide the query projection's {width} output features (N H); got {N}")
    H = width // N
    if v_kernel.shape[1] != kv_width or kv_width % H:
        raise ValueError(f"the key and value projections must have K heads of H={H} (query width {width} / num_heads "
                         f"{N}); got {kv_width} and {v_kernel.shape[1]} output features")
    K = kv_width // H
    if num_kv_heads is not None and num_kv_heads != K:
        raise ValueError(f"num_kv_heads{kv_source} must be {K}, the key projection's {kv_width} output features "
                         f"/ H={H}; got {num_kv_heads}")
    if K == 0 or N % K:
        raise ValueError(f"num_heads must be a multiple of the K={K} key/value heads; got {N}")
    if o_kernel.shape[0] != width:
        raise ValueError(f"the output projection must read the N H = {width} features of the heads; "
                         f"it reads {o_kernel.shape[0]}")
    params = {}
    for name, (kernel, bias), heads in (("query", layers["query"], N), ("key", layers["key"], K),
                                        ("value", layers["value"], K)):
        params[name] = {"kernel": kernel.reshape(kernel.shape[0], heads, H)}   # (E_in, N|K, H)
        if bias is not None:
            params[name]["bias"] = bias.reshape(heads, H)                      # (N|K, H)
    params["out"] = {"kernel": o_kernel.reshape(N, H, o_kernel.shape[1])}      # (N, H, E)
    if o_bias is not None:
        params["out"]["bias"] = o_bias                                         # (E,)
    if "sinks" in layers:
        if layers["sinks"].shape != (N,):
            raise ValueError(f"sinks must have shape (N,) with N={N}; got {layers['sinks'].shape}")
        params["sinks"] = layers["sinks"]                                      # (N,)
    return params


def multi_head_params_from_torch(module_or_state_dict, num_heads=None, *, num_kv_heads=None):
    r"""The params dict of :func:`multi_head_attention` from a PyTorch attention layer.

    .. math::
        W^Q = W_q^\top\ \text{as}\ (E, N, H), \quad b^Q = b_q\ \text{as}\ (N, H), \quad
        W^K = W_k^\top\ \text{as}\ (E_{kv}, K, H), \quad W^O = W_o^\top\ \text{as}\ (N, H, E)

    for ``nn.Linear`` weights ``W (out, in)`` (GPT-2's ``Conv1D`` keeps ``W (in, out)``: no
    transpose), with ``H = q_width / N`` and ``K = k_width / H``, so ``num_kv_heads`` is read
    from the widths and the query width ``N H`` may differ from E (Llama's ``head_dim``, T5's
    ``d_kv``). The layouts recognised, by their keys (see this module's table):
    ``torch.nn.MultiheadAttention`` (``in_proj_weight`` packed, or ``q_proj_weight``... with
    ``kdim``/``vdim``; ``add_bias_kv`` is refused); ``q_proj/k_proj/v_proj/o_proj`` (Llama,
    Mistral, Qwen2, gpt-oss, with grouped key/value heads and any biases; gpt-oss's
    ``sinks (N,)`` become ``params["sinks"]``) or ``.../out_proj`` (BART, Whisper, CLIP);
    BERT's ``self.query/key/value`` and ``output.dense``; GPT-2's ``Conv1D`` ``c_attn``
    (q, k, v side by side in its ``3E`` outputs) and ``c_proj``; T5's ``q/k/v/o``.

    What is not part of these params is left out, and must be done by the caller: BERT's
    ``output.LayerNorm`` (it normalises ``x + attention(x)``, after this layer), T5's
    ``relative_attention_bias`` (a position bias: pass it to ``multi_head_attention`` as
    ``bias=``), GPT-2's causal-mask buffers. With ``check_port``, name these parameters in
    ``ignore_params``. The logits' scale is not a weight: T5 attends unscaled, so call
    ``multi_head_attention(params, ..., scale=1.0)``; the others use the default ``1/sqrt(H)``
    (unless a model says otherwise: a Hugging Face module's ``scaling``). Any other key
    (Qwen3's ``q_norm``, say) is a ``ValueError``, not silently dropped.

    Args:
      module_or_state_dict: the attention module, its ``state_dict()``, or a dict of
        array-likes with the same names (importing torch is never required for a dict of
        arrays). The keys are the layer's own, without a model's prefix.
      num_heads: N; read from a module (``num_heads``, ``num_attention_heads``, ``n_head`` or
        ``n_heads``, on it or its ``config``), required with a state dict.
      num_kv_heads: K, optional (the widths say it); when given (or read from a module's
        ``num_key_value_heads``) it must agree with the widths.

    Returns:
      ``{"query": {"kernel": (E, N, H), "bias": (N, H)}, "key": {"kernel": (E_kv, K, H), ...},
      "value": {"kernel": (E_v, K, H), ...}, "out": {"kernel": (N, H, E), "bias": (E,)}}``,
      each ``"bias"`` only where the layer has one, and ``"sinks": (N,)`` where it has them.

    Example: E = 4, N = 2 heads of H = 2; query feature ``n H + h`` becomes ``[n, h]``.

    >>> state = {"in_proj_weight": np.arange(48.0).reshape(12, 4), "out_proj.weight": np.eye(4)}
    >>> params = multi_head_params_from_torch(state, num_heads=2)
    >>> params["query"]["kernel"].shape, params["query"]["kernel"][:, 1, 0]   # W^Q[:, head 1, 0] = row 2
    ((4, 2, 2), array([ 8.,  9., 10., 11.]))
    >>> sorted(params["out"])                                                  # bias=False: no bias
    ['kernel']

    Grouped key/value heads, Llama's names: N = 4 query heads of H = 3 features (a query width
    of 12, not E = 5) share K = 2 key/value heads, which the key projection's 6 outputs say.

    >>> state = {"q_proj.weight": np.zeros((12, 5)), "k_proj.weight": np.zeros((6, 5)),
    ...          "v_proj.weight": np.zeros((6, 5)), "o_proj.weight": np.zeros((5, 12))}
    >>> params = multi_head_params_from_torch(state, num_heads=4)
    >>> [params[name]["kernel"].shape for name in ("query", "key", "value", "out")]
    [(5, 4, 3), (5, 2, 3), (5, 2, 3), (4, 3, 5)]
    """
    state, kv_source = module_or_state_dict, ""
    if _is_module(state):
        if num_heads is None:
            num_heads, _ = _size(state, _HEAD_COUNTS)
            if num_heads is None:
                raise ValueError(f"num_heads is required: the module has none of {', '.join(_HEAD_COUNTS)} "
                                 f"(nor its config)")
        if num_kv_heads is None:
            num_kv_heads, name = _size(state, _KV_HEAD_COUNTS)
            kv_source = f" (the module's {name})" if name else ""
        state = state.state_dict()
    if num_heads is None:
        raise ValueError("num_heads is required with a state dict (a module carries its own)")
    state = {name: _array(value) for name, value in state.items() if value is not None}
    present = [name for name in _UNSUPPORTED if name in state]
    if present:
        raise ValueError(f"module_or_state_dict has {present} (add_bias_kv=True), which multi_head_attention has no place for")
    layout = _layout(state)
    # 1. the layout's four projections as x W + b, W (in, out); what is left must be known to be no attention weight
    layers = layout.read(state)                   # pops the keys it reads
    unknown = sorted(set(state) - set(layout.left_out))
    if unknown:
        raise ValueError(f"module_or_state_dict has {unknown}, which the {layout.name} layout has no place for in "
                         f"multi_head_attention's params")
    # 2. the output features of q, k, v and the input features of out split into heads
    return _heads(layers, num_heads, num_kv_heads, kv_source)
