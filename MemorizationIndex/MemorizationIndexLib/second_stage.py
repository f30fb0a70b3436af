"""The audit's second stage: candidate training slices of every query slice, and pixel verification
of the query against each (docs/method.md §7).

The global search ranks references by pooled features. Re-oriented copies (transposed, turned by
90°) are found there because the index holds those copies of every training slice
(``transforms.REFERENCE_COPIES``); heavily noised copies are not, so a noisy query slice is also
searched as a smoothed view, and the candidates of the two searches are merged by rank (each gets
its share); so is its region search (§7.30). A copy turned by about 45° lies between the index's
orientations (steps of 90°), so every slice is also searched turned by 45° (its global features
only: one extra forward pass), and that view's first candidates not already listed are verified too
(§7.57). Candidates are aligned to the query and scored by :mod:`verification`; a candidate
next to a better-ranked one of its volume (a near-duplicate slice) is verified only when that one
verifies (§7.11); a candidate much smaller than the query in place is verified again on the query cut to its own
square (§7.32). The same functions serve the audit (against a loaded index) and the verified null
at build time (against each split's reference), so the null goes through exactly the audit's
pipeline.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy import ndimage

from .embedding import Cancelled, embed_slices_and_tiles
from .encoders.base import Encoder
from .grid_cache import GridCache
from .grid_moments import principal_axes, second_moments
from .pixel_threads import thread_map
from .preprocess import PreprocessSettings, scale_unit, scaled_foreground
from .region_search import NATIVE_ONLY_CANDIDATES, REGION_CANDIDATES, RegionHits, Tiles
from .search import Neighbours
from .slice_grid import NOISE_TARGET, Grid, grid_places, regrid_places, steps_reaching, to_grids
from .transforms import REFERENCE_COPIES
from .verification import Verification, in_place_square, pair_chunks, verify_batch

if TYPE_CHECKING:
    from .reference_index import Provenance

TURNED_VIEWS = ("turned-45", "principal-axes")  # :func:`turned_views`, in this order
VIEWS = ("as-cut", "smoothed-if-noisy", *TURNED_VIEWS)
SMOOTH_SIGMA = 2.0  # pixels; the smoothed view finds heavily noised copies (method.md §7.2)
# The turned views: every slice turned by this angle about its centre, so that a copy turned by any angle lies within
# 22.5° of an orientation the index holds (as cut: multiples of 90°) in one of the searches. Each view's first
# TURNED_CANDIDATES original rows that the as-cut search, a noisy slice's smoothed view and the views before it did
# not list are verified too (method.md §7.57: of 16 brain copies turned by 35-55°, the 3 global candidates held the
# source of 13, with the view's 2 of all 16). A second view turns the slice onto its foreground's principal axes,
# which a turned copy carries with it: a copy turned by any angle comes back near its source's own (§7.58).
TURN_DEGREES = 45.0
TURNED_CANDIDATES = 2
# White-noise level (unit intensities) from which a slice is also searched smoothed: twice the level that
# verification smooths down to. Clean brain and spine slices read at most 0.018 (method.md §7.9).
NOISY = 2.0 * NOISE_TARGET
# White-noise level from which a noisy slice's region search takes its smoothed view's tiles alone: such noise swamps
# the fine tiles of the slice as cut. A less noisy slice (a knee protocol's own noise reads 0.027-0.035) is
# region-searched as cut and smoothed, the two taking the candidates in turn (method.md §7.30).
HEAVY_NOISE = 2.0 * NOISY
# Candidates the global search shortlists per query slice; the region search adds REGION_CANDIDATES more. Its deeper
# ranks hold partial copies' sources, and it names whole copies' sources too: of 55 that the global search ranked
# 4th-6th on the benchmark's captures, it named 54 (method.md §7.29). It then adds NATIVE_ONLY_CANDIDATES more, which
# count only by their near-exact part at the slice's own resolution (method.md §7.46).
DEFAULT_CANDIDATES = 3
SEARCH_DEPTH = len(REFERENCE_COPIES)  # hits searched per candidate wanted: an original's copies share it
NEIGHBOUR_SLICES = 1  # a candidate this many slices or fewer from a better-ranked one of its volume waits for it
# Verified score of a neighbourhood's best-ranked candidate from which its waiting neighbours are verified
# too: half of verified_null.MIN_COPY_SCORE, below which nothing is called a copy (method.md §7.11).
NEIGHBOUR_GATE = 0.1
# A verified candidate whose square, in place, is smaller than the query grid's by more than this (in side) is
# verified again on a grid of the query cut to the candidate's square. Not a larger one: that cut would lower the
# query's resolution, which raised the verified null's top scores (method.md §7.32).
SQUARE_RATIO = 1.25

Searcher = Callable[[dict[str, np.ndarray], int], Neighbours]  # raw features, depth -> hits
RegionSearcher = Callable[[Tiles], RegionHits]  # raw tile features of query slices -> the region search's hits


class GridSource(Protocol):
    """Grids of original reference rows (thread-safe), and where each row's slice lies."""

    places: np.ndarray | None  # int64 [rows, 2]: (volume, slice) of every original row; None when unknown

    def __call__(self, rows: Sequence[int]) -> dict[int, Grid]:
        """{row: grid} of the rows whose pixels can be read."""
        ...


@dataclass(frozen=True)
class Shortlist:
    """The candidates of query slices: ``rows`` [n, K] original reference rows (-1 = none), and ``places``
    [n, K, 4] the tiles by which the region search named each one, in the framing ``framed`` [n, K] says
    (``region_search.RegionHits``; nan where it did not name the row); ``native_only`` [n, K]: the candidates that
    count only by their near-exact part at the query's own resolution (:func:`verify_slices`)."""

    rows: np.ndarray
    places: np.ndarray
    framed: np.ndarray
    native_only: np.ndarray

    @classmethod
    def of(cls, rows: np.ndarray) -> Shortlist:
        """Candidate rows the region search did not name."""
        none = np.zeros(rows.shape, dtype=bool)
        return cls(rows, np.full((*rows.shape, 4), np.nan), none, none.copy())


@dataclass(frozen=True)
class Verified:
    """The verified candidate named the source of one query slice (``verify_slices``): ``row`` is its original
    reference row (-1 and score 0 when there was no candidate), ``result`` its verification; ``score``: the largest
    verified score among its candidates; ``roughness``: the query's grid roughness
    (``slice_grid.roughness``, nan when it was not verified), which picks its verified null band;
    ``reproduced``: the largest near-exact part (``Verification.reproduced``) among its verified candidates;
    ``bent``: the largest bent score (``Verification.bent``) among them."""

    score: float
    row: int
    result: Verification | None
    roughness: float = math.nan
    reproduced: float = 0.0
    bent: float = 0.0


def noisy_slices(slices: Sequence[np.ndarray], settings: PreprocessSettings, level: float = NOISY) -> np.ndarray:
    """Positions of the slices whose white-noise level (``slice_grid.noise_level``) is at least
    ``level``: at least half their neighbour differences reach the median step of such noise
    (``slice_grid.steps_reaching``)."""
    noisy = [
        position
        for position, image in enumerate(slices)
        if steps_reaching(scale_unit(np.asarray(image, dtype=np.float32), settings), level) >= 0.5
    ]
    return np.asarray(noisy, dtype=np.int64)


def smoothed_view(slice2d: np.ndarray) -> np.ndarray:
    """The slice smoothed by a Gaussian of SMOOTH_SIGMA pixels."""
    return ndimage.gaussian_filter(np.asarray(slice2d, dtype=np.float32), SMOOTH_SIGMA)


def turned_views(slice2d: np.ndarray, settings: PreprocessSettings) -> tuple[np.ndarray, np.ndarray]:
    """The slice's views as :data:`TURNED_VIEWS` names them (bilinear, zero where its field of view does not reach):
    turned by TURN_DEGREES about its centre within its own canvas, and turned so that the principal axis of its
    foreground (``grid_moments.principal_axes``) lies along its rows, on a canvas that holds all of it."""
    image = np.asarray(slice2d, dtype=np.float32)
    axis, _ = principal_axes(second_moments((scaled_foreground(image, settings) > 0)[None]))
    turned = ndimage.rotate(image, TURN_DEGREES, reshape=False, order=1, cval=0.0)
    return turned, ndimage.rotate(image, float(axis[0]), reshape=True, order=1, cval=0.0)


def turned_hits(
    encoder: Encoder,
    slices: Sequence[np.ndarray],
    search: Searcher,
    original_row: np.ndarray,
    settings: PreprocessSettings,
    depth: int,
    *,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The hits (``view_hits``, ``depth`` deep) of each of the slices' :func:`turned_views`, in the order of
    :data:`TURNED_VIEWS`: their global features only, one batched forward pass and one search."""
    views = [turned_views(image, settings) for image in slices]
    ordered = [view[v] for v in range(len(TURNED_VIEWS)) for view in views]
    raw, _ = embed_slices_and_tiles(encoder, ordered, settings, tiled=0, batch_size=batch_size, cancel=cancel)
    rows, scores = view_hits(search(raw, depth), original_row)
    n = len(slices)
    return [(rows[v * n : (v + 1) * n], scores[v * n : (v + 1) * n]) for v in range(len(TURNED_VIEWS))]


def with_turned_candidates(listed: np.ndarray, turned: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """[n, k + TURNED_CANDIDATES · views]: the candidates [n, k] followed, view by view, by the first
    TURNED_CANDIDATES original rows of each turned view's hits (``view_hits``) not listed before them (-1 = none)."""
    width = listed.shape[1]
    out = np.full((len(listed), width + TURNED_CANDIDATES * len(turned)), -1, dtype=np.int64)
    out[:, :width] = listed
    for i in range(len(listed)):
        added: list[int] = []
        for rows, scores in turned:
            order = np.argsort(-scores[i], kind="stable")
            ranked = dict.fromkeys(int(r) for r in rows[i][order] if r >= 0)
            added += [r for r in ranked if r not in listed[i] and r not in added][:TURNED_CANDIDATES]
        out[i, width : width + len(added)] = added
    return out


def search_depth(k: int) -> int:
    """How many reference vectors to search per view to find ``k`` distinct originals."""
    return max(1, k) * SEARCH_DEPTH


def listed_before_regions(k: int) -> int:
    """How many candidates a slice lists before the region search's: ``k`` from the as-cut (and smoothed) search,
    then TURNED_CANDIDATES from each turned view (:func:`with_turned_candidates`)."""
    return k + TURNED_CANDIDATES * len(TURNED_VIEWS)


def view_hits(found: Neighbours, original_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A view's search hits as (original rows [n, m], scores [n, m]); -1 and -inf where none."""
    originals = np.append(np.asarray(original_row, dtype=np.int64), -1)
    return originals[found.ids], np.nan_to_num(found.scores.astype(np.float64), nan=-np.inf)


def shortlist(hits: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """[n, k] distinct original rows taken from the views in turn, best remaining first (-1 = none),
    so that no view's ranking crowds out another's."""
    n = len(hits[0][0])
    out = np.full((n, k), -1, dtype=np.int64)
    for i in range(n):
        ranked = []
        for rows, scores in hits:
            order = np.argsort(-scores[i], kind="stable")
            ranked.append(list(dict.fromkeys(int(r) for r in rows[i][order] if r >= 0)))
        chosen: list[int] = []
        for position in range(max(len(r) for r in ranked)):
            for view in ranked:
                if position < len(view) and view[position] not in chosen and len(chosen) < k:
                    chosen.append(view[position])
        out[i, : len(chosen)] = chosen
    return out


def candidates(
    encoder: Encoder,
    slices: Sequence[np.ndarray],
    as_cut: Neighbours,
    search: Searcher,
    original_row: np.ndarray,
    settings: PreprocessSettings,
    *,
    k: int = DEFAULT_CANDIDATES,
    search_regions: RegionSearcher | None = None,
    tiles: Tiles | None = None,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> Shortlist:
    """[n, k + TURNED_CANDIDATES · 2 (+ m + extra)] candidates of the slices: ``as_cut`` (the audit's own search, at
    least :func:`search_depth` deep), merged for noisy slices with the search of their smoothed view, then those of
    their :func:`turned_views` not listed yet (:func:`turned_hits`, :func:`with_turned_candidates`), then, given
    ``search_regions`` and the slices' ``tiles``, the first :data:`REGION_CANDIDATES` of the region search's rows not
    already among them, then :data:`NATIVE_ONLY_CANDIDATES` more, native-only (:func:`with_region_candidates`). A
    noisy slice's region search takes its smoothed view's tiles too (from the forward pass that view gets anyway),
    first, and alone from :data:`HEAVY_NOISE` (method.md §7.30)."""
    n = len(slices)
    if n == 0:
        return Shortlist.of(np.zeros((0, listed_before_regions(k)), dtype=np.int64))
    regions = None if search_regions is None or tiles is None else search_regions(tiles)
    hits = [view_hits(as_cut, original_row)]
    noisy = noisy_slices(slices, settings)
    if len(noisy):
        views = [smoothed_view(slices[i]) for i in noisy]
        tiled = None if regions is not None else 0
        raw, view_tiles = embed_slices_and_tiles(
            encoder, views, settings, tiled=tiled, batch_size=batch_size, cancel=cancel
        )
        rows, scores = view_hits(search(raw, search_depth(k)), original_row)
        all_rows = np.full((n, rows.shape[1]), -1, dtype=np.int64)
        all_scores = np.full((n, rows.shape[1]), -np.inf)
        all_rows[noisy], all_scores[noisy] = rows, scores
        hits.append((all_rows, all_scores))
        if regions is not None and view_tiles is not None and search_regions is not None:
            regions = with_smoothed_regions(regions, slices, noisy, search_regions(view_tiles), settings)
    depth = search_depth(listed_before_regions(k))
    turned = turned_hits(encoder, slices, search, original_row, settings, depth, batch_size=batch_size, cancel=cancel)
    listed = with_turned_candidates(shortlist(hits, k), turned)
    return Shortlist.of(listed) if regions is None else with_region_candidates(listed, regions)


def with_smoothed_regions(
    regions: RegionHits,
    slices: Sequence[np.ndarray],
    noisy: np.ndarray,
    smoothed: RegionHits,
    settings: PreprocessSettings,
) -> RegionHits:
    """The region search's hits of the slices as cut (``regions``) with those of the smoothed views of the slices
    at ``noisy`` (``smoothed``, in that order): taken in turn with a slice's own, the view's first, and alone
    from :data:`HEAVY_NOISE` (method.md §7.30)."""
    heavy = noisy_slices([slices[i] for i in noisy], settings, HEAVY_NOISE)
    return regions.with_view(noisy, smoothed, alone=heavy)


def with_region_candidates(
    listed: np.ndarray, regions: RegionHits, m: int | None = None, extra: int = NATIVE_ONLY_CANDIDATES
) -> Shortlist:
    """[n, k + m + extra]: the candidates [n, k] followed by the first m + extra of the region search's rows (in its
    order: the patch search's first, ``RegionIndex.search``) that are not among them (-1 = none), the last ``extra``
    places native-only (:class:`Shortlist`); every candidate the region search named carries its tiles' places. ``m``
    is REGION_CANDIDATES and the places the patch search may fill (``RegionHits.patched``) unless given."""
    m = REGION_CANDIDATES + regions.patched if m is None else m
    out = Shortlist.of(np.full((len(listed), listed.shape[1] + m + extra), -1, dtype=np.int64))
    out.rows[:, : listed.shape[1]] = listed
    out.native_only[:, listed.shape[1] + m :] = True
    for i, rows in enumerate(regions.rows):
        named: dict[int, int] = {}  # row -> its first position in the region search's order
        for position, r in enumerate(rows.tolist()):
            if r >= 0:
                named.setdefault(int(r), position)
        added = [r for r in named if r not in listed[i]][: m + extra]
        out.rows[i, listed.shape[1] : listed.shape[1] + len(added)] = added
        for j, r in enumerate(out.rows[i].tolist()):
            if r in named:
                out.places[i, j], out.framed[i, j] = regions.places[i, named[r]], regions.framed[i, named[r]]
    return out


def slice_places(provenance: Provenance) -> np.ndarray:
    """int64 [rows, 2]: (volume, slice) of every provenance row, one volume number per (source, array axis),
    numbered in order of first appearance."""
    numbers: dict[tuple[str, int], int] = {}
    keys = zip(provenance.source, provenance.array_axis)
    volume = np.fromiter((numbers.setdefault(key, len(numbers)) for key in keys), np.int64, len(provenance))
    return np.stack([volume, np.fromiter(provenance.slice, np.int64, len(provenance))], axis=1)


def waits_for(rows: Sequence[int], places: np.ndarray | None, named: Sequence[bool] = ()) -> list[int]:
    """For candidates in rank order: the position of the candidate each one waits for, its own when it
    leads a neighbourhood. A candidate within NEIGHBOUR_SLICES of a better-ranked one of the same volume
    joins that one's neighbourhood (neighbouring slices are near-duplicates; method.md §7.11), unless the
    region search named it (``named`` [len(rows)], none when empty): a tile of the query matched that very
    slice, and a copied region need not carry over to its neighbour (method.md §7.26)."""
    leader = list(range(len(rows)))
    if places is None:
        return leader
    for j, row in enumerate(rows):
        if j < len(named) and named[j]:
            continue
        for i in range(j):
            volume, position = places[rows[i]]
            if volume == places[row, 0] and abs(position - places[row, 1]) <= NEIGHBOUR_SLICES:
                leader[j] = leader[i]
                break
    return leader


def verify_slices(
    slices: Sequence[np.ndarray],
    shortlisted: np.ndarray,
    grids: GridSource,
    settings: PreprocessSettings,
    cancel: threading.Event | None = None,
    places: np.ndarray | None = None,
    framed: np.ndarray | None = None,
    native_only: np.ndarray | None = None,
) -> list[Verified]:
    """Verify every slice against its shortlisted rows [n, k]; name the candidate first in :func:`_naming_order`
    (among equals, the best-ranked) with the largest score, near-exact part and bent score among them. Each
    neighbourhood's best-ranked candidate is verified first, its neighbours (:func:`waits_for`) only when it scores
    at least NEIGHBOUR_GATE (or could not be read); a candidate the region search named (finite ``places``) never
    waits.
    ``places`` [n, k, 4]: the tiles by which the region search named each candidate, in the framing ``framed``
    [n, k] says (:class:`Shortlist`; none when None), which say where a moved copy's in-place hypothesis is
    sought (``verification.verify_batch``). A candidate set in ``native_only`` [n, k] (none when None) counts only
    where its near-exact part at the query's own resolution (``native_check.native_part``) is its verification,
    above its grid's score and near-exact part, and then by that part alone (:func:`_counted`): a look-alike agrees
    loosely on the grid, a copy is reproduced (method.md §7.46).

    The slices are verified in chunks of batched pairs (``verification.pair_chunks``) on the pixel-work
    threads (:mod:`pixel_threads`), each chunk asking ``grids`` for its reference grids, so that one
    thread makes grids while another verifies pairs; ``cancel`` is checked before each chunk."""
    listed = [[int(r) for r in rows if r >= 0] for rows in shortlisted]
    tiles = np.full((*np.shape(shortlisted), 4), np.nan) if places is None else np.asarray(places, dtype=np.float64)
    whole = np.zeros(np.shape(shortlisted), dtype=bool) if framed is None else np.asarray(framed, dtype=bool)
    guides = [
        [(pair, bool(f)) for r, pair, f in zip(rows, pairs, fs) if r >= 0]
        for rows, pairs, fs in zip(shortlisted, tiles, whole)
    ]
    asked = [i for i, rows in enumerate(listed) if rows]
    named = [[bool(np.isfinite(pair).all()) for pair, _ in pairs] for pairs in guides]
    leaders = {i: waits_for(listed[i], grids.places, named[i]) for i in asked}
    only = np.zeros(np.shape(shortlisted), dtype=bool) if native_only is None else np.asarray(native_only, dtype=bool)
    natives = [[bool(o) for r, o in zip(rows, marks) if r >= 0] for rows, marks in zip(shortlisted, only)]

    def verify_chunk(run: range) -> dict[int, Verified]:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        chosen = [asked[j] for j in run]
        first = {i: [j for j, lead in enumerate(leaders[i]) if lead == j] for i in chosen}
        queries = dict(zip(chosen, to_grids([slices[i] for i in chosen], settings)))
        found, reference = _verify_positions(queries, listed, guides, natives, first, grids)
        then = {
            i: [j for j, lead in enumerate(leaders[i]) if lead != j and _verifies(found[i].get(lead))] for i in chosen
        }
        waited, read = _verify_positions(queries, listed, guides, natives, then, grids)
        for i, results in waited.items():
            found[i] |= results
        cut_from = {i: slices[i] for i in chosen}
        _verify_in_candidate_squares(cut_from, queries, listed, guides, natives, found, reference | read, settings)
        for i in chosen:
            found[i] = _counted(found[i], natives[i])
        verified = {}
        for i, results in found.items():
            if results:
                j = max(sorted(results), key=lambda position: _naming_order(results[position]))  # first of equals
                score = max(result.score for result in results.values())
                reproduced = max(result.reproduced for result in results.values())
                bent = max(result.bent for result in results.values())
                verified[i] = Verified(float(score), listed[i][j], results[j], queries[i].roughness, reproduced, bent)
        return verified

    out = [Verified(0.0, -1, None)] * len(slices)
    for verified in thread_map(verify_chunk, pair_chunks([len(listed[i]) for i in asked])):
        for i, best in verified.items():
            out[i] = best
    return out


def _naming_order(result: Verification) -> tuple[float, float, float, float]:
    """The order in which a slice's verified candidates are named its source: by bent score (``Verification.bent``:
    a look-alike, such as the same slice in another echo, can score a little higher as it stands, but bending the
    source onto a warped or blended copy explains it better; method.md §7.69), then by score; among equal scores
    (two references that differ only in contrast can both reach the capped score of 1) by how well the aligned
    intensities match over the copied region (``Verification.likeness``), then by the score on the grid alone."""
    return result.bent, result.score, result.likeness, result.on_grid


def _counted(results: dict[int, Verification], native_only: list[bool]) -> dict[int, Verification]:
    """The verifications {position: verification} that count: a native-only candidate's (``native_only`` by
    position) only where its near-exact part at the slice's own resolution raised its score above the grid's, as
    that part alone (its score, near-exact part and bent score)."""
    out = {}
    for j, result in results.items():
        if not native_only[j]:
            out[j] = result
        elif result.score > result.on_grid:
            out[j] = replace(result, reproduced=result.score, bent=result.score)
    return out


def verify_shortlist(
    slices: Sequence[np.ndarray],
    shortlisted: Shortlist,
    grids: GridSource,
    settings: PreprocessSettings,
    cancel: threading.Event | None = None,
) -> list[Verified]:
    """:func:`verify_slices` of the slices against their :class:`Shortlist`."""
    return verify_slices(
        slices,
        shortlisted.rows,
        grids,
        settings,
        cancel,
        shortlisted.places,
        shortlisted.framed,
        shortlisted.native_only,
    )


def _verifies(leader: Verification | None) -> bool:
    """Whether a neighbourhood's best-ranked candidate lets its neighbours be verified: it scored at least
    NEIGHBOUR_GATE, or its pixels could not be read (None)."""
    return leader is None or leader.score >= NEIGHBOUR_GATE


def _verify_positions(
    queries: dict[int, Grid],
    listed: list[list[int]],
    guides: list[list[tuple[np.ndarray, bool]]],
    natives: list[list[bool]],
    positions: dict[int, list[int]],
    grids: GridSource,
) -> tuple[dict[int, dict[int, Verification]], dict[int, Grid]]:
    """{query: {position: verification}} of the candidates at ``positions`` of each query's list whose
    grids can be read (one batch), each with its region tiles' places and whether they are fractions of the whole
    fields of view (``guides``, parallel to ``listed``), carried onto the two grids; and {row: grid} of those
    candidates. The native-only candidates (``natives``, parallel to ``listed``) get no bend: :func:`_counted`
    replaces their bent score."""
    reference = grids(sorted({listed[i][j] for i, wanted in positions.items() for j in wanted}))
    usable = {i: [j for j in wanted if listed[i][j] in reference] for i, wanted in positions.items()}
    asked = [i for i, wanted in usable.items() if wanted]

    def on_grids(i: int, j: int) -> np.ndarray:
        pair, whole = guides[i][j]
        return grid_places(pair, queries[i], reference[listed[i][j]]) if whole else pair

    results = verify_batch(
        [queries[i] for i in asked],
        [[reference[listed[i][j]] for j in usable[i]] for i in asked],
        places=[[on_grids(i, j) for j in usable[i]] for i in asked],
        bend=[[not natives[i][j] for j in usable[i]] for i in asked],
    )
    found: dict[int, dict[int, Verification]] = {i: {} for i in queries}
    for i, verified in zip(asked, results):
        found[i] = dict(zip(usable[i], verified))
    return found, reference


def _verify_in_candidate_squares(
    slices: dict[int, np.ndarray],
    queries: dict[int, Grid],
    listed: list[list[int]],
    guides: list[list[tuple[np.ndarray, bool]]],
    natives: list[list[bool]],
    found: dict[int, dict[int, Verification]],
    reference: dict[int, Grid],
    settings: PreprocessSettings,
) -> None:
    """Verify again, on a grid of the query cut to the candidate's own square carried in place (moved where the
    region tiles saw a moved copy; ``verification.in_place_square``), each verified candidate whose square is
    smaller than the query grid's by more than SQUARE_RATIO in side; keep the higher score (``found`` is updated). A
    training slice copied into a larger host (a quarter of a small slice over a large one) otherwise fills a small
    part of the query grid, with too few pixels to reproduce near-exactly (method.md §7.32). ``reference``: the
    verified candidates' grids by row; ``natives``: the native-only candidates by position, which get no bend."""
    wanted, squares = [], []
    for i, results in found.items():
        for j in results:
            candidate = reference[listed[i][j]]
            pair, whole = guides[i][j]
            on_grids = grid_places(pair, queries[i], candidate) if whole else pair
            square = in_place_square(queries[i], candidate, on_grids)
            if square[1] * SQUARE_RATIO < queries[i].side and _overlaps(square, slices[i]):
                wanted.append((i, j, on_grids))
                squares.append(square)
    if not wanted:
        return
    cut = to_grids([slices[i] for i, _, _ in wanted], settings, squares)
    placed = [[regrid_places(on_grids, queries[i], grid)] for (i, _, on_grids), grid in zip(wanted, cut)]
    results = verify_batch(
        cut,
        [[reference[listed[i][j]]] for i, j, _ in wanted],
        places=placed,
        bend=[[not natives[i][j]] for i, j, _ in wanted],
    )
    for (i, j, _), [again] in zip(wanted, results):
        first = found[i][j]
        best = again if again.score > first.score else first
        found[i][j] = replace(
            best, reproduced=max(first.reproduced, again.reproduced), bent=max(first.bent, again.bent)
        )


def _overlaps(square: tuple[tuple[int, int], int], slice2d: np.ndarray) -> bool:
    """Whether a square (corner (row, col), side) holds any pixel of the slice."""
    (top, left), side = square
    rows, cols = np.shape(slice2d)
    return top < rows and left < cols and top + side > 0 and left + side > 0


class SliceGrids(GridCache):
    """A thread-safe grid source over slices held in memory (row = position), each grid made once."""

    def __init__(self, slices: Sequence[np.ndarray], settings: PreprocessSettings, places: np.ndarray | None):
        super().__init__(lambda rows: {row: slices[row] for row in rows}, settings)
        self.places = places
