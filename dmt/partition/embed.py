"""Spectral embedding of features: strongly interacting features land close together.

Ng-Jordan-Weiss: with similarity S [F, F] (symmetric, >= 0) and degrees D = diag(S 1), take the
eigenvectors of the `dim` largest eigenvalues of D^-1/2 S D^-1/2 (equivalently the smallest of
the normalised Laplacian I - D^-1/2 S D^-1/2) as columns and normalise each row to unit length.
Features of one well-connected block then share a direction, so squared Euclidean distance (what
K-Means minimises) separates blocks.
"""

from __future__ import annotations

import numpy as np


def spectral_embedding(similarity: np.ndarray, dim: int, floor: float = 1e-3) -> np.ndarray:
    """similarity [F, F] -> points [F, dim] with unit rows.

    `floor` * max(S) is added to every off-diagonal entry so that the graph is connected and
    isolated features (no interactions at all) still get a defined position. The sign of each
    eigenvector is fixed (largest-magnitude entry positive) so the result is deterministic.
    """
    s = np.asarray(similarity, dtype=np.float64)
    num = s.shape[0]
    if s.shape != (num, num):
        raise ValueError(f"similarity must be square, got {s.shape}")
    dim = max(1, min(dim, num))
    s = 0.5 * (s + s.T)
    s = s + floor * max(float(s.max(initial=0.0)), 1.0) * (1.0 - np.eye(num))
    np.fill_diagonal(s, 0.0)
    inv_sqrt = 1.0 / np.sqrt(s.sum(1))
    affinity = inv_sqrt[:, None] * s * inv_sqrt[None, :]
    values, vectors = np.linalg.eigh(affinity)  # ascending
    top = vectors[:, np.argsort(-values, kind="stable")[:dim]]  # [F, dim]
    signs = np.sign(top[np.argmax(np.abs(top), 0), np.arange(dim)])
    top = top * np.where(signs == 0, 1.0, signs)
    norms = np.linalg.norm(top, axis=1, keepdims=True)
    return top / np.where(norms > 0, norms, 1.0)
