"""Attention over several devices: :mod:`.ring` (``ring_attention``, sequence parallelism
with the keys and values passed around a ring of devices). Every public name here is
importable from :mod:`attention_jax` itself."""
