"""The precision rule of docs/design.md section 4: compute in float32 (float64 for float64 input)."""

import numpy as np


def compute_dtype(dtype) -> np.dtype:
    """float64 stays float64; float16, bfloat16 and float32 are computed in float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def cast_params(params, dtype):
    """Every array of a nested parameter dict, as ``dtype``."""
    if isinstance(params, dict):
        return {name: cast_params(p, dtype) for name, p in params.items()}
    return np.asarray(params).astype(dtype)
