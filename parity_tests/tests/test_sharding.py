"""The attention functions on inputs sharded over batch and heads (2 x 2 meshes of 4 simulated
CPU devices, Explicit axes as jax.make_mesh makes them, and Auto axes), under jit, and
chunked_attention inside jax.shard_map with check_vma on, equal the unsharded call in values
and gradients, keep the inputs' sharding, and compile without gathering collectives.

XLA fixes the number of CPU devices when it starts, so the checks run in a fresh process
(``sharding_check.py``) and report JSON. One test reads it all: under pytest-xdist each
worker would run a module fixture of its own, and the script costs tens of seconds."""

import json
import pathlib
import subprocess
import sys


def run_check():
    script = pathlib.Path(__file__).with_name("sharding_check.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def cases(sharding, kind, prefix=""):
    found = {name: case for name, case in sharding["meshes"][kind].items() if name.startswith(prefix)}
    assert found, (kind, prefix)
    return found


def check_values_and_gradients_equal_the_unsharded_call(sharding, kind):
    for name, case in cases(sharding, kind).items():
        assert case["forward"] <= 1e-5, name  # relative to the largest magnitude (>= 1), float32
        assert case["gradients"] <= 1e-5, name
        assert case["finite"], name


def check_no_gathering_collectives(sharding, kind):
    # batch and heads are independent in attention: nothing needs another device's rows
    # (multi-head attention's head sum is an all-reduce, which is not counted)
    for name, case in cases(sharding, kind).items():
        assert case["gathers"] == [], name


def check_functions_covered(sharding):
    names = {name.split(" | ")[0].split()[0] for name in sharding["meshes"]["Explicit"]}
    assert {"scaled_dot_product_attention", "chunked_attention", "dot_product_attention", "multi_head_attention",
            "nnx.MultiHeadAttention", "shard_map(chunked_attention)"} <= names
    layouts = {name.split(" | ")[1] for name in sharding["meshes"]["Explicit"] if " | " in name}
    assert layouts == {"heads", "batch+heads"}


def check_outputs_keep_the_inputs_sharding(sharding):
    expected = {"heads": "P(None, None, 'heads', None)", "batch+heads": "P('data', None, 'heads', None)"}
    for name, case in sharding["meshes"]["Explicit"].items():
        heads_summed = "multi_head" in name or "MultiHead" in name
        if " | " in name and not heads_summed:
            assert case["out_sharding"] == expected[name.split(" | ")[1]], name
        elif heads_summed:
            assert case["out_sharding"] == "P('data', None, None)", name  # (B, T, E): the heads summed
        else:
            assert case["out_sharding"] == "P('data', None, 'heads', None)", name  # shard_map's out_specs
    for name, case in sharding["meshes"]["Auto"].items():
        want = "P('data',)" if "multi_head" in name else "P('data', None, 'heads')"
        assert case["out_sharding"] == want, name


def check_shard_map_of_chunked_attention_with_check_vma(sharding):
    found = cases(sharding, "Explicit", "shard_map(chunked_attention)")
    assert set(found) == {"shard_map(chunked_attention) causal=False", "shard_map(chunked_attention) causal=True",
                          "shard_map(chunked_attention) replicated key/value"}
    for name, case in found.items():
        assert case["forward"] == 0.0 and case["gradients"] == 0.0, name  # each device runs the same blocks


def test_batch_and_head_sharding_and_shard_map():
    sharding = run_check()
    assert sharding["devices"] == 4
    for kind in ("Explicit", "Auto"):
        check_values_and_gradients_equal_the_unsharded_call(sharding, kind)
        check_no_gathering_collectives(sharding, kind)
        assert sharding["large_blocks"][kind] == [], kind  # one-head-at-a-time loops would slice sharded axes
    check_functions_covered(sharding)
    check_outputs_keep_the_inputs_sharding(sharding)
    check_shard_map_of_chunked_attention_with_check_vma(sharding)
