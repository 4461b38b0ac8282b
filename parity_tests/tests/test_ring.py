"""ring_attention on 2, 4 and 8 simulated CPU devices equals the single-device function, in
values and gradients, and needs less memory per device as the ring grows.

XLA fixes the number of CPU devices when it starts, so the checks run in a fresh process
(``ring_check.py``) with 8 devices and report JSON."""

import json
import pathlib
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def ring():
    script = pathlib.Path(__file__).with_name("ring_check.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_values_and_gradients_equal_the_single_device_function(ring):
    assert ring["devices"] == 8
    assert len(ring["cases"]) == 8 and {c.split()[0] for c in ring["cases"]} == {"P=2", "P=4", "P=8"}
    for name, case in ring["cases"].items():
        assert case["forward"] <= 1e-5, name
        assert case["gradients"] <= 1e-5, name
        assert case["finite"], name
        assert case["out_sharding"] == "P(None, 'sp')", name  # the output stays sharded along T


def test_one_query_row_per_device(ring):
    # T = P: the diagonal block of each device holds one query and one key, the same position
    assert sorted(ring["one_row"]) == ["P=4 causal", "P=8 causal"]
    for name, case in ring["one_row"].items():
        assert case["forward"] <= 1e-5 and case["gradients"] <= 1e-5 and case["finite"], (name, case)


def test_nan_in_a_key_reaches_the_queries_that_attend_it(ring):
    # and only those: queries t >= 3 of the causal ring, not zeros;
    # the dense path may also give NaN before (docs/design.md, "the causal mask alone")
    ring_rows, dense_rows = ring["nan_rows"]
    assert ring_rows == [False] * 3 + [True] * 5
    assert dense_rows[3:] == [True] * 5


def test_meshes_from_make_mesh_explicit_and_auto_with_and_without_mask(ring):
    # jax.make_mesh makes Explicit axes by default; the sequence alone or batch and sequence
    # sharded together; a key-padding mask passed as a plain (replicated) array
    cases = ring["mesh_kinds"]
    assert len(cases) == 8, sorted(cases)
    for name, case in cases.items():
        assert case["forward"] <= 1e-5, name
        assert case["gradients"] <= 1e-5, name
        assert case["finite"], name


@pytest.mark.parametrize("kind", ["Auto", "Explicit"])
def test_the_output_keeps_the_querys_sharding_on_a_data_and_sequence_mesh(ring, kind):
    # batch split over "data", sequence over "sp": the output (and each gradient) stays split
    # over both, not gathered or replicated over "data"; values as above, within 1e-5
    cases = {name: c for name, c in ring["mesh_kinds"].items() if name.startswith(f"{kind} 2x4")}
    assert len(cases) == 2, sorted(ring["mesh_kinds"])
    for name, case in cases.items():
        assert case["query_sharding"] == "P('data', 'sp')", name
        assert case["out_kept"], (name, case["out_sharding"])
        assert case["grads_kept"], name
        assert case["forward"] <= 1e-5 and case["gradients"] <= 1e-5, name
    # a query replicated over "data" gives an output replicated over "data"
    replicated = ring["replicated_batch"][kind]
    assert replicated["out_kept"], replicated
    assert replicated["forward"] <= 1e-5, replicated


def test_random_problems_equal_the_numpy_reference(ring):
    # hypothesis inside the 8-device process: key-padding masks with dead batch rows, grouped
    # heads, causal or not, upstream gradients up to 1e4; RING_PROPERTY_EXAMPLES=500 searches longer
    assert ring["property"] is None, ring["property"]


def test_memory_per_device_falls_at_least_in_proportion_to_the_ring(ring):
    memory = {int(p): b for p, b in ring["memory"].items()}
    assert memory[4] <= memory[2] / 2 and memory[8] <= memory[4] / 2, memory


def test_two_devices_quick_check():
    # the ring on 2 devices alone, in a few seconds (CI runs it at the lowest declared versions)
    script = pathlib.Path(__file__).with_name("ring_check.py")
    done = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["devices"] == 2 and len(result["cases"]) == 4, result
    for name, case in result["cases"].items():
        assert case["forward"] <= 1e-5 and case["gradients"] <= 1e-5 and case["finite"], (name, case)
        assert case.get("out_sharding", "P(None, 'sp')") == "P(None, 'sp')", (name, case)


def test_lengths_must_divide_evenly(ring):
    assert ring["uneven"] == ("ring_attention with layout='contiguous' splits T into 4 equal pieces over the 4 devices "
                              "of mesh axis 'sp'; got T=10")


def test_the_mask_broadcasts_as_everywhere_and_is_a_key_mask():
    # on a one-device ring: a (B, 1, 1, S) mask is the dense function's; a mask that varies
    # along the heads or the queries, or does not broadcast, is refused by name
    import jax
    import numpy as np

    import attention_jax

    mesh = jax.make_mesh((1,), ("sp",))
    x = np.random.default_rng(0).normal(size=(2, 4, 2, 8)).astype(np.float32)
    mask = np.ones((2, 1, 1, 4), bool)
    mask[1, ..., 1:] = False
    ring_out = attention_jax.ring_attention(x, x, x, mesh=mesh, axis_name="sp", mask=mask)
    np.testing.assert_allclose(ring_out, attention_jax.scaled_dot_product_attention(x, x, x, mask=mask)[0], atol=1e-6)
    for bad, message in ((np.ones((2, 1, 4, 4), bool), r"varies along T"), (np.ones((1, 2, 1, 4), bool), r"varies along N"),
                         (np.ones((4, 4), bool), r"varies along T"), (np.ones((3, 4), bool), r"broadcastable to \(B, N, T, S\)"),
                         (np.ones((2, 1, 1, 4)), r"must be a bool")):
        with pytest.raises(ValueError, match=message):
            attention_jax.ring_attention(x, x, x, mesh=mesh, axis_name="sp", mask=bad)


def test_every_option_in_either_layout_is_the_definition(ring):
    # hypothesis over layouts, windows, packed documents across shards, lengths, soft-caps,
    # sinks and key masks: values and lse against NumPy float64, gradients (sinks included)
    # against the dense path, dead queries zero
    assert ring["option_property"] is None, ring["option_property"]


def test_the_zigzag_permutation_and_its_errors():
    import numpy as np

    import attention_jax

    perm = attention_jax.zigzag_permutation(12, 3)                 # 6 chunks of 2: device i holds i and 5 - i
    np.testing.assert_array_equal(perm, [0, 1, 10, 11, 2, 3, 8, 9, 4, 5, 6, 7])
    with pytest.raises(ValueError, match=r"L must be a multiple of 6; got L=8"):
        attention_jax.zigzag_permutation(8, 3)


def test_ulysses_is_the_dense_path_with_every_option(ring):
    # hypothesis over P, mesh kinds, single-device paths, grouped heads (K < P repeated) and
    # every option: output, lse and gradients (sinks included) against the dense path
    assert ring["ulysses_property"] is None, ring["ulysses_property"]


def test_ulysses_refuses_what_it_cannot_split(ring):
    errors = ring["ulysses_errors"]
    assert errors["heads"] == ("ulysses_attention splits the N=6 query heads over the 4 devices of mesh axis 'sp': "
                               "N must be a multiple of 4; ring_attention takes any head count")
    assert errors["kv_heads"] == ("ulysses_attention splits the K=3 key/value heads over 4 devices (repeating them up "
                                  "to 4 when fewer): K must be a multiple or a divisor of 4; got K=3")
    assert errors["length"] == "ulysses_attention splits T evenly over the 4 devices of mesh axis 'sp'; got T=6"


def test_score_mod_and_mask_mod_on_the_ring_see_global_positions(ring):
    # an ALiBi-like score_mod (slopes differentiated) and a causal document mask_mod, either
    # layout, Auto and Explicit meshes, against the dense flex definition
    assert set(ring["mods"]) == {"Auto contiguous", "Auto zigzag", "Explicit contiguous"}
    for name, errors in ring["mods"].items():
        assert errors["forward"] <= 2e-5 and errors["gradients"] <= 2e-5, (name, errors)
