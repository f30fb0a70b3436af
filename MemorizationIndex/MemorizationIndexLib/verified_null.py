"""The verified null and the flag's p-value.

Held-out people's slices go through the second stage exactly as audited slices do (same views,
same number of candidates, same verification) against a reference they are not in: the held-out
subject splits of the training set (as the global null), or the full reference for ``--holdout``
data. Their verified scores calibrate the verified score; the flag combines both stages by
Bonferroni (:func:`flag_p`).

A smooth slice (blurred, at lower resolution, or noisy and then denoised by verification) agrees
more with other people's anatomy than a sharp one (docs/method.md §7.13). So every null slice is
verified twice, as cut and blurred by a random amount, and the null is split into bands of its
grids' roughness (``slice_grid.roughness``): a query's verified score is compared with the band
of its own roughness.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
from scipy import ndimage

from .agreement import EXACT, EXACT_COHERENCE, EXACT_FLOOR, EXACT_INSET, EXACT_SHARE, LOOSE_SHARE
from .calibration import DEFAULT_QUERY_FRACTION, kept_out, split_groups, split_reference
from .embedding import embed_slices_and_tiles
from .encoders.base import Encoder
from .encoders.tiles import COARSE_TILES, FINE_QUERY_TILES, FINE_TILES, PIXEL_GRID
from .grid_warps import BEND_GATE, BEND_MAX, BEND_SIGMA, BEND_WARPS
from .native_check import NATIVE_GATE, NATIVE_SHARE, NATIVE_SHIFT, NATIVE_SUBPIXEL, NATIVE_TAPER, NATIVE_WINDOW
from .patch_search import (
    MOVE_BIN,
    PATCH_CANDIDATES,
    PATCH_CELLS,
    PATCH_DEPTH,
    PATCH_MIN_STD,
    PATCH_NPROBE,
    PATCH_SCAN,
    PATCH_STEP,
    within_limit,
)
from .preprocess import PreprocessSettings
from .region_search import NATIVE_ONLY_CANDIDATES, REGION_CANDIDATES, REGION_DEPTH, RegionIndex, Tiles
from .scoring import NullModel
from .search import search_blocks
from .second_stage import (
    DEFAULT_CANDIDATES,
    HEAVY_NOISE,
    NEIGHBOUR_GATE,
    SMOOTH_SIGMA,
    SQUARE_RATIO,
    VIEWS,
    GridSource,
    SliceGrids,
    Verified,
    candidates,
    search_depth,
    verify_shortlist,
)
from .slice_grid import CROP_NOISE_TARGET, DENOISING, GRID, NOISE_TARGET, to_grids
from .translations import MOVED_SEARCH, MOVED_WINDOW, SUBPIXEL
from .verification import HYPOTHESES, SCALE_RANGE, SCORED
from .whitening import ShrinkageWhitener

VERIFIED_NULL_QUERIES = 1000  # distinct held-out slices verified at build time (at most), each as cut and blurred
MAX_SPLITS = 50
TAIL_QUANTILE = 0.9  # verified p-values above this quantile of the null come from the fitted exponential tail
MIN_TAIL_SCALE = 0.01  # floor of the tail's mean exceedance (a null of identical scores)
MIN_COPY_SCORE = 0.2  # verified scores below this are no evidence of a copy (see evidence_p)
# Bent scores from which a pair is evidence of a copy whatever its score before the bend (see evidence_p): bending
# raises look-alike agreement, the nulls' upper bent scores lie 1.4-1.8 times their scores' (method.md §7.38).
MIN_BENT_SCORE = 2.0 * MIN_COPY_SCORE
# Gaussian sigmas (grid pixels: the slice's foreground spans slice_grid.GRID of them) from which each null
# slice's blurred twin draws its own, log-uniformly; its roughness spans that of blurred, low-resolution and
# denoised slices (method.md §7.13).
NULL_BLUR = (0.3, 1.6)
MIN_BAND = 100  # null scores per roughness band, at least
MAX_BANDS = 4


@dataclass(frozen=True)
class VerifiedNull:
    """Verified scores [n] of the null's slices, their global similarities [n], their grids'
    roughness [n] (``slice_grid.roughness``; nan where a slice had no candidate) and their near-exact
    parts [n] (``second_stage.Verified.reproduced``) and their bent scores [n] (``second_stage.Verified.bent``).

    The null is split at quantiles of its roughness into bands of at least ``MIN_BAND`` scores (at most
    ``MAX_BANDS``; one band for a small null). In each band, verified p-values are empirical up to the
    band's ``TAIL_QUANTILE``; above it the tail is the exponential fitted to the exceedances (a bounded
    score's tail is lighter than exponential, so this errs on the side of larger p-values). It lets a
    small null (a few subjects give only a few hundred distinct held-out slices) still reach
    alpha = 1e-3 for scores far above it.

    A slice is tested on its score, its near-exact part and its bent score together, each scaled by its own
    null's tail in the band (:class:`_Statistic`).
    """

    scores: np.ndarray
    global_similarity: np.ndarray
    roughness: np.ndarray
    reproduced: np.ndarray
    bent: np.ndarray

    def edges(self) -> np.ndarray:
        """The roughness values [bands - 1] that split the null into bands, ascending."""
        known = self.roughness[np.isfinite(self.roughness)]
        bands = int(np.clip(len(known) // MIN_BAND, 1, MAX_BANDS))
        return np.quantile(known, np.arange(1, bands) / bands) if bands > 1 else np.zeros(0)

    def band(self, roughness: np.ndarray) -> np.ndarray:
        """int [n]: the band (0 = smoothest) of each roughness; nan (not verified) goes with the roughest."""
        edges = self.edges()
        roughness = np.asarray(roughness, dtype=np.float64)
        return np.where(np.isnan(roughness), len(edges), np.searchsorted(edges, roughness, side="right"))

    def _band_statistic(self, band: int) -> _Statistic:
        """The combined statistic of one band (:class:`_Statistic`)."""
        chosen = self.band(self.roughness) == band
        return _Statistic.of(self.scores[chosen], self.reproduced[chosen], self.bent[chosen])

    def verified_p(
        self, scores: np.ndarray, roughness: np.ndarray, reproduced: np.ndarray, bent: np.ndarray | None = None
    ) -> np.ndarray:
        """P-values of verified scores with their near-exact parts and bent scores (None: not bent, the scores
        themselves), against the null band of each one's roughness (:class:`_Statistic`)."""
        scores = np.asarray(scores, dtype=np.float64)
        reproduced = np.broadcast_to(np.asarray(reproduced, dtype=np.float64), scores.shape)
        bent = scores if bent is None else np.broadcast_to(np.asarray(bent, dtype=np.float64), scores.shape)
        bands = self.band(np.broadcast_to(np.asarray(roughness, dtype=np.float64), scores.shape))
        p = np.ones(scores.shape)
        for band in np.unique(bands):
            chosen = bands == band
            statistic = self._band_statistic(int(band))
            p[chosen] = _tail_p(statistic.null, statistic(scores[chosen], reproduced[chosen], bent[chosen]))
        return p

    def verified_p_of(self, verified: Sequence[Verified]) -> np.ndarray:
        """:meth:`verified_p` of second-stage results (``second_stage.verify_shortlist``)."""
        return self.verified_p(
            np.array([v.score for v in verified]),
            np.array([v.roughness for v in verified]),
            np.array([v.reproduced for v in verified]),
            np.array([v.bent for v in verified]),
        )

    def thresholds(self, alpha: float) -> list[dict]:
        """Per band, smoothest first: its roughness range [from, to) (None at the open ends), its size,
        the verified score above which a slice of that band counts as a copy at ``alpha`` whatever its
        near-exact part and bent score, the near-exact part above which it does whatever its score, and the bent
        score above which it does (each at least ``MIN_COPY_SCORE``; a flag also needs the score itself to reach
        ``MIN_COPY_SCORE`` or the bent score ``MIN_BENT_SCORE``, :func:`evidence_p`)."""
        edges = [None, *self.edges().tolist(), None]
        bands = []
        for band in range(len(edges) - 1):
            statistic = self._band_statistic(band)
            score, part, bent = statistic.levels(_tail_level(statistic.null, alpha))
            bands.append(
                {
                    "roughness_from": edges[band],
                    "roughness_to": edges[band + 1],
                    "n": int(len(statistic.null)),
                    "threshold": max(score, MIN_COPY_SCORE),
                    "reproduced_threshold": max(part, MIN_COPY_SCORE),
                    "bent_threshold": max(bent, MIN_COPY_SCORE),
                }
            )
        return bands

    def threshold(self, alpha: float) -> float:
        """The verified score above which a slice counts as a copy at ``alpha`` whatever its roughness
        and near-exact part (the highest band threshold; at least ``MIN_COPY_SCORE``)."""
        return max(band["threshold"] for band in self.thresholds(alpha))


def null_settings(regions: bool, patches: bool) -> dict:
    """The settings that change verified scores, which an index's verified null must have been made with
    (recorded in its config by ``build-index``): the views, the neighbour gate, the scale range, the
    hypotheses tried and scored, the candidate squares' ratio, their translations' precision, the near-exact
    regions' score on the grid and at the slices' own resolution, the null's blur, how noisy slices are smoothed, the
    region search and the patch search (``regions``, ``patches``: whether the index has them; a noisy slice's smoothed
    view is searched)."""
    return {
        "views": list(VIEWS),
        "neighbour_gate": [NEIGHBOUR_GATE, "region-named candidates do not wait"] if regions else NEIGHBOUR_GATE,
        "scale_range": list(SCALE_RANGE),
        "hypotheses": HYPOTHESES,
        "scored": SCORED,
        "loose_share": LOOSE_SHARE,
        "candidate_squares": [SQUARE_RATIO, "smaller ones"],
        "subpixel": SUBPIXEL,
        "moved_in_place": [MOVED_SEARCH, MOVED_WINDOW] if regions else 0,
        "exact": [EXACT, EXACT_SHARE, EXACT_INSET, EXACT_FLOOR, EXACT_COHERENCE],
        "native_exact": [
            [NATIVE_GATE, "or a near-exact grid pixel"],
            NATIVE_SHARE,
            NATIVE_WINDOW,
            NATIVE_SHIFT,
            NATIVE_SUBPIXEL,
            NATIVE_TAPER,
        ],
        "statistics": ["score", "near-exact part", "bent score"],
        "bend": [BEND_GATE, BEND_SIGMA, BEND_MAX, BEND_WARPS],
        "null_blur": list(NULL_BLUR),
        "denoising": [NOISE_TARGET, CROP_NOISE_TARGET, DENOISING],
        "region_tiles": (
            [len(COARSE_TILES), len(FINE_TILES), len(FINE_QUERY_TILES), "fine: shallowest block, whole view; queries"]
            if regions
            else 0
        ),
        "region_candidates": [REGION_CANDIDATES, NATIVE_ONLY_CANDIDATES, "native part only"] if regions else 0,
        "region_ranking": f"margin over the deepest of {REGION_DEPTH} hits" if regions else 0,
        "noisy_region_views": [SMOOTH_SIGMA, "both in turn", HEAVY_NOISE, "smoothed alone"] if regions else 0,
        "patch_search": (
            [
                PATCH_CANDIDATES,
                PIXEL_GRID,
                PATCH_CELLS,
                PATCH_STEP,
                PATCH_MIN_STD,
                PATCH_DEPTH,
                MOVE_BIN,
                PATCH_NPROBE,
                PATCH_SCAN,
            ]
            if regions and patches
            else 0
        ),
    }


def _tail(null: np.ndarray) -> tuple[float, float, float]:
    """(threshold u, share of the null above u, mean exceedance) of a null's exponential tail."""
    u = float(np.quantile(null, TAIL_QUANTILE))
    above = null[null > u] - u
    share = max(len(above), 1) / (len(null) + 1)
    return u, share, max(float(above.mean()) if len(above) else 0.0, MIN_TAIL_SCALE)


def _tail_p(null: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """P-values of scores against null scores: empirical below the tail threshold, exponential tail above."""
    u, share, scale = _tail(null)
    tail = share * np.exp(-(scores - u) / scale)
    return np.where(scores > u, np.minimum(tail, share), NullModel(null).p_value(scores))


def _tail_level(null: np.ndarray, alpha: float) -> float:
    """The value whose :func:`_tail_p` is ``alpha``."""
    u, share, scale = _tail(null)
    if alpha >= share:
        return float(NullModel(null).threshold(alpha).similarity)
    return u + scale * float(np.log(share / alpha))


@dataclass(frozen=True)
class _Statistic:
    """The statistic a verified slice is tested on within one null band: the largest of its score, its
    near-exact part and its bent score, each in units of its own null's tail, (x − u) / scale with u the null's
    TAIL_QUANTILE and scale its mean exceedance (the parts' and bent scores' at least the scores'; a near-exact part
    under ``MIN_COPY_SCORE`` does not count). Other people's look-alike anatomy gives the scores a long tail while
    few of them reproduce a region near-exactly, so a copied quarter whose score lies within the first tail can
    stand far above the second (docs/method.md §7.19); bending makes look-alike anatomy agree more, so the bent
    scores' tail is longer still, and a bent copy stands above it where its unbent score does not (§7.34). Where the
    other parts add nothing, the statistic is the score's. ``null``: the band's own values of it."""

    score_tail: tuple[float, float]
    part_tail: tuple[float, float]
    bent_tail: tuple[float, float]
    null: np.ndarray

    @classmethod
    def of(cls, scores: np.ndarray, parts: np.ndarray, bent: np.ndarray) -> _Statistic:
        """The statistic of a null band's scores, near-exact parts and bent scores."""
        (u, _, scale), (part_u, _, part_scale), (bent_u, _, bent_scale) = _tail(scores), _tail(parts), _tail(bent)
        # A null whose parts are (almost) all 0 says little about their spread: never finer than the scores'.
        unfitted = cls((u, scale), (part_u, max(part_scale, scale)), (bent_u, max(bent_scale, scale)), np.zeros(0))
        return replace(unfitted, null=unfitted(scores, parts, bent))

    def __call__(self, scores: np.ndarray, parts: np.ndarray, bent: np.ndarray) -> np.ndarray:
        """The statistic [n] of scores, their near-exact parts and their bent scores [n]."""
        (u, scale), (part_u, part_scale), (bent_u, bent_scale) = self.score_tail, self.part_tail, self.bent_tail
        by_part = np.where(np.asarray(parts) >= MIN_COPY_SCORE, (np.asarray(parts) - part_u) / part_scale, -np.inf)
        by_bend = (np.asarray(bent, dtype=np.float64) - bent_u) / bent_scale
        return np.maximum.reduce([(np.asarray(scores, dtype=np.float64) - u) / scale, by_part, by_bend])

    def levels(self, level: float) -> tuple[float, float, float]:
        """The score, the near-exact part and the bent score at which the statistic reaches ``level``."""
        (u, scale), (part_u, part_scale), (bent_u, bent_scale) = self.score_tail, self.part_tail, self.bent_tail
        return u + scale * level, part_u + part_scale * level, bent_u + bent_scale * level


def evidence_p(verified_p: np.ndarray, verified_score: np.ndarray, verified_bent: np.ndarray) -> np.ndarray:
    """The verified p-value as evidence of a copy: 1 where the score is below ``MIN_COPY_SCORE`` (less than a
    fifth of the smaller foreground agreeing, or less than 6% of it reproduced near-exactly) and the bent score
    below ``MIN_BENT_SCORE``, however rare that is among the null's slices: a small null's fitted tail says little
    about inputs unlike it. The bent floor is twice the score's: bending lifts the upper scores of other people's
    slices 1.4-1.8-fold in the verified nulls measured (method.md §7.38)."""
    score = np.asarray(verified_score, dtype=np.float64)
    strong = (score >= MIN_COPY_SCORE) | (np.asarray(verified_bent, dtype=np.float64) >= MIN_BENT_SCORE)
    return np.where(strong, np.asarray(verified_p, dtype=np.float64), 1.0)


def flag_p(
    global_p: np.ndarray, verified_p: np.ndarray, verified_score: np.ndarray, verified_bent: np.ndarray
) -> np.ndarray:
    """The p-value the flag uses when both stages count: Bonferroni over the two tests (twice the
    smaller p-value, at most 1), so that alpha bounds the false alarms whatever their correlation."""
    smaller = np.minimum(np.asarray(global_p, dtype=np.float64), evidence_p(verified_p, verified_score, verified_bent))
    return np.minimum(1.0, 2.0 * smaller)


@dataclass(frozen=True)
class NullQueries:
    """Held-out slices to verify: their pixels, raw features and raw tile features (None without region
    search) as cut."""

    slices: Sequence[np.ndarray]
    features: dict[str, np.ndarray]
    tiles: Tiles | None = None


def with_blurred_twins(
    queries: NullQueries,
    encoder: Encoder,
    settings: PreprocessSettings,
    rng: np.random.Generator,
    *,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> NullQueries:
    """The queries followed by their blurred twins: each slice blurred by a Gaussian of σ grid pixels
    drawn log-uniformly from ``NULL_BLUR`` (in slice pixels σ × the side of its grid's square / GRID),
    embedded as an audited slice is."""
    sides = np.array([grid.side for grid in to_grids(queries.slices, settings)], dtype=np.float64)
    sigmas = np.exp(rng.uniform(math.log(NULL_BLUR[0]), math.log(NULL_BLUR[1]), len(sides))) * sides / GRID
    twins = [
        ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma)
        for image, sigma in zip(queries.slices, sigmas)
    ]
    tiled = None if queries.tiles is not None else 0
    raw, tiles = embed_slices_and_tiles(encoder, twins, settings, tiled=tiled, batch_size=batch_size, cancel=cancel)
    features = {b: np.concatenate([queries.features[b], raw[b].astype(queries.features[b].dtype)]) for b in raw}
    if queries.tiles is None or tiles is None:
        return NullQueries([*queries.slices, *twins], features)
    both = {b: np.concatenate([raw, tiles[b].astype(raw.dtype)]) for b, raw in queries.tiles.items()}
    return NullQueries([*queries.slices, *twins], features, both)


def verify_against(
    queries: NullQueries,
    features: dict[str, np.ndarray],
    reference_rows: np.ndarray,
    original_row: np.ndarray,
    grids: GridSource,
    encoder: Encoder,
    settings: PreprocessSettings,
    make_whitener: Callable[[], ShrinkageWhitener],
    rng: np.random.Generator,
    *,
    tiles: Tiles | None = None,
    k: int = DEFAULT_CANDIDATES,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> VerifiedNull:
    """The verified null of held-out queries, each as cut and blurred (:func:`with_blurred_twins`),
    against the reference made of ``reference_rows`` of the indexed features (its own whiteners, as
    an audit would have). ``tiles``: raw tile features of every original row, for the region search
    (with the queries' own tiles)."""
    whiteners, indexes = split_reference(features, reference_rows, make_whitener)

    def search(raw: dict[str, np.ndarray], depth: int):
        return search_blocks(indexes, {b: whiteners[b].transform(raw[b]) for b in indexes}, k=depth)

    queries = with_blurred_twins(queries, encoder, settings, rng, batch_size=batch_size, cancel=cancel)
    local_original = np.asarray(original_row)[reference_rows]
    as_cut = search(queries.features, search_depth(k))
    region_index = None
    if tiles is not None and queries.tiles is not None:
        originals = np.unique(local_original)
        region_index = RegionIndex.fit({b: raw[originals] for b, raw in tiles.items()}, originals, make_whitener)
    shortlisted = candidates(
        encoder,
        queries.slices,
        as_cut,
        search,
        local_original,
        settings,
        k=k,
        search_regions=None if region_index is None else region_index.search,
        tiles=queries.tiles,
        batch_size=batch_size,
        cancel=cancel,
    )
    verified = verify_shortlist(queries.slices, shortlisted, grids, settings, cancel)
    return VerifiedNull(
        np.array([v.score for v in verified]),
        np.asarray(as_cut.similarity, dtype=np.float64),
        np.array([v.roughness for v in verified], dtype=np.float64),
        np.array([v.reproduced for v in verified], dtype=np.float64),
        np.array([v.bent for v in verified], dtype=np.float64),
    )


def split_verified_null(
    slices: Sequence[np.ndarray],
    features: dict[str, np.ndarray],
    original_row: np.ndarray,
    groups: np.ndarray,
    grids: GridSource,
    encoder: Encoder,
    settings: PreprocessSettings,
    make_whitener: Callable[[], ShrinkageWhitener],
    *,
    query_fraction: float,
    seed: int,
    tiles: Tiles | None = None,
    n_queries: int = VERIFIED_NULL_QUERIES,
    k: int = DEFAULT_CANDIDATES,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> VerifiedNull:
    """The verified null from held-out subject splits of the training set.

    slices: the reference slices as cut; original row r (a row of ``features``) is ``slices[r]``.
    original_row: for every indexed row, the original row it was made from.
    groups: subject of every original row. Each split holds out a ``query_fraction`` of the split groups
    (``calibration.split_groups``: subjects, or slabs of slice positions of a single subject, by
    ``grids.places``) and verifies a seeded sample of their slices not verified before (as cut and
    blurred) against the rest (with its copies; for slabs, less the slabs next to the held-out ones:
    ``calibration.kept_out``), until ``n_queries`` slices are verified or every slice has been.
    """
    codes = split_groups(groups, grids.places)
    unique = np.unique(codes)
    slabs = len(np.unique(groups)) == 1
    held_out = max(1, int(round(query_fraction * len(unique))))
    row_groups = codes[np.asarray(original_row)]
    rng, blur_rng = np.random.default_rng(seed + 1), np.random.default_rng(seed + 2)
    per_split = max(1, n_queries // 10)
    found: list[VerifiedNull] = []
    used = np.zeros(len(codes), dtype=bool)  # every null slice is verified once: repeats add no information
    for _ in range(MAX_SPLITS):
        if used.sum() >= n_queries or used.all():
            break
        half_a = rng.permutation(unique)[:held_out]
        queries = np.flatnonzero(np.isin(codes, half_a) & ~used)
        if len(queries) == 0:
            continue
        queries = np.sort(rng.choice(queries, min(per_split, len(queries)), replace=False))
        used[queries] = True
        reference_rows = np.flatnonzero(~np.isin(row_groups, kept_out(half_a, codes, slabs)))
        chosen = NullQueries(
            [slices[r] for r in queries],
            {b: raw[queries] for b, raw in features.items()},
            None if tiles is None else {b: raw[queries] for b, raw in tiles.items()},
        )
        found.append(
            verify_against(
                chosen,
                features,
                reference_rows,
                original_row,
                grids,
                encoder,
                settings,
                make_whitener,
                blur_rng,
                tiles=tiles,
                k=k,
                batch_size=batch_size,
                cancel=cancel,
            )
        )
    return VerifiedNull(*(np.concatenate([getattr(part, f.name) for part in found]) for f in fields(VerifiedNull)))


def reference_verified_null(
    slices: Sequence[np.ndarray],
    subjects: Sequence[str],
    features: dict[str, np.ndarray],
    original_row: np.ndarray,
    encoder: Encoder,
    settings: PreprocessSettings,
    *,
    places: np.ndarray | None,
    tiles: Tiles | None = None,
    holdout: NullQueries | None = None,
    seed: int = 0,
    k: int = DEFAULT_CANDIDATES,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> VerifiedNull:
    """The verified null of a reference built from pixels (``build-index`` and the benchmark): the
    holdout slices against the whole reference when given, else held-out subject splits of the
    reference slices.

    slices, subjects: the reference slices as cut (original row r is ``slices[r]``) and their subjects.
    features, original_row: raw features of every indexed row and the original row each was made from.
    places: (volume, slice) of every reference slice (``second_stage.slice_places``): neighbouring
    candidates wait for their neighbourhood's best-ranked one, as in the audit.
    tiles: raw tile features of every reference slice as cut (None: no region search; the holdout's
    ``tiles`` are then ignored).
    """
    grids = SliceGrids(slices, settings, places)
    original_row = np.asarray(original_row)
    tiles = within_limit(tiles)

    def whitener() -> ShrinkageWhitener:
        return ShrinkageWhitener(seed=seed)

    common = {"tiles": tiles, "k": k, "batch_size": batch_size, "cancel": cancel}
    if holdout is None:
        return split_verified_null(
            slices,
            features,
            original_row,
            np.asarray(subjects),
            grids,
            encoder,
            settings,
            whitener,
            query_fraction=DEFAULT_QUERY_FRACTION,
            seed=seed,
            **common,
        )
    rng = np.random.default_rng(seed + 1)
    chosen = np.sort(rng.choice(len(holdout.slices), min(VERIFIED_NULL_QUERIES, len(holdout.slices)), replace=False))
    queries = NullQueries(
        [holdout.slices[i] for i in chosen],
        {b: raw[chosen] for b, raw in holdout.features.items()},
        None if tiles is None or holdout.tiles is None else {b: raw[chosen] for b, raw in holdout.tiles.items()},
    )
    every_row = np.arange(len(original_row))
    blur_rng = np.random.default_rng(seed + 2)
    return verify_against(
        queries, features, every_row, original_row, grids, encoder, settings, whitener, blur_rng, **common
    )
