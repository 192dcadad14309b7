"""Stitching block labels into one labelling: pure numpy, no I/O.

The one stack-labelling policy of napari-unet lives here (:func:`relabel_tables`): every
path that segments a stack (in memory, :func:`napari_unet.prediction.predict_events`, and
block by block, :func:`napari_unet.blockwise.segment_to_zarr`) labels each unit (a block of
a plane; a whole plane in memory) on its own, then renumbers the labels through these
tables: unique across the stack and sequential (1..N, no gaps) in unit order, or from 1 in
each plane on request; objects that two neighbouring blocks labelled (found by
:func:`match_strips`) get one label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def match_strips(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pairs ``(a, b)`` of labels that two labellings of the same strip give one object.

    ``a`` and ``b`` are matched when more than half of the pixels of the smaller of the
    two (within the strip) lie in the other. Distinct touching objects share no pixel and
    never match; an object split differently by the two blocks is merged rather than cut.

    Returns
    -------
    np.ndarray
        ``(K, 2)`` uint64 pairs.
    """
    first, second = np.asarray(first).ravel(), np.asarray(second).ravel()
    both = (first > 0) & (second > 0)
    if not both.any():
        return np.zeros((0, 2), np.uint64)
    pairs, overlap = np.unique(np.stack([first[both], second[both]], 1), axis=0, return_counts=True)
    ids_a, size_a = np.unique(first[first > 0], return_counts=True)
    ids_b, size_b = np.unique(second[second > 0], return_counts=True)
    smaller = np.minimum(
        size_a[np.searchsorted(ids_a, pairs[:, 0])], size_b[np.searchsorted(ids_b, pairs[:, 1])]
    )
    return pairs[2 * overlap > smaller].astype(np.uint64)


def relabel_tables(
    counts: Sequence[int],
    present: Sequence[np.ndarray],
    matches: Sequence[tuple[int, int, np.ndarray]],
    planes: Sequence[int] | None = None,
) -> tuple[list[np.ndarray], int]:
    """Union-find of the matched block-local labels and the final lookup table per block.

    Parameters
    ----------
    counts : sequence of int
        Largest local label of each block (block ``k``'s ids are ``1..counts[k]``).
    present : sequence of np.ndarray
        Local ids present in each block's core (only these get a final label).
    matches : sequence of (int, int, np.ndarray)
        ``(block_a, block_b, pairs)``: local ids of ``a`` and ``b`` that are one object.
    planes : sequence of int, optional
        Plane number of each block: objects are numbered from 1 in every plane.

    Returns
    -------
    tables : list of np.ndarray
        Per block, ``table[local_id]`` = final label (0 stays 0).
    largest : int
        Largest final label.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    total = int(offsets[-1])
    edges = [
        np.stack(
            [
                pairs[:, 0].astype(np.int64) + offsets[a] - 1,
                pairs[:, 1].astype(np.int64) + offsets[b] - 1,
            ]
        )
        for a, b, pairs in matches
        if len(pairs)
    ]
    edges_array = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)
    graph = coo_matrix(
        (np.ones(edges_array.shape[1], np.int8), (edges_array[0], edges_array[1])),
        shape=(total, total),
    )
    _, component = connected_components(graph, directed=False)
    final = np.zeros(total, np.int64)
    # Number the components present in some core in block order (plane by plane on request).
    plane_of = np.zeros(len(counts), np.int64) if planes is None else np.asarray(planes)
    largest = 0
    for plane in np.unique(plane_of):
        nodes = np.concatenate(
            [
                present[k].astype(np.int64) + offsets[k] - 1
                for k in np.flatnonzero(plane_of == plane)
            ]
            + [np.zeros(0, np.int64)]
        )
        if not len(nodes):
            continue
        roots = component[nodes]
        unique_roots, first = np.unique(roots, return_index=True)
        order = np.argsort(first)
        number = np.empty(len(unique_roots), np.int64)
        number[order] = np.arange(1, len(unique_roots) + 1)
        final[nodes] = number[np.searchsorted(unique_roots, roots)]
        largest = max(largest, len(unique_roots))
    tables = [np.concatenate([[0], final[offsets[k] : offsets[k + 1]]]) for k in range(len(counts))]
    return tables, largest
