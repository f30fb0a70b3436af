"""Scoring in-memory batches against an index: the API for notebooks and training loops.

Load the index and its encoder once, then score NumPy arrays or torch tensors of generated
slices, N×H×W, N×1×H×W or colour N×3×H×W (rows along axis -2, columns along axis -1; see :mod:`arrays`), with
nothing read from or written to disk::

    from MemorizationIndexLib.batch_scoring import BatchScorer
    scorer = BatchScorer("ref-index")              # once
    scores = scorer.score(samples)                 # samples: [N, H, W], [N, 1, H, W] or [N, 3, H, W]
    scores.flagged_fraction, scores.mean_mi, scores.mi, scores.nn_source

A training loop that tracks the flagged fraction every N steps: docs/sets.md.

Slices with too little foreground (blank samples) are not embedded, as in ``audit``: their
``scored`` is False, their scores NaN and ``flagged`` False.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .arrays import as_stack
from .audit import checked_alpha, score_features
from .embedding import embed_slices
from .out_of_memory import halving_batch_on_out_of_memory
from .preprocess import nonempty_mask
from .reference_index import ReferenceIndex
from .scoring import Threshold, out_of_reach

TOP_K = 5  # candidates re-ranked per sample, as in audit (the nearest source is then the same)


@dataclass(frozen=True)
class BatchScores:
    """Per-sample scores of one batch of N samples (arrays of length N, in batch order)."""

    similarity: np.ndarray  # float64 [N]
    z: np.ndarray  # float64 [N]
    mi: np.ndarray  # float64 [N]
    oni: np.ndarray  # float64 [N]
    p_value: np.ndarray  # float64 [N]
    flagged: np.ndarray  # bool [N]
    scored: np.ndarray  # bool [N]: False for blank samples (too little foreground), which get NaN scores
    nn_source: list[str]  # the nearest training slice's source file ("" when not scored)
    nn_slice: np.ndarray  # int64 [N], -1 when not scored
    nn_flip: list[str]  # which copy of it matched (transforms.REFERENCE_COPIES)
    threshold: Threshold

    @property
    def flagged_fraction(self) -> float:
        """Flagged samples over scored samples (0.0 when none was scored)."""
        n = int(self.scored.sum())
        return float(self.flagged.sum()) / n if n else 0.0

    @property
    def mean_mi(self) -> float:
        """Mean mi of the scored samples (NaN when none was scored)."""
        return float(self.mi[self.scored].mean()) if self.scored.any() else float("nan")


def _to_numpy(batch: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(batch, torch.Tensor):
        return batch.detach().to("cpu", torch.float32).numpy()
    return np.asarray(batch)


class BatchScorer:
    """An index and its encoder, loaded once, that score in-memory batches of 2D slices."""

    def __init__(
        self,
        index: str | Path | ReferenceIndex,
        *,
        device: str = "cpu",
        checkpoint: str | Path | None = None,
        alpha: float | None = None,
        batch_size: int = 32,
    ):
        self.index = index if isinstance(index, ReferenceIndex) else ReferenceIndex.load(index)
        self.encoder = self.index.load_encoder(checkpoint=checkpoint, device=device)
        self.alpha = checked_alpha(self.index, None if alpha is None else float(alpha))
        self.batch_size = batch_size
        self.null = self.index.null_model
        self.threshold = self.null.threshold(self.alpha)
        if not self.threshold.reachable:
            warnings.warn(
                f"{out_of_reach(self.alpha, len(self.null.values))}: BatchScorer scores the global stage alone (no "
                "verification), so it can flag nothing; audit saved samples, or pass a larger alpha",
                UserWarning,
                stacklevel=2,
            )

    def score(self, batch: np.ndarray | torch.Tensor) -> BatchScores:
        """Scores of a batch [N, H, W], [N, 1, H, W] or colour [N, 3, H, W] / [N, H, W, 3 or 4] (NumPy array or torch
        tensor, any real dtype; colour becomes grey, :func:`arrays.grey_from_channels`)."""
        array = _to_numpy(batch)
        stack = as_stack(array, f"batch of shape {tuple(array.shape)}", allow_2d=False)
        settings = self.index.preprocessing
        scored = np.array([bool(nonempty_mask(s[None], settings)[0]) for s in stack], dtype=bool)
        keep = np.flatnonzero(scored)
        rows: list[dict] = []
        if keep.size:
            raw = halving_batch_on_out_of_memory(
                lambda batch: embed_slices(self.encoder, stack[keep], settings, batch_size=batch), self.batch_size
            )
            rows, _, _ = score_features(self.index, raw, self.alpha, k=TOP_K)

        def column(name: str, blank, dtype) -> np.ndarray:
            values = np.full(len(stack), blank, dtype=dtype)
            values[keep] = [row[name] for row in rows]
            return values

        return BatchScores(
            **{name: column(name, np.nan, np.float64) for name in ("similarity", "z", "mi", "oni", "p_value")},
            flagged=column("flagged", False, bool),
            scored=scored,
            nn_source=column("nn_source", "", object).tolist(),
            nn_slice=column("nn_slice", -1, np.int64),
            nn_flip=column("nn_flip", "", object).tolist(),
            threshold=self.threshold,
        )
