"""A turn and scale for each query-candidate pair by direct search, about the two images' centroids.

The log-polar estimate of verification reads the turn and scale off the magnitude spectra; an elastic warp
combined with a turn or a zoom smears those spectra, and the estimate can then be 6–23° and a third in scale off
(docs/method.md §7.43). Correlating the smoothed images themselves, the candidate turned and scaled about its
intensity centroid and laid on the query's, is not misled by a smooth warp: its displacement is small next to the
coarse grid's pixels. The search is coarse to fine: every SWEEP_STEP degrees of the whole turn and every scale of
SWEEP_SCALES on a SWEEP_COARSE-pixel grid, then the SWEEP_KEPT best refined on a SWEEP_FINE-pixel grid
(docs/method.md §7.54). It proposes one hypothesis per pair; verification finds its translation and scores it as
any other.
"""

from __future__ import annotations

import numpy as np
import torch

from .preprocess import smoothing_matrix

SWEEP_STEP = 10.0  # degrees between the coarse turns (the whole circle)
SWEEP_SCALES = 2.0 ** np.linspace(-0.5, 0.5, 7)  # coarse scales, a sixth of an octave apart
SWEEP_COARSE = 16  # side (pixels) of the coarse search's grid
SWEEP_FINE = 32  # side of the fine search's grid
SWEEP_KEPT = 2  # coarse hypotheses refined per pair
SWEEP_FINE_TURNS = (-5.0, -2.5, 0.0, 2.5, 5.0)  # degrees about each kept turn
SWEEP_FINE_SCALES = 2.0 ** np.array([-1.0 / 12.0, 0.0, 1.0 / 12.0])  # factors about each kept scale
SWEEP_SIGMA = 1.0  # Gaussian smoothing (pixels of the input grid) before the search


def turned_back(angles: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float64 [n, 2, 2]: the linear part of the ``grid_sample`` map (output to input, (column, row) coordinates)
    that turns an image by ``angles`` degrees and scales it by ``scales`` about its centre: the turn undone and the
    scale divided out (verification's maps are built on it too)."""
    radians = np.radians(np.asarray(angles, dtype=np.float64))
    scales = np.asarray(scales, dtype=np.float64)
    cos, sin = np.cos(radians) / scales, np.sin(radians) / scales
    return np.array([[cos, sin], [-sin, cos]]).transpose(2, 0, 1)


def _turn_maps(angles: np.ndarray, scales: np.ndarray) -> torch.Tensor:
    """float32 [n, 2, 3] ``grid_sample`` maps of :func:`turned_back`, without translation."""
    inverse = turned_back(angles, scales)
    theta = np.concatenate([inverse, np.zeros((len(inverse), 2, 1))], axis=2)
    return torch.from_numpy(theta.astype(np.float32))


def _smoothed(images: torch.Tensor) -> torch.Tensor:
    """[n, 1, side, side] images filtered by a Gaussian of SWEEP_SIGMA pixels (edges replicated)."""
    matrix = smoothing_matrix(images.shape[-1], SWEEP_SIGMA)
    return matrix @ images @ matrix.T


def _centroids(images: torch.Tensor) -> torch.Tensor:
    """[n, 2] intensity centroids (x, y) of [n, 1, side, side] non-negative images, normalised to [-1, 1]."""
    side = images.shape[-1]
    ramp = torch.linspace(-1.0, 1.0, side)
    total = images.sum(dim=(1, 2, 3)).clamp_min(1e-6)
    return torch.stack([images.sum(dim=(1, 2)) @ ramp, images.sum(dim=(1, 3)) @ ramp], dim=1) / total[:, None]


def _unit_views(images: torch.Tensor, theta: torch.Tensor, side: int) -> torch.Tensor:
    """[n, side * side] views of ``images`` [n, 1, G, G] under ``theta`` [n, 2, 3], less their mean, of unit norm."""
    grid = torch.nn.functional.affine_grid(theta, [len(images), 1, side, side], align_corners=True)
    views = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    views = views.flatten(1)
    views = views - views.mean(dim=1, keepdim=True)
    return views / views.norm(dim=1, keepdim=True).clamp_min(1e-6)


def _about(theta: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
    """``theta`` [n, 2, 3] moved so that the output's centre samples the input at ``centroid`` [n, 2]."""
    out = theta.clone()
    out[:, :, 2] += centroid
    return out


def swept_turns(
    queries: np.ndarray, candidates: np.ndarray, pair_query: np.ndarray, pair_candidate: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(angles [P] in degrees, scales [P]) that best lay each pair's candidate (``candidates`` [U, G, G] by
    ``pair_candidate`` [P]) on its query (``queries`` [Q, G, G] by ``pair_query`` [P]): the turn and scale, about
    the candidate's centroid moved to the query's, whose smoothed view correlates best with the query's (Pearson
    correlation over the whole view), coarse to fine."""
    if not len(pair_query):
        return np.zeros(0), np.zeros(0)
    # Only the candidates and queries some pair names are turned.
    used_queries, pair_query = np.unique(pair_query, return_inverse=True)
    used_candidates, pair_candidate = np.unique(pair_candidate, return_inverse=True)
    queries, candidates = np.asarray(queries)[used_queries], np.asarray(candidates)[used_candidates]
    coarse_angles = np.repeat(np.arange(0.0, 360.0, SWEEP_STEP), len(SWEEP_SCALES))
    coarse_scales = np.tile(SWEEP_SCALES, len(coarse_angles) // len(SWEEP_SCALES))
    hypotheses = len(coarse_angles)
    with torch.no_grad():
        query = _smoothed(torch.from_numpy(np.asarray(queries, dtype=np.float32))[:, None])
        candidate = _smoothed(torch.from_numpy(np.asarray(candidates, dtype=np.float32))[:, None])
        query_centre, candidate_centre = _centroids(query), _centroids(candidate)
        still = _turn_maps(np.zeros(len(query)), np.ones(len(query)))
        query_coarse = _unit_views(query, _about(still, query_centre), SWEEP_COARSE)
        query_fine = _unit_views(query, _about(still, query_centre), SWEEP_FINE)
        coarse_maps = _turn_maps(coarse_angles, coarse_scales)
        coarse = torch.stack(
            [
                _unit_views(
                    image.expand(hypotheses, -1, -1, -1),
                    _about(coarse_maps, centre.expand(hypotheses, 2)),
                    SWEEP_COARSE,
                )
                for image, centre in zip(candidate[:, None], candidate_centre)
            ]
        )  # [U, hypotheses, SWEEP_COARSE ** 2]
        pq, pc = torch.from_numpy(np.asarray(pair_query)), torch.from_numpy(np.asarray(pair_candidate))
        agreement = torch.einsum("phn,pn->ph", coarse[pc], query_coarse[pq])
        kept = torch.topk(agreement, SWEEP_KEPT, dim=1).indices.numpy()  # [P, SWEEP_KEPT]
        turns = np.repeat(np.asarray(SWEEP_FINE_TURNS), len(SWEEP_FINE_SCALES))
        factors = np.tile(SWEEP_FINE_SCALES, len(SWEEP_FINE_TURNS))
        fine_angles = (coarse_angles[kept][:, :, None] + turns).reshape(len(kept), -1)  # [P, F]
        fine_scales = (coarse_scales[kept][:, :, None] * factors).reshape(len(kept), -1)
        per = fine_angles.shape[1]
        fine_maps = _about(
            _turn_maps(fine_angles.ravel(), fine_scales.ravel()), candidate_centre[pc].repeat_interleave(per, dim=0)
        )
        fine = _unit_views(candidate[pc].repeat_interleave(per, dim=0), fine_maps, SWEEP_FINE).reshape(len(pq), per, -1)
        best = torch.einsum("pfn,pn->pf", fine, query_fine[pq]).argmax(dim=1).numpy()
    rows = np.arange(len(best))
    return fine_angles[rows, best] % 360.0, fine_scales[rows, best]
