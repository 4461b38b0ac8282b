"""Attention over several devices, the sequence sharded: :mod:`.ring` (``ring_attention``: the
keys and values passed around a ring of devices, every option of ``chunked_attention`` at
global positions), :mod:`.layouts` (which positions a device holds: contiguous or zig-zag,
``zigzag_permutation``) and :mod:`.ulysses` (``ulysses_attention``: all-to-all to head shards
and back). Every public name here is importable from :mod:`attention_jax` itself."""
