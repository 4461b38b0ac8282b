"""``MultiHeadAttention.from_torch``: the module built from a PyTorch attention layer's weights
(:func:`attention_jax.multi_head_params_from_torch` reads the layouts)."""

from flax import nnx

from attention_np.torch_weights import _source_scale

from ..torch_weights import multi_head_params_from_torch


def from_torch(cls, module, rngs, module_options):
    """``cls`` (the module class) sized from the weights of ``module`` and holding them; the
    checks and the options as :meth:`~.multi_head.MultiHeadAttention.from_torch` documents."""
    heads = {name: module_options.pop(name) for name in ("num_heads", "num_kv_heads") if name in module_options}
    params = multi_head_params_from_torch(module, **heads)
    E, E_k, E_v = (params[name]["kernel"].shape[0] for name in ("query", "key", "value"))
    (N, H), K, F = params["query"]["kernel"].shape[1:], params["key"]["kernel"].shape[1], params["out"]["kernel"].shape[2]
    if E_k != E_v:
        raise ValueError(f"from_torch needs kdim == vdim (Flax's module has one in_kv_features); got kdim={E_k}, "
                         f"vdim={E_v}: use attention_jax.multi_head_attention with multi_head_params_from_torch")
    with_bias = [name for name in ("query", "key", "value", "out") if "bias" in params[name]]
    if with_bias and len(with_bias) < 4:
        raise ValueError(f"from_torch needs biases on all four projections or on none (the module has one "
                         f"use_bias); got biases on {', '.join(with_bias)} only: use "
                         f"attention_jax.multi_head_attention with multi_head_params_from_torch")
    scale = _source_scale(module, H)
    module_options.setdefault("scale", None if scale == H ** -0.5 else scale)  # T5's 1.0, Gemma's scaling
    ours = cls(N, E, qkv_features=N * H, out_features=F, num_kv_heads=K, in_kv_features=E_k,
               use_bias=bool(with_bias), use_sinks="sinks" in params, param_dtype=params["query"]["kernel"].dtype,
               rngs=rngs if rngs is not None else nnx.Rngs(0), **module_options)
    state = nnx.state(ours, nnx.Param)
    nnx.replace_by_pure_dict(state, {name: params[name] for name in ("query", "key", "value", "out", "sinks")
                                     if name in params})
    nnx.update(ours, state)
    return ours
