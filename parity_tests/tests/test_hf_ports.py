"""The worked ports of Hugging Face attention layers in docs/ports.md, executed: BERT, GPT-2,
T5, Mistral (rotary, grouped heads, a sliding window, left padding) and gpt-oss (sinks, YaRN),
each proven equal to its JAX port by check_port in float32 and bfloat16, outputs and the
gradients of the input and of every parameter. Each source is the attention layer of a
one-layer transformers model with random weights, called with the mask (and the rotary cos
and sin) that its model builds for it; the port takes our own options. Two planted bugs show
that the checks bite. Skipped without torch or transformers (the torch and hf extras)."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import attention_jax  # noqa: E402
from attention_np.mods import t5_position_bias  # noqa: E402
from parity_tests import check_port  # noqa: E402

B, T, E = 2, 7, 12  # T = 7 > the window of 3, so the window removes keys
W = 3               # Mistral's and gpt-oss's sliding window: a query sees itself and W - 1 keys before it
DTYPES = ("float32", "bfloat16")
SMALL = dict(num_hidden_layers=1, vocab_size=11, attn_implementation="eager")  # eager returns the weights too


def layer_inputs(model, layer, names, **model_inputs):
    """The arguments ``names`` that ``model`` passes to ``layer`` in a forward pass on
    ``model_inputs`` (the mask it builds, the rotary cos and sin), as NumPy: what the layer
    sees inside its model."""
    seen = {}
    hook = lambda module, args, kwargs: seen.update(inspect.signature(module.forward).bind(*args, **kwargs).arguments)
    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(**model_inputs)
    handle.remove()
    return {name: jax.tree.map(lambda t: t.numpy(), seen[name]) for name in names}


def real_tokens(*spans):
    """``(B, T)`` bool, True = a real token: one ``(start, stop)`` span of real tokens a row."""
    keep = np.zeros((len(spans), T), bool)
    for b, (start, stop) in enumerate(spans):
        keep[b, start:stop] = True
    return keep


def assert_every_leaf_tested(report, n_params, zero=()):
    """Passed, with the gradients of the input and of ``n_params`` parameter leaves in both
    dtypes, each above the floor except those in ``zero``: a key bias without rotary adds the
    same logit to every key of a query, which the softmax takes away, so its gradient is 0."""
    assert report.passed, str(report)
    assert {c.name for c in report.untested} == set(zero), str(report)
    names = {c.name for c in report.checks}
    assert "grad.inputs[0]" in names and sum(n.startswith("grad.params.") for n in names) == n_params, sorted(names)
    assert {c.dtype for c in report.checks} == set(DTYPES)


# --- the sources: a layer of a one-layer model, what its model gives it, and an input -------------------------

def bert_layer():
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=E, num_attention_heads=3, intermediate_size=16, initializer_range=0.3,
                                     **SMALL)
    model = transformers.BertModel(config).eval()
    source = model.encoder.layer[0].attention              # BertAttention: self-attention, output.dense, LayerNorm
    keep = real_tokens((0, 7), (0, 4))                    # right padding: the second sequence has 4 tokens
    given = layer_inputs(model, source, ["attention_mask"], inputs_embeds=torch.zeros(B, T, E),
                         attention_mask=torch.tensor(keep))
    return config, source, keep, given, np.random.default_rng(0).normal(size=(B, T, E))


def gpt2_layer():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=E, n_head=3, n_positions=16, initializer_range=0.3, **SMALL)
    model = transformers.GPT2Model(config).eval()
    source = model.h[0].attn                              # GPT2Attention: Conv1D c_attn and c_proj
    keep = real_tokens((0, 7), (0, 4))
    given = layer_inputs(model, source, ["attention_mask"], inputs_embeds=torch.zeros(B, T, E),
                         attention_mask=torch.tensor(keep))
    return config, source, keep, given, np.random.default_rng(1).normal(size=(B, T, E))


def t5_layer():
    torch.manual_seed(0)
    config = transformers.T5Config(d_model=E, d_kv=4, num_heads=3, d_ff=16, num_layers=1, vocab_size=11,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=8,
                                   attn_implementation="eager")
    model = transformers.T5EncoderModel(config).eval()
    source = model.encoder.block[0].layer[0].SelfAttention  # T5Attention with the relative position bias
    keep = real_tokens((0, 7), (0, 4))
    given = layer_inputs(model, source, ["mask"], inputs_embeds=torch.zeros(B, T, E), attention_mask=torch.tensor(keep))
    return config, source, keep, given, np.random.default_rng(2).normal(size=(B, T, E))


def decoder_layer(model_class, config, seed):
    """The attention of a one-layer decoder, with left padding: what its model gives it at the
    positions ``generate`` gives a left-padded batch (counted from each row's first token)."""
    torch.manual_seed(0)
    model = model_class(config).eval()
    source = model.layers[0].self_attn
    keep = real_tokens((2, 7), (0, 7))                    # left padding: the first sequence starts at 2
    positions = np.maximum(keep.cumsum(-1) - 1, 0)
    given = layer_inputs(model, source, ["position_embeddings", "attention_mask"], inputs_embeds=torch.zeros(B, T, E),
                         attention_mask=torch.tensor(keep), position_ids=torch.tensor(positions))
    return config, source, keep, positions, given, np.random.default_rng(seed).normal(size=(B, T, E))


def mistral_layer():
    config = transformers.MistralConfig(hidden_size=E, num_attention_heads=4, num_key_value_heads=2, head_dim=6,
                                        sliding_window=W, intermediate_size=16, initializer_range=0.3, **SMALL)
    return decoder_layer(transformers.MistralModel, config, seed=3)


def gpt_oss_layer():
    config = transformers.GptOssConfig(hidden_size=E, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                       sliding_window=W, layer_types=["sliding_attention"], intermediate_size=16,
                                       num_local_experts=2, num_experts_per_tok=1, initializer_range=0.3, **SMALL)
    return decoder_layer(transformers.GptOssModel, config, seed=4)


# --- the ports: the user's code of docs/ports.md between the markers ------------------------------------------

def test_bert_attention():
    """BertAttention (self-attention, output projection, residual LayerNorm), right padding
    -> multi_head_attention and a layer norm; both outputs (the layer's and the weights)."""
    config, source, keep, given, x = bert_layer()
    # --- the user's code, as in docs/ports.md (7 lines)
    def port(p, x, *, mask):
        out, weights = attention_jax.multi_head_attention(p, x, mask=mask)
        return jax.nn.standardize(out + x, epsilon=config.layer_norm_eps) * p["norm"]["scale"] + p["norm"]["bias"], weights

    to_port = lambda s: attention_jax.multi_head_params_from_torch(s, config.num_attention_heads) | {
        "norm": {"scale": s["output.LayerNorm.weight"], "bias": s["output.LayerNorm.bias"]}}
    report = check_port(source, port, (x,), kwargs=given, port_kwargs={"mask": keep[:, None, None, :]},
                        dtypes=("float32", "bfloat16"), params=to_port)
    # --- end of the user's code
    assert_every_leaf_tested(report, 10, zero=["grad.params.key.bias"])


def test_gpt2_attention():
    """GPT2Attention (Conv1D weights, causal), right padding -> multi_head_attention."""
    config, source, keep, given, x = gpt2_layer()
    # --- the user's code, as in docs/ports.md (3 lines)
    port = lambda p, x, *, mask: attention_jax.multi_head_attention(p, x, mask=mask, is_causal=True)
    report = check_port(source, port, (x,), kwargs=given, port_kwargs={"mask": keep[:, None, None, :]},
                        dtypes=("float32", "bfloat16"), params=lambda s: attention_jax.multi_head_params_from_torch(s, config.n_head))
    # --- end of the user's code
    assert_every_leaf_tested(report, 8, zero=["grad.params.key.bias"])


def t5_port(p, x, *, mask, scale=1.0):
    bias = t5_position_bias(p["table"], T, T, num_buckets=8, max_distance=8, bidirectional=True)  # (1, N, T, T)
    out, weights = attention_jax.multi_head_attention(p, x, bias=bias, mask=mask, scale=scale)
    return out, bias, weights


def test_t5_attention():
    """T5Attention (unscaled logits plus the bucketed relative position bias, which it also
    returns), right padding -> multi_head_attention with t5_position_bias as bias, scale=1.0."""
    config, source, keep, given, x = t5_layer()
    # --- the user's code, as in docs/ports.md (7 lines)
    def port(p, x, *, mask):
        bias = t5_position_bias(p["table"], T, T, num_buckets=8, max_distance=8, bidirectional=True)  # (1, N, T, T)
        out, weights = attention_jax.multi_head_attention(p, x, bias=bias, mask=mask, scale=1.0)
        return out, bias, weights

    to_port = lambda s: attention_jax.multi_head_params_from_torch(s, config.num_heads) | {"table": s["relative_attention_bias.weight"]}
    report = check_port(source, port, (x,), kwargs=given, port_kwargs={"mask": keep[:, None, None, :]},
                        dtypes=("float32", "bfloat16"), params=to_port)
    # --- end of the user's code
    assert_every_leaf_tested(report, 5)


def test_mistral_attention():
    """MistralAttention (rotary, 4 query heads on 2 key/value heads of 6 features, a sliding
    window of 3, left padding) -> apply_rotary and scaled_dot_product_attention. The fully
    padded query rows (Hugging Face: the mean of the values; here zeros) are left out."""
    config, source, keep, positions, given, x = mistral_layer()
    # --- the user's code, as in docs/ports.md (8 lines)
    def port(p, x, *, positions, mask):
        q, k, v = (jnp.einsum("BTE,ENH->BTNH", x, p[n]["kernel"]) for n in ("query", "key", "value"))
        q, k = (attention_jax.apply_rotary(y, positions, base=config.rope_parameters["rope_theta"]) for y in (q, k))
        heads, weights = attention_jax.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=True, local_window_size=(W - 1, 0))
        return jnp.einsum("BTNH,NHE->BTE", heads, p["out"]["kernel"]), weights

    report = check_port(source, port, (x,), kwargs=given, port_kwargs={"positions": positions, "mask": keep[:, None, None, :]},
                        output_mask=(keep[:, :, None], keep[:, None, :, None]), dtypes=("float32", "bfloat16"),
                        params=lambda s: attention_jax.multi_head_params_from_torch(s, config.num_attention_heads))
    # --- end of the user's code
    assert_every_leaf_tested(report, 4)
    assert [c.masked for c in report.checks if c.name.startswith("output")] == [24, 56] * 2  # 2 padded rows


def gpt_oss_port(rope, scaling):
    def port(p, x, *, positions, mask):
        q, k, v = (jnp.einsum("BTE,ENH->BTNH", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
        q, k = (attention_jax.apply_rotary(y, positions, base=rope["rope_theta"], scaling=scaling) for y in (q, k))
        heads, weights = attention_jax.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                                                    local_window_size=(W - 1, 0), sinks=p["sinks"])
        return jnp.einsum("BTNH,NHE->BTE", heads, p["out"]["kernel"]) + p["out"]["bias"], weights
    return port


def test_gpt_oss_attention():
    """GptOssAttention (attention sinks, YaRN rotary, biases, grouped heads, a sliding window
    of 3, left padding) -> apply_rotary with the config's rope parameters and
    scaled_dot_product_attention with the sinks."""
    config, source, keep, positions, given, x = gpt_oss_layer()
    # --- the user's code, as in docs/ports.md (10 lines)
    rope = config.rope_parameters  # {"rope_type": "yarn", "factor": 32.0, ..., "rope_theta": 150000.0}

    def port(p, x, *, positions, mask):
        q, k, v = (jnp.einsum("BTE,ENH->BTNH", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
        q, k = (attention_jax.apply_rotary(y, positions, base=rope["rope_theta"], scaling=rope) for y in (q, k))
        heads, weights = attention_jax.scaled_dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                                                    local_window_size=(W - 1, 0), sinks=p["sinks"])
        return jnp.einsum("BTNH,NHE->BTE", heads, p["out"]["kernel"]) + p["out"]["bias"], weights

    report = check_port(source, port, (x,), kwargs=given, port_kwargs={"positions": positions, "mask": keep[:, None, None, :]},
                        output_mask=(keep[:, :, None], keep[:, None, :, None]), dtypes=("float32", "bfloat16"),
                        params=lambda s: attention_jax.multi_head_params_from_torch(s, config.num_attention_heads))
    # --- end of the user's code
    assert_every_leaf_tested(report, 9)
    assert rope["rope_type"] == "yarn" and np.all(source.sinks.detach().numpy() != 0)


# --- planted bugs: the same ports, wrong -------------------------------------------------------------------------

def test_planted_bug_t5_port_with_the_default_scale_fails_after_the_position_bias():
    """T5 does not scale its logits; a port that keeps the default 1/sqrt(H) computes the
    position bias right (it passes) and everything after the logits wrong. This is the
    failing port of docs/ports.md, whose report there comes from running its code."""
    config, source, keep, given, x = t5_layer()
    report = check_port(source, lambda p, x, *, mask: t5_port(p, x, mask=mask, scale=None), (x,), kwargs=given,
                        port_kwargs={"mask": keep[:, None, None, :]},
                        params=lambda s: attention_jax.multi_head_params_from_torch(s, config.num_heads) | {
                            "table": s["relative_attention_bias.weight"]})
    assert not report.passed
    assert [c.name for c in report.checks if c.passed] == ["output[1]"]  # the position bias
    assert report.first_failure.name == "output[0]"
    assert {c.name for c in report.failures} >= {"output[2]", "grad.inputs[0]", "grad.params.table", "grad.params.query.kernel"}


def test_planted_bug_gpt_oss_port_without_yarn_fails():
    """The base alone, without the YaRN scaling (its stretched frequencies and its attention
    factor on cos and sin): the outputs differ at these 7 positions already."""
    config, source, keep, positions, given, x = gpt_oss_layer()
    report = check_port(source, gpt_oss_port(config.rope_parameters, scaling=None), (x,), kwargs=given,
                        port_kwargs={"positions": positions, "mask": keep[:, None, None, :]}, gradients=False,
                        output_mask=(keep[:, :, None], keep[:, None, :, None]),
                        params=lambda s: attention_jax.multi_head_params_from_torch(s, config.num_attention_heads))
    assert not report.passed and {c.name for c in report.failures} == {"output[0]", "output[1]"}
    right = check_port(source, gpt_oss_port(config.rope_parameters, scaling=config.rope_parameters), (x,),
                       kwargs=given, port_kwargs={"positions": positions, "mask": keep[:, None, None, :]}, gradients=False,
                       output_mask=(keep[:, :, None], keep[:, None, :, None]),
                       params=lambda s: attention_jax.multi_head_params_from_torch(s, config.num_attention_heads))
    assert right.passed, str(right)
