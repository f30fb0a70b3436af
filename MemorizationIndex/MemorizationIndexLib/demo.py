"""The embedded demo: real MRI shipped inside pip packages, planted copies, an audit, a truth table.

Training subjects: dipy's ``S0_10slices`` and ``aniso_vox`` and nibabel's ``example4d`` (first
volume). Novel subjects: dipy's ``test_piesno`` and nibabel's ``anatomical``. Two "generated"
volumes mix novel slices with augmented copies of training slices; the audit must find the
copies and their sources and leave the novel slices alone. Then three "checkpoint" folders of PNG
samples with an increasing share of copies are audited as sets and compared.
"""

from __future__ import annotations

import csv
import importlib.util
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .audit import audit_paths, query_slices
from .augment import CONDITIONS, augment_slice
from .errors import UserError
from .index_build import BuildOptions, build_index
from .preprocess import PreprocessSettings, nonempty_mask, scale_unit, to_square
from .report import write_report
from .transforms import resize_bilinear

GENERATED_SIZE = 128
TRAINING = (
    ("dipy", "data/files/S0_10slices.nii.gz"),
    ("dipy", "data/files/aniso_vox.nii.gz"),
    ("nibabel", "tests/data/example4d.nii.gz"),
)
NOVEL = (("dipy", "data/files/test_piesno.nii.gz"), ("nibabel", "tests/data/anatomical.nii"))
CHECKPOINTS = (("ckpt-010k", 0), ("ckpt-020k", 4), ("ckpt-040k", 10))  # (folder, planted copies among the samples)
SAMPLES_PER_CHECKPOINT = 20


def packaged_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package (no import of the package needed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(
            f"the demo needs the '{package}' package for its real MRI; run 'make demo' or 'pip install {package}'"
        )
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed '{package}' package; reinstall it")
    return path


def load_packaged_volume(package: str, relative: str) -> np.ndarray:
    """A packaged NIfTI as a float32 array [slices, rows, cols] (first volume of 4D, axial order)."""
    import nibabel

    data = np.asarray(nibabel.load(packaged_file(package, relative)).dataobj, dtype=np.float32)
    while data.ndim > 3:
        data = data[..., 0]
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))


def _write_volume(slices: np.ndarray, path: Path, spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)) -> None:
    image = sitk.GetImageFromArray(np.asarray(slices, dtype=np.float32))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def _nonempty(volume: np.ndarray) -> list[int]:
    return [int(k) for k in np.flatnonzero(nonempty_mask(volume, PreprocessSettings()))]


def make_demo_data(out: Path, seed: int = 0) -> tuple[list[Path], list[Path], list[dict]]:
    """Write training volumes and two generated volumes; return their paths and the truth rows."""
    rng = np.random.default_rng(seed)
    train_dir, generated_dir = out / "training", out / "generated"
    train_dir.mkdir(parents=True, exist_ok=True)
    generated_dir.mkdir(parents=True, exist_ok=True)
    training = []
    for package, relative in TRAINING:
        volume = load_packaged_volume(package, relative)
        path = train_dir / f"{package}-{Path(relative).name.split('.')[0]}.nii.gz"
        _write_volume(volume, path)
        training.append((path, volume))
    novel = [load_packaged_volume(p, r) for p, r in NOVEL]
    truth: list[dict] = []
    generated = []
    conditions = list(CONDITIONS)
    square = (GENERATED_SIZE, GENERATED_SIZE)
    for g, novel_volume in enumerate(novel):
        slices, rows = [], []
        for k in _nonempty(novel_volume):
            slices.append(resize_bilinear(to_square(scale_unit(novel_volume[k], PreprocessSettings())), square))
            rows.append({"kind": "novel", "condition": "", "source": NOVEL[g][1], "source_slice": k})
        for condition in conditions:
            path, volume = training[int(rng.integers(len(training)))]
            k = int(rng.choice(_nonempty(volume)))
            copy, _ = augment_slice(scale_unit(volume[k], PreprocessSettings()), condition, rng)
            position = int(rng.integers(len(slices) + 1))
            slices.insert(position, resize_bilinear(to_square(copy), square))
            rows.insert(
                position, {"kind": "copy", "condition": condition, "source": str(path.resolve()), "source_slice": k}
            )
        gen_path = generated_dir / f"generated-{g + 1}.nii.gz"
        _write_volume(np.stack(slices), gen_path)
        generated.append(gen_path)
        truth.extend({"volume": str(gen_path), "slice": i, **row} for i, row in enumerate(rows))
    with open(out / "truth.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["volume", "slice", "kind", "condition", "source", "source_slice"], lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(truth)
    return [p for p, _ in training], generated, truth


def _write_png(slice01: np.ndarray, path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.round(np.clip(slice01, 0.0, 1.0) * 255).astype(np.uint8)), str(path))


def make_checkpoint_sets(out: Path, seed: int = 1) -> tuple[list[Path], list[int]]:
    """Write one folder of PNG samples per "training checkpoint" (CHECKPOINTS), novel slices with an
    increasing number of augmented copies of training slices; return the folders and the copies."""
    rng = np.random.default_rng(seed)
    training = [load_packaged_volume(p, r) for p, r in TRAINING]
    novel = [(v, k) for v in (load_packaged_volume(p, r) for p, r in NOVEL) for k in _nonempty(v)]
    folders, planted = [], []
    for name, copies in CHECKPOINTS:
        folder = out / "checkpoints" / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        for i in range(SAMPLES_PER_CHECKPOINT):
            if i < copies:
                volume = training[int(rng.integers(len(training)))]
                sample, _ = augment_slice(
                    scale_unit(volume[int(rng.choice(_nonempty(volume)))], PreprocessSettings()),
                    str(rng.choice(CONDITIONS)),
                    rng,
                )
            else:
                volume, k = novel[int(rng.integers(len(novel)))]
                sample = scale_unit(volume[k], PreprocessSettings())
            name = f"sample-{int(rng.integers(10**6)):06d}.png"
            _write_png(resize_bilinear(to_square(sample), (GENERATED_SIZE, GENERATED_SIZE)), folder / name)
        folders.append(folder)
        planted.append(copies)
    return folders, planted


def _compare_checkpoints(index, out: Path, device: str) -> None:
    """Audit the checkpoint folders as sets and print flagged fraction and mean mi per checkpoint."""
    folders, planted = make_checkpoint_sets(out)
    audits = audit_paths(index, folders, out / "checkpoints-audit", device=device)
    write_report(out / "checkpoints-audit", index=index, query_slices=query_slices(audits))
    print(f"\ncheckpoints compared (each folder of {SAMPLES_PER_CHECKPOINT} PNG samples is one set):")
    print(f"{'checkpoint':<12} {'planted copies':>14} {'flagged':>8} {'flagged %':>9} {'mean mi':>8}")
    for audit, copies in zip(audits, planted):
        scores = audit.scores
        print(
            f"{Path(audit.name).name:<12} {copies:>14} {audit.flagged:>8} {100 * audit.flagged / len(scores):>8.0f}% "
            f"{np.mean([s.mi for s in scores]):>8.3f}"
        )
    print(f"report with the per-checkpoint plot: {out / 'checkpoints-audit' / 'report.html'}")


def run_demo(out: Path, device: str = "cpu") -> int:
    """Build, plant, audit and print what was found against the truth; returns 0 on success."""
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    training, generated, truth = make_demo_data(out)
    print(
        f"training: {len(training)} real volumes from pip packages; generated: {len(generated)} volumes with planted "
        "copies"
    )
    index = build_index(training, out / "index", BuildOptions(device=device, overwrite=True))
    audits = audit_paths(index, generated, out / "audit", device=device)
    write_report(out / "audit", index=index, query_slices=query_slices(audits))
    scores = {(a.volume, s.slice): s for a in audits for s in a.scores}
    print(
        f"\n{'volume':<20} {'slice':>5} {'planted':<10} {'mi':>6} {'flagged':>7} {'nearest training slice':<32} "
        f"{'right source':>12}"
    )
    found = right = novel_flagged = novel_total = 0
    for row in truth:
        score = scores.get((row["volume"], row["slice"]))
        if row["kind"] == "novel":
            novel_total += 1
            novel_flagged += bool(score and score.flagged)
            continue
        is_right = bool(score and score.nn_source == row["source"] and score.nn_slice == row["source_slice"])
        found += bool(score and score.flagged)
        right += is_right
        nearest = f"{Path(score.nn_source).name}:{score.nn_slice}" if score else "(slice skipped as empty)"
        print(
            f"{Path(row['volume']).name:<20} {row['slice']:>5} {row['condition']:<10} "
            f"{score.mi if score else float('nan'):>6.3f} {'yes' if score and score.flagged else 'no':>7} "
            f"{nearest:<32} {'yes' if is_right else 'no':>12}"
        )
    copies = sum(row["kind"] == "copy" for row in truth)
    print(f"\nplanted copies flagged: {found}/{copies}; nearest training slice is the true source: {right}/{copies}")
    print(
        f"novel slices flagged: {novel_flagged}/{novel_total} (expected by chance: "
        f"{audits[0].threshold.alpha * novel_total:.2f}; "
        f"with only {len(training)} training subjects the train-split null runs low, see docs/method.md; real audits "
        "with "
        f"few subjects should pass --holdout)"
    )
    print(f"outputs: {out / 'audit'} (slices.csv, summary.json, report.html)")
    _compare_checkpoints(index, out, device)
    print(f"{time.time() - start:.0f} s")
    return 0
