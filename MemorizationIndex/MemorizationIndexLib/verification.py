"""Pairwise verification: does a query slice reproduce (part of) a candidate reference slice?

The global search proposes candidates; each is aligned to the query on a coarse square grid and
the aligned overlap is scored. The alignment covers an optional transpose followed by a rotation of
any angle (every flip and 90° turn is one of these), a scale and a translation: rotation and scale
come from the log-polar magnitude spectra (Fourier–Mellin: phase correlation of log-polar maps) and,
as further hypotheses, from the two foregrounds' principal axes and radii of gyration; a stretch or shear
(one linear map of any kind) from the two images' second moments, refined by the affine fit of their optical
flow; translation from phase correlation, refined to a tenth of a grid pixel for the hypotheses that are scored (the
in-place one taken exactly in place when phase correlation puts it within a pixel of there). The
score is (mainly) the share of the smaller foreground in which the local correlation of
rank-equalised intensities (Gaussian windows) is high: rank equalisation
removes monotone intensity changes, local windows tolerate bias fields, and pixels that are
background in either slice (zero-filled bands, empty margins) never count as agreement. Each
agreeing pixel is weighted by how far its correlation rises above the agreement level (exact copies
≈ 1, another person's similar anatomy ≈ 0.3). The largest agreeing region is the copy mask. A region
reproduced near-exactly (local correlation ≥ EXACT, where the structure is not one straight edge, which
agrees with any parallel edge) scores by its own share of the foreground, so that a copied quarter or
pasted patch is not outscored by a whole slice of loose look-alike anatomy; a pair that agrees at all is
also checked for such a region at the query's own resolution, with the candidate's own pixels. A noisy
slice is smoothed by its estimated noise level before it is cropped and put on the grid.

Many queries are verified against their candidates at once (:func:`verify_batch`), in chunks of
CHUNK_PAIRS query-candidate pairs: the phase correlations are batched FFTs, the warps one
``grid_sample`` call and the scoring of the chosen hypotheses one stack (local correlations,
closing, largest regions); the resizes, band-pass and Gaussian windows are linear maps applied as
(cached) matrices, equal to the scikit-image and SciPy calls they replace up to float rounding.

This module holds the hypotheses, their batching and the choice between them; the parts they are made of live in
``slice_grid`` (a slice on the grid), ``fourier`` (spectra and phase correlation), ``translations`` (subpixel and
guided translations), ``grid_warps`` (linear maps, shifts, the bend), ``grid_moments`` (second moments),
``agreement`` (the score and the copy mask) and ``native_check`` (the near-exact part at the slice's own resolution).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .agreement import agreements, bounding_box, global_correlations, two_dimensional_pixels
from .centroid_sweep import swept_turns
from .fourier import POLAR_ROWS, SPECTRUM_GRID, phase_peaks, rfft2, whitened
from .grid_moments import moment_maps, principal_axes, second_moments
from .grid_warps import (
    BEND_GATE,
    BEND_WARPS,
    base_grid,
    bent_onto,
    grid_transform,
    inverse_maps,
    shifted,
    turn_and_scale,
    turn_maps,
    warped,
)
from .native_check import checked_natively, native_part
from .optical_flow import batched_ilk
from .slice_grid import GRID, Grid, grid_of, to_grid, to_slice
from .translations import (
    IN_PLACE_SNAP,
    MOVED_SEARCH,
    agreement_moves,
    moved_in_place,
    peaks_away,
    peaks_near,
    refined_shifts,
    seen_in_place,
    tile_moves,
    tile_windows,
    wrapped_distance,
)

SCALE_RANGE = (0.45, 2.2)  # scales outside are not proposed by the log-polar estimate (method.md §7.12, §7.36)
# the hypotheses of a pair that are scored (:func:`_scored_hypotheses`, :func:`_moved_shifts`,
# :func:`translations.seen_in_place`)
SCORED = (  # the hypotheses scored per pair (an index's verified null records them: method.md §7.45)
    "best-ranked, in place, in place moved where the region tiles say, exactly in place where they say in place, "
    "in place at the phase correlation's strongest peak away from in place by its near-exact part at full resolution, "
    "in place at the peak near the region tiles' small move by its near-exact part at full resolution"
)
# per candidate: {as is, transposed} x {theta, theta + 180} of the log-polar estimate, {phi, phi + 180} of the
# principal axes (:func:`grid_moments.principal_axes`), the grid images' second moments matched and refined by their
# optical flow (:func:`grid_moments.moment_maps`, :func:`_flow_refined`), the centroid sweep's turn
# (``centroid_sweep``), and in place (:func:`_in_place`)
_HYPOTHESES = 9
HYPOTHESES = (  # the hypotheses tried per pair (:func:`_hypotheses`)
    "log-polar, principal axes, second moments matched, centroid sweep, in place"
)
MOMENTS = _HYPOTHESES - 3  # the moment-matched linear map (anisotropic scale and shear)
SWEPT = _HYPOTHESES - 2  # the centroid sweep's hypothesis
IN_PLACE = _HYPOTHESES - 1  # the in-place hypothesis comes last
# The hypotheses sampled from the candidate; each of the others is the 180° turn of the one before it, which on the
# grid is the sampled image reversed along both axes (the grid centre is the turn's centre; :func:`_with_twins`).
_SAMPLED = np.array([0, 2, 4, MOMENTS, SWEPT, IN_PLACE])
_TWINS = np.array([1, 3, 5])
CHUNK_PAIRS = 64  # query-candidate pairs verified together (docs/performance.md: faster than 32, 48, 96 or 128)


@dataclass(frozen=True)
class Alignment:
    """How the candidate maps onto the query: transpose (if ``transposed``), then rotate by ``angle``
    degrees (as ``transforms.rotate``) and scale by ``scale``. ``matrix`` [3, 3] is the whole map
    from candidate to query slice pixels in homogeneous (column, row, 1) coordinates, crops,
    translation and grid resampling included."""

    transposed: bool
    angle: float
    scale: float
    matrix: np.ndarray


@dataclass(frozen=True)
class Verification:
    """One candidate verified against the query.

    score: share of the smaller foreground of the two aligned slices in which they agree, graded by how
        well, or its near-exact part (``reproduced``) when that is higher; in [0, 1].
    mask: bool [rows, cols] of the query: the copied region (empty when none).
    box: (row0, col0, row1, col1) of the mask in query pixels (ends exclusive), None when empty.
    reproduced: the share of the smaller foreground (at least EXACT_FLOOR grid pixels) reproduced near-exactly,
        over EXACT_SHARE, or at the slice's own resolution (:func:`native_check.native_part`) when that is higher (at
        most 1; the score's second part, which has a null of its own: ``verified_null.VerifiedNull``).
    bent: the higher of the score and the score of the aligned candidate bent onto the query (BEND_GATE), which has
        a null of its own too.
    on_grid: the score on the grid alone, before the near-exact part at the slice's own resolution (which reaches 1
        for two references that differ only in contrast, such as two echoes of one slice).
    likeness: the correlation of the query's grid with the aligned candidate's over the copied region (the grid's copy
        mask of the best-scoring grid hypothesis), times the share of that region both foregrounds cover; -1 where
        they cover under 3 pixels. Two references that differ only in
        contrast agree alike in small windows, but the source's intensities match the copy's best over the whole
        region: with ``on_grid`` it breaks ties of scores (``second_stage.verify_slices``).
    """

    score: float
    alignment: Alignment
    mask: np.ndarray
    box: tuple[int, int, int, int] | None
    reproduced: float = 0.0
    bent: float = 0.0
    on_grid: float = 0.0
    likeness: float = -1.0


@dataclass(frozen=True)
class _Pairs:
    """The query-candidate pairs of one chunk: ``query`` [P] each pair's query (index into the chunk's
    queries), ``candidate`` [P] its candidate (index into ``unique``, the chunk's distinct candidate
    grids, so that a grid shared by several queries is transformed once)."""

    query: np.ndarray
    candidate: np.ndarray
    unique: list[Grid]

    @classmethod
    def of(cls, candidates: Sequence[Sequence[Grid]]) -> _Pairs:
        """The pairs of queries [Q] with their candidate lists, in order."""
        position: dict[int, int] = {}
        unique: list[Grid] = []
        for grid in (grid for listed in candidates for grid in listed):
            if id(grid) not in position:
                position[id(grid)] = len(unique)
                unique.append(grid)
        query = np.repeat(np.arange(len(candidates)), [len(listed) for listed in candidates])
        candidate = np.array([position[id(grid)] for listed in candidates for grid in listed], dtype=np.intp)
        return cls(query, candidate, unique)


def _rotation_scales(queries: Sequence[Grid], pairs: _Pairs) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (degrees, modulo 180) and image scales [P, 2] taking each pair's candidate, as is
    and transposed, onto its query. The transposed map's spectrum is the as-is one with its row
    frequencies negated and signs alternated (its rows are permuted by a -> 90 - a, half the period)."""
    spectra = np.stack([grid.polar_spectrum for grid in pairs.unique])  # [U, 180, columns // 2 + 1]
    rows = spectra.shape[1]
    flipped = spectra[:, (-np.arange(rows)) % rows] * np.where(np.arange(rows) % 2, -1, 1).astype(np.float32)[:, None]
    reference = np.stack([grid.polar_spectrum for grid in queries])
    moving = np.stack([spectra, flipped], axis=1)[pairs.candidate]  # [P, 2, 180, columns // 2 + 1]
    shifts = phase_peaks(reference[pairs.query][:, None] * moving.conj(), pairs.unique[0].log_polar.shape)
    angles = shifts[..., 0] * 360.0 / POLAR_ROWS
    # The spectrum scales inversely to the image.
    scales = np.exp(-shifts[..., 1] * math.log(SPECTRUM_GRID // 2) / SPECTRUM_GRID)
    return angles, scales


def _hypotheses(
    queries: Sequence[Grid], pairs: _Pairs, in_place_scales: np.ndarray, swept: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(transposed [P * _HYPOTHESES], linear map [P * _HYPOTHESES, 2, 2]) to try, per pair in order: per transpose,
    the log-polar rotation estimate and its 180° twin (the magnitude spectrum cannot tell them apart) at the
    estimated scale; the turn between the two foregrounds' principal axes and its twin, at the ratio of
    their radii of gyration (:func:`grid_moments.principal_axes`); the map matching the second moments of the two grid
    images (:func:`grid_moments.moment_maps`; rank-equalised intensities, which an affine map keeps and which hold more
    of the anatomy's shape than the foreground does): a copy stretched or sheared, as a generator trained on slices
    resized to one grid hands them back (the principal axes' first where that map scales outside SCALE_RANGE;
    :func:`_verify_chunk` refines it by :func:`_flow_refined`); for the pairs
    ``swept`` [P] marks, the centroid sweep's turn and scale (``centroid_sweep.swept_turns``; the others repeat the
    first hypothesis, which then ranks first among equals); then the candidate in place, at ``in_place_scales`` [P]
    (:func:`_in_place`). Scales outside SCALE_RANGE are replaced by 1. Blur, lost resolution, noise and elastic
    warps flatten or smear the spectrum and can mislead the log-polar estimate of a turned copy; the foreground's
    shape keeps its axes, and the smoothed images themselves their turn (method.md §7.54)."""
    angles, scales = _rotation_scales(queries, pairs)  # [P, 2]: as is, transposed
    turned = np.stack([angles % 360.0, (angles + 180.0) % 360.0], axis=-1).reshape(len(angles), 4)
    transposed = np.broadcast_to(np.array([False, False, True, True]), turned.shape)
    query_axis, query_radius = principal_axes(second_moments(np.stack([grid.mask for grid in queries])))
    axis, radius = principal_axes(second_moments(np.stack([grid.mask for grid in pairs.unique])))
    turn = (query_axis[pairs.query] - axis[pairs.candidate])[:, None]
    gyration = np.sqrt(query_radius[pairs.query] / np.maximum(radius[pairs.candidate], 1e-6))[:, None]
    in_place = in_place_scales[:, None]
    untransposed = np.zeros((len(angles), _HYPOTHESES - 4), dtype=bool)  # the principal axes' two and the rest
    scale = np.concatenate([np.repeat(scales, 2, axis=-1), gyration, gyration], axis=1)
    scale = np.where((scale >= SCALE_RANGE[0]) & (scale <= SCALE_RANGE[1]), scale, 1.0)
    sweep_angle, sweep_scale = turned[:, 0].copy(), scale[:, 0].copy()
    query_images, candidate_images = (np.stack([grid.image for grid in grids]) for grids in (queries, pairs.unique))
    chosen = np.flatnonzero(swept)
    if len(chosen):
        found = swept_turns(query_images, candidate_images, pairs.query[chosen], pairs.candidate[chosen])
        sweep_angle[chosen], sweep_scale[chosen] = found
    angle = np.concatenate([turned, turn % 360.0, (turn + 180.0) % 360.0], axis=1)
    linear = turn_maps(angle.ravel(), scale.ravel()).reshape(len(angles), -1, 2, 2)
    matched = moment_maps(second_moments(query_images)[pairs.query], second_moments(candidate_images)[pairs.candidate])
    matched = np.where(_scales_within(matched)[:, None, None], matched, linear[:, 4])
    swept_linear = turn_maps(sweep_angle, sweep_scale)
    in_place_linear = turn_maps(np.zeros(len(in_place)), in_place[:, 0])
    stacked = np.concatenate([linear, matched[:, None], swept_linear[:, None], in_place_linear[:, None]], axis=1)
    return np.concatenate([transposed, untransposed], axis=1).ravel(), stacked.reshape(-1, 2, 2)


def _flow_refined(
    images: np.ndarray, masks: np.ndarray, unique: np.ndarray, pairs: _Pairs, linear: np.ndarray
) -> np.ndarray:
    """float64 [P, 2, 2]: each pair's linear map ``linear`` [P, 2, 2] refined by the affine map that best fits (least
    squares over the two foregrounds' overlap) the optical flow of its candidate (``unique`` [U, 2, GRID, GRID], images
    and masks), so mapped and moved by phase correlation, onto its query (``images``, ``masks`` [Q, GRID, GRID]). The
    second moments give a stretch only up to a turn they cannot see and a few per cent off where the field of view
    cuts the anatomy; a copy's near-exact correlation needs the map to a fraction of a grid pixel. A refined map that
    scales outside SCALE_RANGE, or whose overlap is under a quarter of the grid, is left as it was."""
    moved, moved_masks = warped(unique[pairs.candidate], inverse_maps(np.zeros(len(linear), bool), linear), 1)
    shifts = phase_peaks(whitened(rfft2(images))[pairs.query] * whitened(rfft2(moved)).conj(), (GRID, GRID))
    moved, moved_masks = shifted(moved, shifts), shifted(moved_masks, shifts)
    flows = batched_ilk(images[pairs.query], moved, num_warp=BEND_WARPS).astype(np.float64)
    weight = (masks[pairs.query] & moved_masks).reshape(len(linear), -1).astype(np.float64)
    columns, rows = (ramp.reshape(-1).numpy().astype(np.float64) * (GRID - 1) / 2.0 for ramp in base_grid())
    design = np.stack([columns, rows, np.ones_like(columns)], axis=1)  # [GRID², 3], about the grid centre
    targets = np.stack([columns + flows[:, 1].reshape(len(linear), -1), rows + flows[:, 0].reshape(len(linear), -1)])
    normal = np.einsum("pk,ki,kj->pij", weight, design, design) + 1e-9 * np.eye(3)
    fitted = np.linalg.solve(normal, np.einsum("pk,ki,dpk->pid", weight, design, targets))[:, :2].transpose(0, 2, 1)
    usable = (weight.sum(axis=1) >= GRID * GRID / 4) & (np.abs(np.linalg.det(fitted)) > 1e-6)
    refined = np.linalg.inv(np.where(usable[:, None, None], fitted, np.eye(2))) @ linear
    kept = usable & _scales_within(refined)
    return np.where(kept[:, None, None], refined, linear)


def _scales_within(linear: np.ndarray) -> np.ndarray:
    """bool [n]: whether both scales (singular values) of each linear map [n, 2, 2] lie in SCALE_RANGE."""
    singular = np.linalg.svd(linear, compute_uv=False)
    return ((singular >= SCALE_RANGE[0]) & (singular <= SCALE_RANGE[1])).all(axis=1)


def _in_place(queries: Sequence[Grid], pairs: _Pairs) -> tuple[np.ndarray, np.ndarray]:
    """The in-place hypothesis of each pair: the candidate neither turned nor flipped, each pixel at the
    same place in the field of view of the query (the spectra of a partial copy mix two slices and can
    mislead the rotation and scale estimate; a generator keeps what it copies where it was). Fields of
    view of different sizes are matched by their areas' ratio, about their centres. Returns its grid
    scale [P] (about the grid centre) and the translation (row, col) [P, 2] that then puts each pixel in
    place (grid pixels, fractions included: the two grids are cut at different places of their slices)."""

    def frames(grids: Sequence[Grid]) -> tuple[np.ndarray, ...]:
        # Per grid: grid pixels per slice pixel, its slice's area, and its slice's centre on the grid (row, col),
        # as grid_of maps slice pixels.
        scale = np.array([GRID / grid.side for grid in grids], dtype=np.float64)
        corner = np.array([grid.corner for grid in grids], dtype=np.float64)
        centre = (np.array([grid.foreground.shape for grid in grids], dtype=np.float64) - 1.0) / 2.0
        area = np.array([grid.foreground.size for grid in grids], dtype=np.float64)
        return scale, area, (centre - corner + 0.5) * scale[:, None] - 0.5

    query_scale, query_area, query_centre = (part[pairs.query] for part in frames(queries))
    candidate_scale, candidate_area, candidate_centre = (part[pairs.candidate] for part in frames(pairs.unique))
    scales = np.sqrt(query_area / np.maximum(candidate_area, 1.0)) * query_scale / candidate_scale
    # Scaled about the grid centre, the candidate's centre goes to the query's centre once translated by this.
    middle = (GRID - 1) / 2.0
    offsets = query_centre - middle - scales[:, None] * (candidate_centre - middle)
    return scales, offsets


def _aligned(
    images: np.ndarray, unique: np.ndarray, pairs: _Pairs, transposed: np.ndarray, linear: np.ndarray
) -> tuple:
    """Every hypothesis applied to the candidates' images and masks (``unique`` [U, 2, GRID, GRID]): the turned
    and scaled candidates' images and masks moved by the whole-pixel translation that phase correlation finds
    against its query (of the query images [Q, GRID, GRID]; ``shifts`` int [P * _HYPOTHESES, 2]), and the
    cross-power spectra that gave it (:func:`translations.refined_shifts`). Returns (images, masks, shifts, cross, and
    the turned and scaled candidates' images and masks before they were moved)."""
    sampled = (np.arange(len(pairs.query))[:, None] * _HYPOTHESES + _SAMPLED).ravel()
    maps = inverse_maps(transposed[sampled], linear[sampled])
    turned, turned_masks = (_with_twins(stack) for stack in warped(unique[pairs.candidate], maps, len(_SAMPLED)))
    reference = whitened(rfft2(images))[np.repeat(pairs.query, _HYPOTHESES)]
    cross = reference * whitened(rfft2(turned)).conj()
    shifts = phase_peaks(cross, (GRID, GRID))
    return shifted(turned, shifts), shifted(turned_masks, shifts), shifts, cross, turned, turned_masks


def _moved_shifts(
    images: np.ndarray, turned: np.ndarray, pairs: _Pairs, guided: np.ndarray, moves: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Whole-pixel translations [G, 2] of the in-place candidates of the ``guided`` pairs [G] to where the region
    search saw their copies (``moves`` [G, 6], :func:`translations.moved_in_place`), and the cross-power spectra that
    gave them. The whole slices' phase correlation of a moved patch is ruled by the rest of the two slices (a host's
    anatomy, in place), so the two are compared in Gaussian windows about their two tiles, and the peak is taken within
    MOVED_SEARCH of the tiles' move."""
    at = guided * _HYPOTHESES + IN_PLACE
    query = whitened(rfft2(images[pairs.query[guided]] * tile_windows(moves[:, 2:4])))
    cross = query * whitened(rfft2(turned[at] * tile_windows(moves[:, 4:6]))).conj()
    return peaks_near(cross, moves[:, :2]), cross


def _moved_near(
    images: np.ndarray, turned: np.ndarray, pairs: _Pairs, near: np.ndarray, moves: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs among ``near`` [N] (seen in place by the region tiles, :func:`translations.seen_in_place`) whose
    in-place candidate, compared with the query in windows about the two tiles (``moves`` [N, 6],
    :func:`translations.tile_moves`), peaks more than IN_PLACE_SNAP from its in-place translation ``offsets`` [N, 2],
    and those peaks refined [n, 2]. A patch pasted a little off its place (less than MOVED_SEARCH, which the tiles
    cannot tell from in place) lies there."""
    if not len(near):
        return near, np.zeros((0, 2))
    shifts, cross = _moved_shifts(images, turned, pairs, near, moves)
    fine = refined_shifts(cross, shifts)
    off = np.abs(fine - offsets).max(axis=1) > IN_PLACE_SNAP
    return near[off], fine[off]


def _with_twins(sampled: np.ndarray) -> np.ndarray:
    """[P * _HYPOTHESES, GRID, GRID]: the images of every hypothesis of each pair, given those of its
    :data:`_SAMPLED` ones [P * len(_SAMPLED), GRID, GRID]. A twin's inverse map is its first's negated (a turn by
    180° more, no translation), so it samples each pixel where its first samples the pixel mirrored through the
    grid centre: the first's image reversed along both axes (equal up to the rounding of the sampling positions)."""
    per = sampled.reshape(-1, len(_SAMPLED), GRID, GRID)
    out = np.empty((len(per), _HYPOTHESES, GRID, GRID), dtype=sampled.dtype)
    out[:, _SAMPLED] = per
    out[:, _TWINS] = per[:, np.searchsorted(_SAMPLED, _TWINS - 1), ::-1, ::-1]
    return out.reshape(-1, GRID, GRID)


def pair_chunks(sizes: Sequence[int], limit: int = CHUNK_PAIRS) -> list[range]:
    """Consecutive runs of queries with ``sizes`` candidates each, at most ``limit`` pairs a run (a
    query with more candidates makes a run of its own)."""
    runs, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if total + size > limit and i > start:
            runs.append(range(start, i))
            start, total = i, 0
        total += size
    return [*runs, range(start, len(sizes))] if sizes else runs


def verify_batch(
    queries: Sequence[Grid],
    candidates: Sequence[Sequence[Grid]],
    chunk_pairs: int = CHUNK_PAIRS,
    places: Sequence[Sequence[np.ndarray]] | None = None,
    bend: Sequence[Sequence[bool]] | None = None,
) -> list[list[Verification]]:
    """Verify every query against its own candidates (in order), as :func:`verify` does each pair:
    the pairs of consecutive queries are batched, ``chunk_pairs`` at most at a time. ``places``: per candidate,
    the region search's two tiles [4] (``region_search.RegionHits``; nan, or None for all, where there are none),
    which place a moved copy's in-place hypothesis (:func:`translations.moved_in_place`). ``bend``: per candidate,
    whether it may be a whole-slice copy bent or warped: its bent score is sought (:func:`grid_warps.bent_onto`) and the
    centroid sweep proposes a turn (``centroid_sweep``; all when None); where not, neither, and the bent score is the
    verified score."""
    if places is None:
        places = [[np.full(4, np.nan)] * len(listed) for listed in candidates]
    if bend is None:
        bend = [[True] * len(listed) for listed in candidates]
    out: list[list[Verification]] = []
    for run in pair_chunks([len(listed) for listed in candidates], chunk_pairs):
        out += _verify_chunk(
            [queries[i] for i in run], [candidates[i] for i in run], [places[i] for i in run], [bend[i] for i in run]
        )
    return out


@dataclass(frozen=True)
class _Chunk:
    """The pairs of one chunk and what every stage of their verification reads: the queries' grid images and masks
    [Q, GRID, GRID], the distinct candidates' images and masks (``unique`` [U, 2, GRID, GRID]), each pair's hypotheses
    (``transposed`` [P * _HYPOTHESES], ``linear`` [P * _HYPOTHESES, 2, 2]; :func:`_hypotheses`), its in-place scale [P]
    and translation [P, 2] (:func:`_in_place`), the region search's tiles [P, 4] and the moves they propose [P, 6]
    (:func:`translations.moved_in_place`), which pairs may be bent (``wanted`` [P]), and every hypothesis turned and
    scaled (``turned``, ``turned_masks``), its whole-pixel translation and cross-power spectrum (:func:`_aligned`) and
    its global correlation with its query (``ranks`` [P, _HYPOTHESES])."""

    used: list[Grid]
    pairs: _Pairs
    images: np.ndarray
    masks: np.ndarray
    unique: np.ndarray
    transposed: np.ndarray
    linear: np.ndarray
    in_place_scales: np.ndarray
    in_place_offsets: np.ndarray
    tiles: np.ndarray
    moves: np.ndarray
    wanted: np.ndarray
    shifts: np.ndarray
    cross: np.ndarray
    turned: np.ndarray
    turned_masks: np.ndarray
    ranks: np.ndarray

    @property
    def in_place(self) -> np.ndarray:
        """[P] each pair's in-place hypothesis, an index into the chunk's flat hypotheses."""
        return np.arange(len(self.pairs.query)) * _HYPOTHESES + IN_PLACE

    @property
    def owner(self) -> np.ndarray:
        """[P * _HYPOTHESES] the query (an index into ``used``) of each flat hypothesis."""
        return np.repeat(self.pairs.query, _HYPOTHESES)


@dataclass(frozen=True)
class _Scored:
    """Hypotheses to score, in order: the pair of each [S], the hypothesis (an index into the chunk's flat hypotheses)
    [S] and the translation it is scored at [S, 2] (grid pixels, fractions included)."""

    pair_of: np.ndarray
    hypothesis: np.ndarray
    shift: np.ndarray

    def __len__(self) -> int:
        return len(self.pair_of)

    def extended(self, pair_of: np.ndarray, hypothesis: np.ndarray, shift: np.ndarray) -> _Scored:
        """These hypotheses followed by more."""
        return _Scored(
            np.concatenate([self.pair_of, pair_of]),
            np.concatenate([self.hypothesis, hypothesis]),
            np.concatenate([self.shift, shift]),
        )

    def followed_by(self, other: _Scored) -> _Scored:
        """These hypotheses, then ``other``'s."""
        return self.extended(other.pair_of, other.hypothesis, other.shift)


def _verify_chunk(
    queries: Sequence[Grid],
    candidates: Sequence[Sequence[Grid]],
    places: Sequence[Sequence[np.ndarray]],
    bend: Sequence[Sequence[bool]],
) -> list[list[Verification]]:
    """One chunk of :func:`verify_batch`: the rotation, scale and translation estimates and the warps of every pair and
    hypothesis are batched (:func:`_chunk_of`); the hypotheses that can win (:func:`_whole_slice_hypotheses`) and those
    that count only by their near-exact part at the slice's own resolution (:func:`_moved_only_hypotheses`) are scored
    by :func:`agreement.agreements` together; per pair the highest scoring of the first kind is kept
    (:func:`_chosen`), bent onto its query where ``bend`` marks the pair and it scores at least BEND_GATE
    (:func:`_bent_scores`), and checked at the slice's own resolution with the second kind (:func:`_results`)."""
    asked = [i for i, listed in enumerate(candidates) if len(listed)]
    out: list[list[Verification]] = [[] for _ in queries]
    if not asked:
        return out
    chunk = _chunk_of(queries, candidates, places, bend, asked)
    whole_slice = _whole_slice_hypotheses(chunk)
    scored = whole_slice.followed_by(_moved_only_hypotheses(chunk))
    maps = inverse_maps(chunk.transposed[scored.hypothesis], chunk.linear[scored.hypothesis], scored.shift)
    candidate_of = chunk.pairs.candidate[scored.hypothesis // _HYPOTHESES]
    placed, placed_masks = warped(chunk.unique[candidate_of], maps, 1)
    queries_at = chunk.owner[scored.hypothesis]
    structured = two_dimensional_pixels(chunk.images)[queries_at]  # once per query, not per scored hypothesis
    areas = np.abs(np.linalg.det(chunk.linear[scored.hypothesis]))
    whole = chunk.unique[candidate_of, 1].sum(axis=(1, 2)) * areas
    images, masks = chunk.images[queries_at], chunk.masks[queries_at]
    scores, copied, reproduced = agreements(images, masks, placed, placed_masks, structured, whole)
    chosen, moved_only = _chosen(scored, scores, len(whole_slice), len(chunk.ranks))
    most_reproduced = np.zeros(len(chunk.ranks))
    np.maximum.at(most_reproduced, scored.pair_of[: len(whole_slice)], reproduced[: len(whole_slice)])
    bent = _bent_scores(chunk, chosen, scores, images, masks, placed, placed_masks, structured, whole)
    likeness = global_correlations(images[chosen], masks[chosen] & copied[chosen], placed[chosen], placed_masks[chosen])
    pair_figures = (most_reproduced, bent, likeness)
    for q, result in _results(chunk, scored, chosen, moved_only, pair_figures, scores, copied, reproduced):
        out[asked[q]].append(result)
    return out


def _chunk_of(
    queries: Sequence[Grid],
    candidates: Sequence[Sequence[Grid]],
    places: Sequence[Sequence[np.ndarray]],
    bend: Sequence[Sequence[bool]],
    asked: list[int],
) -> _Chunk:
    """The :class:`_Chunk` of the queries ``asked`` (those with candidates): every pair's hypotheses, the moment-matched
    one refined by the optical flow (:func:`_flow_refined`), all turned, scaled and moved by phase correlation, and
    ranked by their global correlation."""
    used, pairs = [queries[i] for i in asked], _Pairs.of([candidates[i] for i in asked])
    in_place_scales, in_place_offsets = _in_place(used, pairs)
    tiles = np.array([pair for i in asked for pair in places[i]], dtype=np.float64).reshape(-1, 4)
    moves = moved_in_place(tiles, in_place_scales, in_place_offsets)
    wanted = np.array([wants for i in asked for wants in bend[i]], dtype=bool)
    transposed, linear = _hypotheses(used, pairs, in_place_scales, wanted)
    images, masks = np.stack([q.image for q in used]), np.stack([q.mask for q in used])
    unique = np.stack([np.stack([g.image, g.mask]) for g in pairs.unique]).astype(np.float32)
    matched = np.arange(len(pairs.query)) * _HYPOTHESES + MOMENTS
    linear[matched] = _flow_refined(images, masks, unique, pairs, linear[matched])
    moved, moved_masks, shifts, cross, turned, turned_masks = _aligned(images, unique, pairs, transposed, linear)
    owner = np.repeat(pairs.query, _HYPOTHESES)
    ranks = global_correlations(images[owner], masks[owner], moved, moved_masks).reshape(-1, _HYPOTHESES)
    return _Chunk(
        used,
        pairs,
        images,
        masks,
        unique,
        transposed,
        linear,
        in_place_scales,
        in_place_offsets,
        tiles,
        moves,
        wanted,
        shifts,
        cross,
        turned,
        turned_masks,
        ranks,
    )


def _whole_slice_hypotheses(chunk: _Chunk) -> _Scored:
    """The hypotheses a pair's verification is chosen from: each pair's best hypothesis by global correlation, its
    in-place one and, for a pair ``bend`` marks, the centroid sweep's (:func:`_scored_hypotheses`), at their refined
    translations (the in-place one put exactly in place when it lies within IN_PLACE_SNAP of there); for a pair whose
    copy the region search saw in place while phase correlation put it elsewhere, its in-place one exactly in place
    too (:func:`translations.seen_in_place`); for a pair whose copy the region search saw moved, its in-place one
    moved there (:func:`_moved_shifts`)."""
    pair_of, scored = _scored_hypotheses(chunk.ranks, chunk.wanted)
    fine = refined_shifts(chunk.cross[scored], chunk.shifts[scored])
    # An in-place hypothesis whose whole-pixel translation lies within a pixel of its exact one is put exactly there.
    offsets = chunk.in_place_offsets[scored // _HYPOTHESES]
    in_place = scored % _HYPOTHESES == IN_PLACE
    snap = in_place & (np.abs(chunk.shifts[scored] - offsets).max(axis=1) <= IN_PLACE_SNAP)
    fine[snap] = offsets[snap]
    out = _Scored(pair_of, scored, fine)
    # A pair whose copy the region search saw in place, phase correlation elsewhere, also scores it exactly in place.
    put_back = seen_in_place(chunk.tiles, chunk.moves)[scored // _HYPOTHESES] & in_place & ~snap
    if put_back.any():
        out = out.extended(scored[put_back] // _HYPOTHESES, scored[put_back], offsets[put_back])
    # A pair whose copy the region search saw moved also scores its in-place hypothesis moved there.
    guided = np.flatnonzero(np.isfinite(chunk.moves[:, 0]))
    if len(guided):
        moved_by, moved_cross = _moved_shifts(chunk.images, chunk.turned, chunk.pairs, guided, chunk.moves[guided])
        out = out.extended(guided, guided * _HYPOTHESES + IN_PLACE, refined_shifts(moved_cross, moved_by))
    return out


def _moved_only_hypotheses(chunk: _Chunk) -> _Scored:
    """The in-place hypotheses moved where a moved region would lie, which count only by their near-exact part at the
    slice's own resolution (:func:`_with_moved_native_part`: a look-alike moved there can agree loosely, a copy is
    reproduced; method.md §7.45, §7.49): every pair's at its phase correlation's strongest peak away from in place, on
    the side of the periodic surface where the two agree, refined in windows about where they agree (a region copied
    and moved, a pasted patch, correlates there, however a host's anatomy rules the rest of the slices); and, for a
    pair whose copy the region tiles saw in place, at the peak near the tiles' move where that is off in place (a
    patch pasted a little off its place; :func:`_moved_near`)."""
    in_place, offsets = chunk.in_place, chunk.in_place_offsets
    away = np.where(
        (wrapped_distance(chunk.shifts[in_place], offsets) <= MOVED_SEARCH)[:, None],
        peaks_away(chunk.cross[in_place], offsets),
        chunk.shifts[in_place],
    )
    query = chunk.pairs.query
    found_moves = agreement_moves(
        chunk.images[query], chunk.masks[query], chunk.turned[in_place], chunk.turned_masks[in_place], away
    )
    roaming = np.flatnonzero(np.isfinite(found_moves[:, 2]))
    out = _Scored(np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros((0, 2)))
    if len(roaming):
        roamed_by, roamed_cross = _moved_shifts(chunk.images, chunk.turned, chunk.pairs, roaming, found_moves[roaming])
        out = out.extended(roaming, in_place[roaming], refined_shifts(roamed_cross, roamed_by))
    near = np.flatnonzero(seen_in_place(chunk.tiles, chunk.moves))
    nudged, nudged_by = _moved_near(
        chunk.images,
        chunk.turned,
        chunk.pairs,
        near,
        tile_moves(chunk.tiles[near], chunk.in_place_scales[near]),
        offsets[near],
    )
    return out.extended(nudged, in_place[nudged], nudged_by)


def _chosen(scored: _Scored, scores: np.ndarray, first_moved_only: int, n_pairs: int) -> tuple[np.ndarray, list]:
    """Per pair, the scored hypothesis (an index into ``scored``) kept among those before ``first_moved_only``: its
    first unless another scores higher; the moment-matched map, which has the most freedom, keeps a tie only against
    none (a partial copy's mixed moments put it a little off a copy's in-place map, and the near-exact part of a copied
    half scores 1 under both). And per pair, its hypotheses from ``first_moved_only`` on (counted by their near-exact
    part only)."""
    chosen = np.full(n_pairs, -1, dtype=np.intp)
    moved_only: list[list[int]] = [[] for _ in range(n_pairs)]
    for s, p in enumerate(scored.pair_of):
        if s >= first_moved_only:
            moved_only[p].append(s)
            continue
        if chosen[p] < 0 or scores[s] > scores[chosen[p]]:
            chosen[p] = s
        elif scores[s] == scores[chosen[p]] and scored.hypothesis[chosen[p]] % _HYPOTHESES == MOMENTS:
            chosen[p] = s
    return chosen, moved_only


def _bent_scores(
    chunk: _Chunk,
    chosen: np.ndarray,
    scores: np.ndarray,
    images: np.ndarray,
    masks: np.ndarray,
    placed: np.ndarray,
    placed_masks: np.ndarray,
    structured: np.ndarray,
    whole: np.ndarray,
) -> np.ndarray:
    """[P] each pair's bent score: its chosen hypothesis's score, or where the pair may be bent (``chunk.wanted``) and
    that reaches BEND_GATE, the higher of it and the score of the placed candidate bent onto its query
    (:func:`grid_warps.bent_onto`). The other arrays are per scored hypothesis, as :func:`_verify_chunk` scores them."""
    bent = scores[chosen].astype(np.float64)
    gated = np.flatnonzero((bent >= BEND_GATE) & chunk.wanted)
    if len(gated):
        rows = chosen[gated]
        moved_on, moved_on_masks = bent_onto(images[rows], masks[rows], placed[rows], placed_masks[rows])
        bent_scores, _, _ = agreements(
            images[rows], masks[rows], moved_on, moved_on_masks, structured[rows], whole[rows]
        )
        bent[gated] = np.maximum(bent[gated], bent_scores)
    return bent


def _results(
    chunk: _Chunk,
    scored: _Scored,
    chosen: np.ndarray,
    moved_only: list[list[int]],
    pair_figures: tuple[np.ndarray, np.ndarray, np.ndarray],
    scores: np.ndarray,
    copied: np.ndarray,
    reproduced: np.ndarray,
) -> Iterator[tuple[int, Verification]]:
    """(query, :class:`Verification`) of every pair in order: its chosen hypothesis's alignment (in slice pixels),
    score, copy mask and box, and its most reproduced part, bent score and likeness (``pair_figures``, [P] each),
    raised by its near-exact part at the slice's own resolution where :func:`native_check.checked_natively` asks for
    it, under the chosen alignment and each of its moved-only ones."""
    to_query = [np.linalg.inv(grid_of(query)) for query in chunk.used]
    from_candidate = [grid_of(grid) for grid in chunk.pairs.unique]

    def alignment_of(s: int, q: int, c: int) -> Alignment:
        # The s-th scored hypothesis's map from the candidate's slice pixels to the query's.
        h = scored.hypothesis[s]
        on_grid = grid_transform(chunk.linear[h], (float(scored.shift[s, 0]), float(scored.shift[s, 1])))
        matrix = _slice_map(to_query[q], from_candidate[c], bool(chunk.transposed[h]), on_grid)
        return Alignment(bool(chunk.transposed[h]), *turn_and_scale(chunk.linear[h]), matrix)

    for p, (q, c) in enumerate(zip(chunk.pairs.query, chunk.pairs.candidate)):
        query, candidate = chunk.used[q], chunk.pairs.unique[c]
        mask = to_slice(copied[chosen[p]], query)
        score = float(scores[chosen[p]])
        most_reproduced, bent, likeness = (float(figure[p]) for figure in pair_figures)
        result = Verification(
            score,
            alignment_of(chosen[p], q, c),
            mask,
            bounding_box(mask),
            most_reproduced,
            bent,
            on_grid=score,
            likeness=likeness,
        )
        if checked_natively(score, reproduced[chosen[p]]):
            result = _with_native_part(result, query, candidate)
        for a in moved_only[p]:
            if checked_natively(scores[a]):
                result = _with_moved_native_part(
                    result, query, candidate, alignment_of(a, q, c), to_slice(copied[a], query)
                )
        yield q, result


def _with_native_part(found: Verification, query: Grid, candidate: Grid) -> Verification:
    """A verification with its near-exact part raised to :func:`native_check.native_part` where that is higher, its
    score and bent score with it; its copy mask becomes the native region where it had none."""
    if found.reproduced >= 1.0:  # the part is at most 1
        return found
    part, region = native_part(query, candidate, found.alignment.matrix, found.mask)
    if part <= found.reproduced:
        return found
    mask = found.mask if found.mask.any() else region
    return replace(
        found,
        score=max(found.score, part),
        mask=mask,
        box=bounding_box(mask),
        reproduced=part,
        bent=max(found.bent, part),
    )


def _with_moved_native_part(
    found: Verification, query: Grid, candidate: Grid, moved: Alignment, copied: np.ndarray
) -> Verification:
    """``found``, or where it is higher, the near-exact part at the query's own resolution
    (:func:`native_check.native_part`) of the candidate carried by the ``moved`` alignment (the in-place hypothesis
    moved to its phase correlation's strongest peak away from in place, whose grid copy mask is ``copied``), as the
    pair's verification: that alignment, the part as its score and near-exact part, its region as the copy mask; the
    bent score at least that part."""
    if found.score >= 1.0:  # the part is at most 1
        return found
    part, region = native_part(query, candidate, moved.matrix, copied)
    if part <= found.score:
        return found
    return Verification(
        part, moved, region, bounding_box(region), part, max(found.bent, part), found.on_grid, found.likeness
    )


def _scored_hypotheses(ranks: np.ndarray, swept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hypotheses scored by :func:`agreement.agreements`, given their global correlations [P, _HYPOTHESES] and the
    pairs the centroid sweep proposed a turn for (``swept`` [P]): (pair [S], hypothesis [S], an index into the chunk's
    flat hypotheses), each pair's best-ranked first (the sweep's hypothesis not among those ranked), then its in-place
    hypothesis when that is not the best-ranked, then, for a swept pair, the sweep's. The whole slice decides the
    global correlation, so a partial copy's in-place alignment can rank low on it and still agree best where it
    copies; the sweep's hypothesis is scored beside the best-ranked, not instead of it (method.md §7.54)."""
    ranked = ranks.copy()
    ranked[:, SWEPT] = -np.inf
    best = np.argmax(ranked, axis=1)  # the first of equal ranks
    second = np.flatnonzero(best != IN_PLACE)
    third = np.flatnonzero(swept)
    pair_of = np.concatenate([np.arange(len(ranks)), second, third])
    chosen = np.concatenate([best, np.full(len(second), IN_PLACE), np.full(len(third), SWEPT)])
    order = np.argsort(pair_of, kind="stable")
    return pair_of[order], pair_of[order] * _HYPOTHESES + chosen[order]


def verify_many(query: Grid, candidates: Sequence[Grid]) -> list[Verification]:
    """Verify ``query`` against several candidates at once, in order (:func:`verify_batch` of one query)."""
    return verify_batch([query], [candidates])[0]


def verify(query: Grid, candidate: Grid) -> Verification:
    """Align ``candidate`` onto ``query`` (every hypothesis, translation by phase correlation) and keep
    the alignment with the highest agreement score; the copy mask is given in query pixels."""
    return verify_many(query, [candidate])[0]


def in_place_square(query: Grid, candidate: Grid, places: np.ndarray | None = None) -> tuple[tuple[int, int], int]:
    """The candidate's grid square (corner (row, col), side) carried in place into the query slice's pixels: fields
    of view of different sizes matched by their areas' ratio about their centres, as :func:`_in_place` maps them.
    Where the region search's two tiles (``places`` [4], fractions of the two grids' squares as :func:`verify_batch`
    takes them) put the candidate's tile more than MOVED_SEARCH query grid pixels from where that map puts it, the
    square moves with the tile."""
    ratio = math.sqrt(query.foreground.size / max(candidate.foreground.size, 1))
    query_centre = (np.array(query.foreground.shape, dtype=np.float64) - 1.0) / 2.0
    candidate_centre = (np.array(candidate.foreground.shape, dtype=np.float64) - 1.0) / 2.0
    corner = query_centre + ratio * (np.array(candidate.corner, dtype=np.float64) - candidate_centre)
    if places is not None and np.isfinite(places).all():
        query_tile = np.array(query.corner) + np.asarray(places[:2]) * query.side
        candidate_tile = np.array(candidate.corner) + np.asarray(places[2:]) * candidate.side
        move = query_tile - (query_centre + ratio * (candidate_tile - candidate_centre))
        if np.abs(move).max() > MOVED_SEARCH * query.side / GRID:
            corner += move
    return (int(round(corner[0])), int(round(corner[1]))), max(1, int(round(ratio * candidate.side)))


def _slice_map(to_query: np.ndarray, from_candidate: np.ndarray, transposed: bool, on_grid: np.ndarray) -> np.ndarray:
    """[3, 3] candidate slice pixels -> query slice pixels, through the grids (column, row, 1), given
    the inverse of the query's :func:`slice_grid.grid_of` and the candidate's."""
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]]) if transposed else np.eye(3)
    return to_query @ on_grid @ swap @ from_candidate


def verify_candidates(query: np.ndarray, candidates: list[np.ndarray]) -> list[Verification]:
    """Verify a raw query slice [rows, cols] against raw candidate slices (any shapes), in order."""
    return verify_many(to_grid(query), [to_grid(candidate) for candidate in candidates])
