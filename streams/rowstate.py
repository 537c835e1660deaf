"""Per-row state out of and into the numpy arrays: one float64 matrix [rows, width].

Every per-environment array of the test (`SplitTest`, `DecisionEngine`, `FleetWindows`, `Fleet`)
is listed beside the arrays, in its class (`ROW_FIELDS`); these helpers flatten a row of each
into one vector, in that order, so that a row can be checkpointed and restored elsewhere. Counts
are int64 below 2**53 and survive float64 exactly; booleans become 0/1. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Rows = NDArray[np.intp]


def row_width(obj: object, names: Sequence[str]) -> int:
    """Floats per row of these arrays (each indexed by row on its last axis)."""
    return sum(int(np.prod(getattr(obj, n).shape[:-1])) for n in names)


def export_fields(obj: object, names: Sequence[str], rows: Rows) -> Floats:
    """[rows, width]: the rows of the arrays `names` of `obj` (row axis last)."""
    parts = [
        np.asarray(getattr(obj, n)[..., rows], dtype=np.float64).reshape(
            int(np.prod(getattr(obj, n).shape[:-1])), rows.size
        )
        for n in names
    ]
    if not parts:
        return np.zeros((rows.size, 0))
    out: Floats = np.ascontiguousarray(np.concatenate(parts, axis=0).T)
    return out


def import_fields(obj: object, names: Sequence[str], rows: Rows, data: Floats) -> None:
    """Write `export_fields`'s matrix back into the rows `rows` of the arrays `names`."""
    col = 0
    for n in names:
        array = getattr(obj, n)
        lead = array.shape[:-1]
        k = int(np.prod(lead))
        block = data[:, col : col + k].T.reshape((*lead, rows.size))
        array[..., rows] = block.astype(array.dtype)
        col += k
    if col != data.shape[1]:
        raise ValueError(f"row state has {data.shape[1]} values, expected {col}")
