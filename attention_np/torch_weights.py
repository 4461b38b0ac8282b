"""Weights of ``torch.nn.MultiheadAttention`` in this package's multi-head layout.

PyTorch packs the three input projections into one ``in_proj_weight (3E, E)`` when keys and
values have the model width, and keeps ``q_proj_weight (E, E)``, ``k_proj_weight (E, kdim)``,
``v_proj_weight (E, vdim)`` apart when they do not; a projection computes ``x W^T + b``, and
head ``n`` owns features ``n H .. (n + 1) H - 1``. Here a projection is ``x W + b`` with
``W (E_in, N, H)``, so each PyTorch weight is transposed and split into heads. No array math
beyond that: the map is a rearrangement, so it also maps gradients (``check_port`` relies on it).
"""

import numpy as np

_UNSUPPORTED = ("bias_k", "bias_v")  # add_bias_kv=True: an extra learned key/value position


def _array(x):
    """Any array-like as NumPy, a PyTorch tensor included (detached), without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # NumPy has no bfloat16 of its own
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def multi_head_params_from_torch(module_or_state_dict, num_heads=None):
    r"""The params dict of :func:`multi_head_attention` from a ``torch.nn.MultiheadAttention``.

    .. math::
        W^Q = \mathrm{in\_proj\_weight}[0:E]^\top \ \text{reshaped to}\ (E, N, H), \quad
        b^Q = \mathrm{in\_proj\_bias}[0:E]\ \text{as}\ (N, H), \quad
        W^O = \mathrm{out\_proj.weight}^\top\ \text{as}\ (N, H, E)

    (rows ``E:2E`` key, ``2E:3E`` value), or ``q_proj_weight``, ``k_proj_weight``,
    ``v_proj_weight`` when ``kdim``/``vdim`` differ from ``embed_dim``. With ``bias=False`` the
    layers have no ``"bias"`` (``multi_head_attention`` then adds none). The module's own
    scale ``1/sqrt(H)`` is the function's default.

    Args:
      module_or_state_dict: the module, its ``state_dict()``, or a dict of array-likes with
        the same names (importing torch is never required for a dict of arrays).
      num_heads: N; read from the module, required with a state dict.

    Returns:
      ``{"query": {"kernel": (E, N, H), "bias": (N, H)}, "key": {"kernel": (E_kv, N, H), ...},
      "value": {"kernel": (E_v, N, H), ...}, "out": {"kernel": (N, H, E), "bias": (E,)}}``.

    Example: E = 4, N = 2 heads of H = 2; query feature ``n H + h`` becomes ``[n, h]``.

    >>> state = {"in_proj_weight": np.arange(48.0).reshape(12, 4), "out_proj.weight": np.eye(4)}
    >>> params = multi_head_params_from_torch(state, num_heads=2)
    >>> params["query"]["kernel"].shape, params["query"]["kernel"][:, 1, 0]   # W^Q[:, head 1, 0] = row 2
    ((4, 2, 2), array([ 8.,  9., 10., 11.]))
    >>> sorted(params["out"])                                                  # bias=False: no bias
    ['kernel']
    """
    state = module_or_state_dict
    if hasattr(state, "state_dict") and callable(state.state_dict):
        if num_heads is None:
            num_heads = state.num_heads
        state = state.state_dict()
    if num_heads is None:
        raise ValueError("num_heads is required with a state dict (a module carries its own)")
    state = {name: _array(value) for name, value in state.items() if value is not None}
    present = [name for name in _UNSUPPORTED if name in state]
    if present:
        raise ValueError(f"module_or_state_dict has {present} (add_bias_kv=True), which multi_head_attention has no place for")
    if "out_proj.weight" not in state:
        raise ValueError(f"module_or_state_dict has no 'out_proj.weight'; expected a torch.nn.MultiheadAttention's, got keys {sorted(state)}")
    E = state["out_proj.weight"].shape[0]
    if E % num_heads:
        raise ValueError(f"num_heads must divide embed_dim E={E}; got {num_heads}")
    N, H = num_heads, E // num_heads
    # 1. the three input projections, (E, E_in) each in PyTorch's (out, in) layout
    if "in_proj_weight" in state:
        weights = np.split(state["in_proj_weight"], 3, axis=0)                    # 3 x (E, E)
    elif all(f"{x}_proj_weight" in state for x in "qkv"):
        weights = [state[f"{x}_proj_weight"] for x in "qkv"]                      # (E, E), (E, E_kv), (E, E_v)
    else:
        raise ValueError("module_or_state_dict has neither 'in_proj_weight' nor 'q_proj_weight', 'k_proj_weight' and 'v_proj_weight'")
    biases = np.split(state["in_proj_bias"], 3) if "in_proj_bias" in state else [None] * 3  # 3 x (E,)
    params = {}
    for name, weight, bias in zip(("query", "key", "value"), weights, biases):
        # 2. x W^T + b  ->  x W + b, with the output features split into N heads of H
        params[name] = {"kernel": weight.T.reshape(weight.shape[1], N, H)}       # (E_in, N, H)
        if bias is not None:
            params[name]["bias"] = bias.reshape(N, H)                             # (N, H)
    # 3. the output projection reads the heads' features n H + h
    params["out"] = {"kernel": state["out_proj.weight"].T.reshape(N, H, E)}       # (N, H, E)
    if "out_proj.bias" in state:
        params["out"]["bias"] = state["out_proj.bias"]                            # (E,)
    return params
