"""Issue 12 experiment: global search, then pairwise verification of each query against its candidates.

    python tools/verification_experiment.py [--anatomy brain spine] [--k 5 10] [--seed 0] [--out /tmp/verification]
    OMP_NUM_THREADS=1 python tools/verification_experiment.py --cost

Per anatomy, subjects are split (seeded) into an indexed training set (some of whose slices are
copied), novel people (test) and other held-out people (the null). Every query slice, copy,
novel and null alike, gets each edit of ``EDITS`` (benchmark conditions of ``augment.py``).
Prints per edit: recall of the
true source among the candidates, AUROC copy vs novel and flag rates at α for the global
similarity (index null, as the audit flags) and for the verified score (threshold from the
held-out null pooled over all edits, i.e. the null goes through the same pipeline).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from MemorizationIndexLib.augment import augment_condition
from MemorizationIndexLib.baselines import auroc
from MemorizationIndexLib.embedding import embed_slices
from MemorizationIndexLib.index_build import BuildOptions, SliceSet, build_index, collect_slices
from MemorizationIndexLib.preprocess import PreprocessSettings, scale_unit
from MemorizationIndexLib.reference_index import ReferenceIndex
from MemorizationIndexLib.scoring import NullModel
from MemorizationIndexLib.slice_grid import Grid, to_grid
from MemorizationIndexLib.transforms import ORIGINAL
from MemorizationIndexLib.verification import verify, verify_many

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# anatomy: (files, training subjects, copied among them, novel subjects, null subjects, slice stride of the
# index, slice stride of the novel and null people: the null needs > 1 / ALPHA edited slices)
SETUPS = {
    "brain": (DATA / "brain" / "ds002748", 10, 2, 4, 4, 6, 4),
    "spine": (DATA / "spine" / "myosegmentum", 11, 5, 6, 6, 2, 1),
}
ALPHA = 0.001
DENOISE_SIGMA = 2.0  # pixels of the query as given


@dataclass
class Queries:
    """Query slices of one role with, per slice, the edit and (copies) the true source original row."""

    images: list[np.ndarray] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)  # original row of the copied slice; -1 for people in no index
    halves: list[np.ndarray | None] = field(default_factory=list)  # for half copies: bool mask of the copied half


# The edits of this experiment, as the benchmark's generator-like conditions (augment.py) name them.
EDIT_CONDITIONS = {
    "clean": "clean",
    "rician": "rician",
    "half": "half",
    "chain": "chain",
    "transpose": "transpose",
    "rot90": "rot90",
    "rot_large": "rot_large",
    "translate": "shift_fill",
    "zoom_in": "zoom_in",
    "zoom_out": "zoom_out",
    "bias": "bias",
}
EDITS = tuple(EDIT_CONDITIONS)


def _edited(
    slices: SliceSet, fill: SliceSet, rows: list[int], rng: np.random.Generator, queries: Queries, sources: list[int]
) -> None:
    """Every slice of ``rows`` under every edit; ``fill`` provides the other half of half copies."""
    settings = PreprocessSettings()
    for edit in EDITS:
        for row, source in zip(rows, sources):
            unit = scale_unit(slices.slices[row], settings)
            other = scale_unit(fill.slices[int(rng.integers(len(fill.slices)))], settings)
            edited = augment_condition(unit, EDIT_CONDITIONS[edit], rng, other=other)
            queries.images.append(edited.image)
            queries.edits.append(edit)
            queries.sources.append(source)
            queries.halves.append(edited.copy_mask if edit == "half" and source >= 0 else None)


def search(index: ReferenceIndex, images: list[np.ndarray], k: int) -> tuple[np.ndarray, list[tuple[np.ndarray, ...]]]:
    """Global similarity [n] of the queries as cut (the audit's), and per view (as cut, transposed,
    smoothed with a Gaussian of DENOISE_SIGMA pixels) the original rows [n, k] of the top references
    (flipped and rotated copies in the index point at their originals; -1 = none) with their
    aggregated similarities [n, k]."""
    settings = PreprocessSettings.from_dict(index.config["preprocessing"])
    encoder = index.load_encoder()
    originals = np.append(np.asarray(index.provenance.original_row), -1)
    views = (images, [x.T for x in images], [ndimage.gaussian_filter(x, DENOISE_SIGMA) for x in images])
    found = [index.search(index.whiten(embed_slices(encoder, view, settings)), k=k) for view in views]
    return found[0].similarity, [(originals[f.ids], np.nan_to_num(f.scores, nan=-np.inf)) for f in found]


def shortlist(views: list[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """[n, k] the k distinct original rows of highest similarity over the views (-1 = none)."""
    rows = np.concatenate([v[0] for v in views], axis=1)
    scores = np.concatenate([v[1] for v in views], axis=1)
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i in range(len(out)):
        ranked = rows[i][np.argsort(-scores[i], kind="stable")]
        distinct = list(dict.fromkeys(r for r in ranked if r >= 0))[:k]
        out[i, : len(distinct)] = distinct
    return out


def verified(
    index: ReferenceIndex, images: list[np.ndarray], cands: np.ndarray, grids: dict[int, Grid]
) -> tuple[np.ndarray, list]:
    """Verification scores [n, k] of every query against its candidates (0 where none), and per
    query the Verification of its best candidate (None without candidates)."""
    prov = index.provenance
    scores, best = np.zeros(cands.shape), []
    for i, image in enumerate(images):
        columns = [j for j, row in enumerate(cands[i]) if row >= 0]
        for row in cands[i, columns]:
            if row not in grids:
                grids[row] = to_grid(index.reference_slice(prov.source[row], prov.slice[row]))
        results = verify_many(to_grid(image), [grids[row] for row in cands[i, columns]])
        scores[i, columns] = [result.score for result in results]
        best.append(max(results, key=lambda result: result.score) if results else None)
    return scores, best


def best_of(scores: np.ndarray, cands: np.ndarray, subjects: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Among the first k candidates: the best score [n], its margin over the best candidate of
    another subject (0 for none) [n], and the best candidate's row [n]."""
    top = np.argmax(scores[:, :k], axis=1)
    rows = np.take_along_axis(cands, top[:, None], axis=1)[:, 0]
    best = scores[np.arange(len(scores)), top]
    other = np.where((subjects[cands[:, :k]] != subjects[rows][:, None]) & (cands[:, :k] >= 0), scores[:, :k], 0.0)
    return best, best - other.max(axis=1), rows


def _box_iou(box: tuple[int, int, int, int] | None, mask: np.ndarray) -> float:
    """IoU of a (row0, col0, row1, col1) box with the bounding box of a bool mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if box is None or rows.size == 0:
        return 0.0
    truth = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    inter = max(0, min(box[2], truth[2]) - max(box[0], truth[0])) * max(
        0, min(box[3], truth[3]) - max(box[1], truth[1])
    )
    union = (box[2] - box[0]) * (box[3] - box[1]) + (truth[2] - truth[0]) * (truth[3] - truth[1]) - inter
    return inter / union


def run(anatomy: str, ks: list[int], seed: int, out: Path) -> None:
    """Build the index, score the three query sets and print the per-edit table."""
    folder, n_train, n_copied, n_novel, n_null, stride, query_stride = SETUPS[anatomy]
    rng = np.random.default_rng(seed)
    files = [str(p) for p in rng.permutation(sorted(folder.glob("*.nii.gz")))]
    train, novel_files = files[:n_train], files[n_train : n_train + n_novel]
    null_files = files[n_train + n_novel : n_train + n_novel + n_null]
    settings = PreprocessSettings()
    start = time.perf_counter()
    index = build_index(train, out / anatomy / "index", BuildOptions(slice_stride=stride, overwrite=True, seed=seed))
    print(
        f"{anatomy}: index of {index.n_reference_slices} slices of {n_train} subjects built in "
        f"{time.perf_counter() - start:.0f} s"
    )
    prov = index.provenance
    indexed = SliceSet()
    copied_sources = set(train[:n_copied])
    copied_paths = {str(Path(f).resolve()) for f in copied_sources}
    rows = [r for r in range(len(prov)) if prov.flip[r] == ORIGINAL and prov.source[r] in copied_paths]
    indexed.slices = [index.reference_slice(prov.source[r], prov.slice[r]) for r in rows]
    novel = collect_slices(novel_files, axis="auto", preprocessing=settings, slice_stride=query_stride)
    null = collect_slices(null_files, axis="auto", preprocessing=settings, slice_stride=query_stride)
    sets = {"copy": Queries(), "novel": Queries(), "null": Queries()}
    _edited(indexed, novel, list(range(len(rows))), rng, sets["copy"], rows)
    _edited(novel, novel, list(range(len(novel.slices))), rng, sets["novel"], [-1] * len(novel.slices))
    _edited(null, null, list(range(len(null.slices))), rng, sets["null"], [-1] * len(null.slices))
    grids: dict[int, Grid] = {}
    k = max(ks)
    results = {}
    for role, queries in sets.items():
        start = time.perf_counter()
        sim, views = search(index, queries.images, 8 * k)
        cands, plain, two = shortlist(views, k), shortlist(views[:1], 4 * k), shortlist(views[:2], k)
        searched = time.perf_counter() - start
        start = time.perf_counter()
        v, v_best = verified(index, queries.images, cands, grids)
        took = time.perf_counter() - start
        print(
            f"  {role}: {len(queries.images)} queries, search {searched:.0f} s, verification {took:.0f} s "
            f"({1000 * took / len(queries.images):.0f} ms per query, k={k})"
        )
        results[role] = (cands, plain, sim, v, v_best, two)
    saved = {
        f"{role}_{name}": np.asarray(r[j])
        for role, r in results.items()
        for name, j in (("candidates", 0), ("global", 2), ("verified", 3))
    }
    saved.update({f"{role}_edits": np.asarray(q.edits) for role, q in sets.items()})
    np.savez(out / anatomy / "scores.npz", copy_sources=np.asarray(sets["copy"].sources), **saved)
    subjects = np.asarray(prov.subject + [""])  # row -1 (no candidate) reads the last entry
    for kk in sorted(ks):
        report(sets, results, subjects, index.null_model, kk, n_null)


def _recall(table: np.ndarray, queries: list[int], truth: np.ndarray, k: int) -> float:
    """Share of the queries whose true source is among their first k candidates in ``table``."""
    return float(np.mean([t in table[i, :k] for i, t in zip(queries, truth)]))


def report(
    sets: dict[str, Queries], results: dict, subjects: np.ndarray, global_null: NullModel, k: int, n_null: int
) -> None:
    """Print the per-edit table of the first k candidates."""
    best = {role: best_of(r[3], r[0], subjects, k) for role, r in results.items()}
    verified_null, margin_null = NullModel(best["null"][0]), NullModel(best["null"][1])
    print(
        f"  k={k}: verified-score threshold at α={ALPHA}: {verified_null.threshold(ALPHA).similarity:.3f} "
        f"(null of {len(best['null'][0])} edited slices of {n_null} other people)"
    )
    print(
        "  edit       | recall@1 @k (as cut, +transposed, +smoothed) @4k | AUROC global / verified / margin"
        " | copies flagged global / verified / margin | novel flagged global / verified / margin"
        " | top-1 after verification | half box IoU≥0.5"
    )
    nulls = (global_null, verified_null, margin_null)
    for edit in EDITS:
        c = [i for i, e in enumerate(sets["copy"].edits) if e == edit]
        n = [i for i, e in enumerate(sets["novel"].edits) if e == edit]
        cands, plain, sim, _, v_best, two = results["copy"]
        truth = np.asarray(sets["copy"].sources)[c]
        copies = (sim[c], best["copy"][0][c], best["copy"][1][c])
        novel = (results["novel"][2][n], best["novel"][0][n], best["novel"][1][n])
        au = [auroc(a, b) for a, b in zip(copies, novel)]
        flags = [np.mean(m.p_value(x) < ALPHA) for m, x in zip(nulls, copies)]
        fps = [np.mean(m.p_value(x) < ALPHA) for m, x in zip(nulls, novel)]
        top1 = np.mean(best["copy"][2][c] == truth)
        iou = ""
        if edit == "half":
            located = [_box_iou(v_best[i].box if v_best[i] else None, sets["copy"].halves[i]) >= 0.5 for i in c]
            iou = f"{np.mean(located):.2f}"
        tables = ((plain, 1), (plain, k), (two, k), (cands, k), (plain, 4 * k))
        recalls = [_recall(table, c, truth, m) for table, m in tables]
        print(
            f"  {edit:10s} | {' '.join(f'{r:.2f}' for r in recalls)}"
            f" | {' / '.join(f'{a:.3f}' for a in au)} | {' / '.join(f'{a:.2f}' for a in flags)}"
            f" | {' / '.join(f'{a:.3f}' for a in fps)} | {top1:.2f} | {iou}"
        )


def cost(pairs: int = 40, k: int = 5) -> None:
    """Print the CPU time of putting a slice on the grid, of verifying one pair (brain slices of two
    people) and, per pair, of verifying a query against k candidates at once (``verify_many``)."""
    folder = SETUPS["brain"][0]
    settings = PreprocessSettings()
    first, second = (
        collect_slices([folder / f"sub-0{i}_T1w.nii.gz"], axis="auto", preprocessing=settings).slices for i in (1, 2)
    )
    start = time.process_time()
    grids = [(to_grid(a), to_grid(b)) for a, b in zip(first[:pairs], second[:pairs])]
    gridded = time.process_time()
    for a, b in grids:
        verify(a, b)
    done = time.process_time()
    for i in range(0, len(grids), k):
        verify_many(grids[i][0], [b for _, b in grids[i : i + k]])
    batched = time.process_time()
    print(
        f"CPU per slice put on the grid {1000 * (gridded - start) / (2 * len(grids)):.1f} ms, "
        f"per verified pair {1000 * (done - gridded) / len(grids):.1f} ms, "
        f"per pair verified k={k} at once {1000 * (batched - done) / len(grids):.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anatomy", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10], help="candidates per query (a table each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/verification"))
    parser.add_argument("--cost", action="store_true", help="only print the CPU cost per slice and per pair")
    args = parser.parse_args()
    if args.cost:
        cost()
        raise SystemExit(0)
    for name in args.anatomy:
        run(name, args.k, args.seed, args.out)
