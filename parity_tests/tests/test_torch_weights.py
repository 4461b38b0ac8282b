"""multi_head_params_from_torch (both halves) and MultiHeadAttention.from_torch on the attention
layers people port: Llama/Mistral/Qwen2/gpt-oss ``q_proj..o_proj`` with grouped key/value heads
and sinks, BART's ``out_proj``, BERT's ``BertAttention``, GPT-2's ``Conv1D`` (self and cross),
T5's ``q/k/v/o``. Each layer is written out here in PyTorch with the parameter names and the
formula of its Hugging Face code (transformers itself is never needed), with random weights,
and ``multi_head_attention`` on the converted weights must give its outputs: float64 at
1e-12, float32 at 1e-5 against the float64 source (docs/design.md section 5). The errors, and
state dicts of NumPy arrays, need no torch."""

import copy
import types
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest

import attention_jax
import attention_np
from attention_jax.nnx import MultiHeadAttention
from parity_tests import check_port

from .conftest import HALVES, highest

B, T, S = 2, 5, 7         # T = S for self-attention layers; cross-attention reads S = 7 keys
TOL64 = dict(rtol=1e-12, atol=1e-12)
TOL32 = dict(rtol=1e-5, atol=1e-5)


def _layers(torch):
    """The layers, after transformers' code (``eager_attention_forward``, ``repeat_kv``,
    GPT-2's ``Conv1D``), each with its parameter names; every ``forward(x, context=None, *,
    mask=None, bias=None)`` with ``mask`` bool ``(B, N, T, S)``-broadcastable, True = attend."""
    nn = torch.nn

    def repeat_kv(x, groups):  # (B, K, S, H) -> (B, K groups, S, H): head n reads key/value head n // groups
        b, k, s, h = x.shape
        return x[:, :, None].expand(b, k, groups, s, h).reshape(b, k * groups, s, h)

    class Attention(nn.Module):
        """softmax(q k^T scale + bias) v per head, then the output projection."""
        scale_by = "sqrt"  # "sqrt": 1/sqrt(H); "none": T5

        def forward(self, x, context=None, *, mask=None, bias=None):
            context = x if context is None else context
            q, k, v = self.project(x, context)                                    # (B, T, N H), (B, S, K H) x 2
            q = q.view(*q.shape[:2], -1, self.H).transpose(1, 2)                  # (B, N, T, H)
            k, v = (y.view(*y.shape[:2], -1, self.H).transpose(1, 2) for y in (k, v))  # (B, K, S, H)
            groups = q.shape[1] // k.shape[1]
            k, v = repeat_kv(k, groups), repeat_kv(v, groups)                     # (B, N, S, H)
            logits = q @ k.transpose(-1, -2)                                      # (B, N, T, S)
            if self.scale_by == "sqrt":
                logits = logits * self.H ** -0.5
            if bias is not None:
                logits = logits + bias
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            sinks = getattr(self, "sinks", None)
            if sinks is None:
                weights = logits.softmax(-1)
            else:  # gpt-oss: the sink as one more column of the softmax, dropped after it
                sink = sinks.reshape(1, -1, 1, 1).expand(*logits.shape[:-1], 1)
                combined = torch.cat([logits, sink], dim=-1)
                combined = combined - combined.max(dim=-1, keepdim=True).values
                weights = combined.softmax(-1)[..., :-1]
            heads = (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)  # (B, T, N H)
            return self.mix(heads)

    class LlamaAttention(Attention):
        """Llama, Mistral (no biases), Qwen2 (q, k, v biases), gpt-oss (all biases, sinks);
        ``out="out_proj"``: BART, Whisper, CLIP."""

        def __init__(self, E, N, K, H, *, qkv_bias=False, o_bias=False, sinks=False, out="o_proj"):
            super().__init__()
            self.config = types.SimpleNamespace(num_attention_heads=N, num_key_value_heads=K, head_dim=H)
            self.H, self.scaling, self.out = H, H ** -0.5, out
            self.q_proj = nn.Linear(E, N * H, bias=qkv_bias)
            self.k_proj = nn.Linear(E, K * H, bias=qkv_bias)
            self.v_proj = nn.Linear(E, K * H, bias=qkv_bias)
            setattr(self, out, nn.Linear(N * H, E, bias=o_bias))
            if sinks:
                self.sinks = nn.Parameter(torch.randn(N))

        def project(self, x, context):
            return self.q_proj(x), self.k_proj(context), self.v_proj(context)

        def mix(self, heads):
            return getattr(self, self.out)(heads)

    class BertSelfAttention(nn.Module):
        def __init__(self, E, N):
            super().__init__()
            self.num_attention_heads, self.attention_head_size = N, E // N
            self.query, self.key, self.value = nn.Linear(E, E), nn.Linear(E, E), nn.Linear(E, E)

    class BertSelfOutput(nn.Module):
        def __init__(self, E):
            super().__init__()
            self.dense, self.LayerNorm = nn.Linear(E, E), nn.LayerNorm(E)

    class BertAttention(Attention):
        """BERT's attention up to ``output.dense``: the LayerNorm of ``x + dense(...)`` follows
        the attention and is not part of it."""

        def __init__(self, E, N):
            super().__init__()
            self.self, self.output = BertSelfAttention(E, N), BertSelfOutput(E)
            self.H = E // N

        def project(self, x, context):
            return self.self.query(x), self.self.key(context), self.self.value(context)

        def mix(self, heads):
            return self.output.dense(heads)

    class Conv1D(nn.Module):
        """GPT-2's: ``x W + b`` with ``W (in, out)``, no transpose."""

        def __init__(self, nf, nx):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.randn(nx, nf)), nn.Parameter(torch.randn(nf))

        def forward(self, x):
            return x @ self.weight + self.bias

    class GPT2Attention(Attention):
        def __init__(self, E, N, *, is_cross_attention=False):
            super().__init__()
            self.num_heads, self.embed_dim, self.split_size, self.H = N, E, E, E // N
            self.is_cross_attention = is_cross_attention
            if is_cross_attention:
                self.c_attn, self.q_attn = Conv1D(2 * E, E), Conv1D(E, E)
            else:
                self.c_attn = Conv1D(3 * E, E)
            self.c_proj = Conv1D(E, E)
            self.register_buffer("bias", torch.ones(1, 1, 8, 8, dtype=torch.bool).tril())  # as older versions saved it

        def project(self, x, context):
            if self.is_cross_attention:
                return (self.q_attn(x), *self.c_attn(context).split(self.split_size, dim=2))
            return self.c_attn(x).split(self.split_size, dim=2)

        def mix(self, heads):
            return self.c_proj(heads)

    class T5Attention(Attention):
        """No biases, no scaling (T5 folds it into the initialisation), an inner width N d_kv."""
        scale_by = "none"

        def __init__(self, E, N, d_kv):
            super().__init__()
            self.n_heads, self.d_model, self.key_value_proj_dim, self.H = N, E, d_kv, d_kv
            self.q, self.k, self.v = (nn.Linear(E, N * d_kv, bias=False) for _ in range(3))
            self.o = nn.Linear(N * d_kv, E, bias=False)
            self.relative_attention_bias = nn.Embedding(32, N)  # turned into the position bias outside these params

        def project(self, x, context):
            return self.q(x), self.k(context), self.v(context)

        def mix(self, heads):
            return self.o(heads)

    return types.SimpleNamespace(LlamaAttention=LlamaAttention, BertAttention=BertAttention,
                                 GPT2Attention=GPT2Attention, T5Attention=T5Attention)


class Case(NamedTuple):
    make: Callable            # the layer, from _layers' classes
    E: int                    # its width
    N: int                    # its query heads
    cross: bool = False       # cross-attention (keys from a context of S positions) or self
    scale: float | None = None  # the logits' factor it uses; None: 1/sqrt(H)
    module: bool = True       # MultiHeadAttention.from_torch can hold it


CASES = {
    "llama_gqa": Case(make=lambda L: L.LlamaAttention(7, 6, 2, 5), E=7, N=6),          # N H = 30 != E = 7
    "mistral_mqa": Case(make=lambda L: L.LlamaAttention(7, 6, 1, 5), E=7, N=6),        # one key/value head
    "qwen2_qkv_bias": Case(make=lambda L: L.LlamaAttention(7, 6, 3, 5, qkv_bias=True), E=7, N=6, module=False),
    "gpt_oss_sinks": Case(make=lambda L: L.LlamaAttention(7, 6, 2, 5, qkv_bias=True, o_bias=True, sinks=True),
                          E=7, N=6),
    "bart_out_proj": Case(make=lambda L: L.LlamaAttention(7, 3, 3, 5, qkv_bias=True, o_bias=True, out="out_proj"),
                          E=7, N=3, cross=True),
    "bert": Case(make=lambda L: L.BertAttention(15, 3), E=15, N=3),
    "gpt2": Case(make=lambda L: L.GPT2Attention(15, 3), E=15, N=3),
    "gpt2_cross": Case(make=lambda L: L.GPT2Attention(15, 3, is_cross_attention=True), E=15, N=3, cross=True),
    "t5": Case(make=lambda L: L.T5Attention(7, 3, 5), E=7, N=3, cross=True, scale=1.0, module=False),
}


def _case(name, seed=0):
    """The layer of ``name`` in float64 with random weights, its inputs (a padding and causal
    mask; T5's relative position bias as ``bias``) and its float64 output."""
    torch = pytest.importorskip("torch")
    case = CASES[name]
    torch.manual_seed(seed)
    layer = case.make(_layers(torch)).double()
    with torch.no_grad():
        for p in layer.parameters():  # nonzero biases, sinks and LayerNorm too: a dropped one shows
            p.normal_(std=0.5)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, case.E))
    context = rng.normal(size=(B, S, case.E)) if case.cross else None
    s = S if case.cross else T
    mask = np.ones((B, 1, T, s), bool)
    mask[1, ..., s - 2:] = False                             # the second row's last two keys are padding
    mask &= np.tril(np.ones((T, s), bool))                   # and no query sees a key after it
    bias = rng.normal(size=(1, case.N, T, s)) if name == "t5" else None
    t = (lambda a: None if a is None else torch.from_numpy(a))
    with torch.no_grad():
        expected = layer(t(x), t(context), mask=t(mask), bias=t(bias)).numpy()
    return layer, dict(x=x, context=context, mask=mask, bias=bias, scale=case.scale), expected


def _ours(function, params, x, context, mask, bias, scale, dtype):
    context = None if context is None else context.astype(dtype)
    bias = None if bias is None else bias.astype(dtype)
    out, _ = function(params, x.astype(dtype), context, mask=mask, bias=bias, scale=scale)
    return np.asarray(out)


@pytest.mark.parametrize("half", HALVES)
@pytest.mark.parametrize("name", CASES)
def test_converted_weights_give_the_layers_outputs_float64(name, half):
    layer, inputs, expected = _case(name)
    lib = HALVES[half]
    state = {k: v.numpy() for k, v in layer.state_dict().items()}
    for params in (lib.multi_head_params_from_torch(layer), lib.multi_head_params_from_torch(state, CASES[name].N)):
        assert params["query"]["kernel"].dtype == np.float64
        np.testing.assert_allclose(_ours(lib.multi_head_attention, params, **inputs, dtype=np.float64), expected,
                                   **TOL64)


@pytest.mark.parametrize("name", CASES)
def test_converted_weights_give_the_layers_outputs_jax_float32(name):
    layer, inputs, expected = _case(name)
    params = attention_jax.multi_head_params_from_torch(copy.deepcopy(layer).float())
    assert params["query"]["kernel"].dtype == np.float32
    with highest():
        actual = _ours(attention_jax.multi_head_attention, params, **inputs, dtype=np.float32)
    np.testing.assert_allclose(actual, expected, **TOL32)


def test_the_layouts_have_the_sizes_of_their_layers():
    """Grouped heads and a query width other than E: K and H come from the widths."""
    layer, _, _ = _case("llama_gqa")
    params = attention_np.multi_head_params_from_torch(layer)
    assert {k: v["kernel"].shape for k, v in params.items() if k != "sinks"} == {
        "query": (7, 6, 5), "key": (7, 2, 5), "value": (7, 2, 5), "out": (6, 5, 7)}
    assert [sorted(params[k]) for k in ("query", "out")] == [["kernel"], ["kernel"]]   # no biases
    params = attention_np.multi_head_params_from_torch(_case("gpt_oss_sinks")[0])
    assert params["sinks"].shape == (6,) and params["key"]["bias"].shape == (2, 5)
    params = attention_np.multi_head_params_from_torch(_case("t5")[0])
    assert sorted(params) == ["key", "out", "query", "value"]                          # no relative_attention_bias
    params = attention_np.multi_head_params_from_torch(_case("bert")[0])
    assert sorted(params) == ["key", "out", "query", "value"]                          # no LayerNorm


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.module])
def test_from_torch_gives_the_layers_outputs(name):
    layer, inputs, expected = _case(name)
    ours = MultiHeadAttention.from_torch(copy.deepcopy(layer).float(), decode=False)
    params = attention_np.multi_head_params_from_torch(layer)
    N, H = params["query"]["kernel"].shape[1:]
    assert (ours.num_heads, ours.num_kv_heads, ours.head_dim) == (N, params["key"]["kernel"].shape[1], H)
    assert ours.use_bias == ("bias" in params["query"]) and (ours.sinks is not None) == ("sinks" in params)
    x, context = inputs["x"].astype(np.float32), inputs["context"]
    with highest():
        actual = ours(x, None if context is None else context.astype(np.float32), mask=inputs["mask"])
    np.testing.assert_allclose(np.asarray(actual), expected, **TOL32)


def test_from_torch_takes_a_state_dict_with_num_heads():
    layer, inputs, expected = _case("gpt2")
    state = {k: v.float() for k, v in layer.state_dict().items()}
    ours = MultiHeadAttention.from_torch(state, num_heads=3, decode=False)
    with highest():
        actual = ours(inputs["x"].astype(np.float32), mask=inputs["mask"])
    np.testing.assert_allclose(np.asarray(actual), expected, **TOL32)


def test_from_torch_refuses_what_one_module_cannot_hold():
    with pytest.raises(ValueError, match="biases on all four projections or on none .* got biases on query, key, "
                                         "value only: use attention_jax.multi_head_attention with multi_head_params"):
        MultiHeadAttention.from_torch(_case("qwen2_qkv_bias")[0])


def test_the_map_carries_the_gradients_of_every_weight():
    """check_port through the map: GPT-2 (packed Conv1D) and BERT, whose LayerNorm the map
    leaves out, named in ignore_params."""
    for name, ignore in (("gpt2", ()), ("bert", ("output.LayerNorm.weight", "output.LayerNorm.bias"))):
        layer, inputs, _ = _case(name)

        def port(params, x, *, mask):
            return attention_jax.multi_head_attention(params, x, mask=mask)[0]

        report = check_port(layer.float(), port, (inputs["x"],), kwargs={"mask": inputs["mask"]},
                            params=lambda state: attention_jax.multi_head_params_from_torch(state, 3),
                            ignore_params=ignore)
        assert report.passed, str(report)
        assert {"grad.params.query.kernel", "grad.params.out.bias"} <= {c.name for c in report.checks}


def test_additive_params_from_torch_takes_the_module():
    torch = pytest.importorskip("torch")
    from parity_tests.golden.make_tutorial_golden import tutorial_attention_class

    torch.manual_seed(0)
    module = tutorial_attention_class()(8)
    for half in HALVES.values():
        from_module, from_state = (half.additive_params_from_torch(m) for m in (module, module.state_dict()))
        np.testing.assert_array_equal(from_module["attn"]["kernel"], from_state["attn"]["kernel"])
    from attention_jax.nnx import AdditiveAttention
    np.testing.assert_array_equal(AdditiveAttention.from_torch(module).attn.kernel[...],
                                  module.attn.weight.detach().numpy().T)


# --- without torch: state dicts of NumPy arrays, and the errors ---------------------------------------

def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("half", HALVES)
def test_gpt2_conv1d_state_of_numpy_arrays_is_not_transposed(half):
    """GPT-2 written out in NumPy (``x W + b``, q | k | v in c_attn's 3E outputs) against
    multi_head_attention on the map of its state: the Conv1D kernel keeps its (in, out) layout."""
    E, N = 15, 3
    H = E // N
    rng = np.random.default_rng(1)
    state = {"c_attn.weight": rng.normal(size=(E, 3 * E)), "c_attn.bias": rng.normal(size=3 * E),
             "c_proj.weight": rng.normal(size=(E, E)), "c_proj.bias": rng.normal(size=E),
             "bias": np.tril(np.ones((1, 1, 8, 8), bool))}
    x = rng.normal(size=(B, T, E))
    qkv = x @ state["c_attn.weight"] + state["c_attn.bias"]                      # (B, T, 3E)
    q, k, v = (y.reshape(B, T, N, H).transpose(0, 2, 1, 3) for y in np.split(qkv, 3, axis=-1))  # (B, N, T, H)
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(H)                          # (B, N, T, T)
    logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
    heads = (_softmax(logits) @ v).transpose(0, 2, 1, 3).reshape(B, T, E)      # (B, T, N H)
    expected = heads @ state["c_proj.weight"] + state["c_proj.bias"]
    params = HALVES[half].multi_head_params_from_torch(state, num_heads=N)
    out, _ = HALVES[half].multi_head_attention(params, x, is_causal=True)
    np.testing.assert_allclose(np.asarray(out), expected, **TOL64)


@pytest.mark.parametrize("half", HALVES)
def test_llama_state_of_numpy_arrays_groups_the_heads(half):
    """Llama's q_proj..o_proj as NumPy arrays, K = 2 of N = 6 heads: head n reads key/value head n // 3."""
    E, N, K, H = 7, 6, 2, 5
    rng = np.random.default_rng(2)
    state = {"q_proj.weight": rng.normal(size=(N * H, E)), "k_proj.weight": rng.normal(size=(K * H, E)),
             "v_proj.weight": rng.normal(size=(K * H, E)), "o_proj.weight": rng.normal(size=(E, N * H))}
    x = rng.normal(size=(B, T, E))
    q = (x @ state["q_proj.weight"].T).reshape(B, T, N, H).transpose(0, 2, 1, 3)   # (B, N, T, H)
    k, v = ((x @ state[f"{n}_proj.weight"].T).reshape(B, T, K, H).transpose(0, 2, 1, 3).repeat(N // K, axis=1)
            for n in "kv")                                                          # (B, N, T, H)
    heads = (_softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(H)) @ v).transpose(0, 2, 1, 3).reshape(B, T, N * H)
    expected = heads @ state["o_proj.weight"].T
    for num_kv_heads in (None, K):
        params = HALVES[half].multi_head_params_from_torch(state, num_heads=N, num_kv_heads=num_kv_heads)
        out, _ = HALVES[half].multi_head_attention(params, x)
        np.testing.assert_allclose(np.asarray(out), expected, **TOL64)


def _llama_state(E=7, N=6, K=2, H=5):
    return {"q_proj.weight": np.zeros((N * H, E)), "k_proj.weight": np.zeros((K * H, E)),
            "v_proj.weight": np.zeros((K * H, E)), "o_proj.weight": np.zeros((E, N * H))}


@pytest.mark.parametrize("half", HALVES)
def test_errors_name_the_argument_and_what_was_given(half):
    convert = HALVES[half].multi_head_params_from_torch
    with pytest.raises(ValueError, match=r"matches no attention layout known here; got keys \['dense.weight'\]\. "
                                         r"Known layouts .*q_proj.weight, k_proj.weight, v_proj.weight, o_proj.weight"
                                         r".*self.query.weight.*c_attn.weight, c_proj.weight.*q.weight, k.weight"):
        convert({"dense.weight": np.zeros((4, 4))}, num_heads=2)
    with pytest.raises(ValueError, match=r"num_kv_heads must be 2, the key projection's 10 output features / H=5; "
                                         r"got 3"):
        convert(_llama_state(), num_heads=6, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_heads is required with a state dict"):
        convert(_llama_state())
    with pytest.raises(ValueError, match=r"num_heads must divide the query projection's 30 output features \(N H\); "
                                         r"got 4"):
        convert(_llama_state(), num_heads=4)
    with pytest.raises(ValueError, match=r"num_heads must be a multiple of the K=4 key/value heads; got 6"):
        convert(_llama_state(K=4), num_heads=6)
    with pytest.raises(ValueError, match=r"has \['q_norm.weight'\], which the q_proj/k_proj/v_proj/o_proj .* layout "
                                         r"has no place for"):
        convert(_llama_state() | {"q_norm.weight": np.ones(5)}, num_heads=6)   # Qwen3's norm: refused, not dropped
    with pytest.raises(ValueError, match=r"sinks must have shape \(N,\) with N=6; got \(2,\)"):
        convert(_llama_state() | {"sinks": np.zeros(2)}, num_heads=6)


def test_a_module_without_a_head_count_is_refused():
    class Bare:  # a module-like object that says nothing of its heads
        def state_dict(self):
            return _llama_state()

    with pytest.raises(ValueError, match="num_heads is required: the module has none of num_heads, "
                                         "num_attention_heads, n_head, n_heads"):
        attention_np.multi_head_params_from_torch(Bare())
    assert attention_np.multi_head_params_from_torch(Bare(), 6)["key"]["kernel"].shape == (7, 2, 5)
