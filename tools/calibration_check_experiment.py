"""Bulk statistics of audited global scores against an index's null: in-domain, off-domain, copies.

Measures, for every (index, input) pair, where the input's global similarities sit as a whole
relative to the index's calibration null (median z, lower-quartile z, median p-value, shares above
the null's 90th/99th percentiles, AUROC input vs null, flagged share), for whole volumes and for
small subsets of slices (2D sets). Used to choose the rule of ``calibration_check`` (docs/method.md
§8). Run: ``PYTHONPATH=MemorizationIndex python tools/calibration_check_experiment.py [--out DIR]``.
Needs ../shared/data and the demo's pip packages (dipy, nibabel); indexes are small (slice strides).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from MemorizationIndexLib.demo import NOVEL, load_packaged_volume, make_demo_data
from MemorizationIndexLib.embedding import embed_slices
from MemorizationIndexLib.encoders import load_encoder
from MemorizationIndexLib.index_build import BuildOptions, build_index
from MemorizationIndexLib.preprocess import PreprocessSettings, nonempty_mask
from MemorizationIndexLib.reference_index import ReferenceIndex
from MemorizationIndexLib.scoring import NullModel
from MemorizationIndexLib.volumes import image_slices, read_image, resolve_axis

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BRAIN = DATA / "brain" / "ds002748"
SPINE = DATA / "spine" / "myosegmentum"
KNEE = DATA / "knee"


def brain(n: int) -> Path:
    return BRAIN / f"sub-{n:02d}_T1w.nii.gz"


def spine(n: int) -> Path:
    return SPINE / f"{n:02d}.nii.gz"


def volume_slices(path: Path) -> np.ndarray:
    """Non-empty slices of a volume, cut as the audit cuts them (axis auto)."""
    image = read_image(path)
    stack = image_slices(image, resolve_axis(image, "auto"))
    return stack[nonempty_mask(stack, PreprocessSettings())]


def flipped_noisy(stack: np.ndarray, seed: int = 0) -> np.ndarray:
    """A wholly copied volume with every slice flipped left-right and Gaussian noise of 2% of its range."""
    rng = np.random.default_rng(seed)
    scale = float(np.percentile(stack, 99.5))
    return (stack[:, :, ::-1] + rng.normal(0.0, 0.02 * scale, stack.shape)).astype(np.float32)


def indexes(encoder, out: Path, demo_training: list[Path]) -> dict[str, ReferenceIndex]:
    """The small reference indexes (built once, reused)."""
    knee = r"(pykneer-s01|pymskt-s02)"
    plans = {
        "demo EPI (3)": (demo_training, BuildOptions()),
        "brain T1 (3)": ([brain(n) for n in (1, 2, 3)], BuildOptions(slice_stride=4)),
        "brain T1 (8)": ([brain(n) for n in range(1, 9)], BuildOptions(slice_stride=8)),
        "spine (3)": ([spine(n) for n in (1, 2, 3)], BuildOptions()),
        "spine (8)": ([spine(n) for n in range(1, 9)], BuildOptions(slice_stride=2)),
        "knee s01 (1)": (
            sorted((KNEE / "pykneer-s01").glob("*.nii.gz")),
            BuildOptions(slice_stride=3, subject_pattern=knee),
        ),
    }
    built = {}
    for name, (paths, options) in plans.items():
        folder = out / "indexes" / name.replace(" ", "_").replace("(", "").replace(")", "")
        built[name] = (
            ReferenceIndex.load(folder) if folder.is_dir() else build_index(paths, folder, options, encoder=encoder)
        )
    return built


def queries(demo_generated: list[Path], demo_training: list[Path]) -> dict[str, tuple[str, np.ndarray]]:
    """{name: (kind, slices)} of the audited inputs."""
    result: dict[str, tuple[str, np.ndarray]] = {}
    for n in range(17, 25):
        result[f"T1 sub-{n:02d}"] = ("brain", volume_slices(brain(n)))
    for n in range(20, 31):
        result[f"spine {n:02d}"] = ("spine", volume_slices(spine(n)))
    for path in sorted((KNEE / "pymskt-s02").glob("*.nii.gz")):
        result[f"knee s02 {path.name.split('_')[1]}"] = ("knee", volume_slices(path))
    for package, relative in NOVEL:
        stack = load_packaged_volume(package, relative)
        result[f"demo novel {Path(relative).name.split('.')[0]}"] = (
            "demo",
            stack[nonempty_mask(stack, PreprocessSettings())],
        )
    for path in demo_generated:
        result[f"demo {path.name.split('.')[0]}"] = ("demo-generated", volume_slices(path))
    result["copy T1 sub-01"] = ("copy-brain", volume_slices(brain(1)))
    result["copy T1 sub-01 flip+noise"] = ("copy-brain", flipped_noisy(volume_slices(brain(1))))
    result["copy spine 01"] = ("copy-spine", volume_slices(spine(1)))
    result["copy spine 01 flip+noise"] = ("copy-spine", flipped_noisy(volume_slices(spine(1))))
    result["copy demo training 1"] = ("copy-demo", volume_slices(demo_training[0]))
    result["copy demo training 3 flip+noise"] = ("copy-demo", flipped_noisy(volume_slices(demo_training[2])))
    return result


def features(encoder, name: str, slices: np.ndarray, cache: Path) -> dict[str, np.ndarray]:
    """Raw features of a query (cached on disk: every index uses the default preprocessing and encoder)."""
    path = cache / (name.replace(" ", "_").replace("+", "") + ".npz")
    if path.is_file():
        return dict(np.load(path))
    raw = embed_slices(encoder, list(slices), PreprocessSettings())
    np.savez(path, **raw)
    return raw


def bulk(similarity: np.ndarray, null: NullModel) -> dict[str, float]:
    """The bulk statistics of one input's global similarities against a null."""
    z = null.z(similarity)
    p = null.p_value(similarity)
    cdf = np.searchsorted(null.values, similarity, side="left") / len(null.values)
    return {
        "n": len(similarity),
        "median_z": float(np.median(z)),
        "q25_z": float(np.percentile(z, 25)),
        "median_p": float(np.median(p)),
        "above_p90": float(np.mean(similarity > np.quantile(null.values, 0.90))),
        "above_p99": float(np.mean(similarity > np.quantile(null.values, 0.99))),
        "auroc": float(np.mean(cdf)),
        "flagged": float(np.mean(p < 1e-3)),
    }


IN_DOMAIN = {
    "brain": ("brain T1 (3)", "brain T1 (8)"),
    "spine": ("spine (3)", "spine (8)"),
    "knee": ("knee s01 (1)",),
    "demo": ("demo EPI (3)",),
    "demo-generated": ("demo EPI (3)",),
    "copy-brain": ("brain T1 (3)", "brain T1 (8)"),
    "copy-spine": ("spine (3)", "spine (8)"),
    "copy-demo": ("demo EPI (3)",),
}


def _draw(rng: np.random.Generator, values: np.ndarray, size: int) -> np.ndarray:
    return rng.choice(values, min(size, len(values)), replace=False)


def subsets(similarity: dict[str, np.ndarray], null: NullModel, size: int, draws: int, seed: int) -> dict[str, float]:
    """Median z of random 2D sets of ``size`` slices: mixed over the inputs, and from one input each."""
    rng = np.random.default_rng(seed)
    pooled = np.concatenate(list(similarity.values()))
    singles = [s for s in similarity.values() if len(s) >= size] or list(similarity.values())
    mixed = [np.median(null.z(_draw(rng, pooled, size))) for _ in range(draws)]
    single = [np.median(null.z(_draw(rng, singles[int(rng.integers(len(singles)))], size))) for _ in range(draws)]
    return {
        "mixed_min": float(np.min(mixed)),
        "mixed_max": float(np.max(mixed)),
        "single_min": float(np.min(single)),
        "single_max": float(np.max(single)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/calibration_check_experiment"))
    args = parser.parse_args()
    cache = args.out / "features"
    cache.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder("default")
    demo_training, demo_generated, _ = make_demo_data(args.out / "demo")
    built = indexes(encoder, args.out, demo_training)
    inputs = queries(demo_generated, demo_training)
    scored: dict[tuple[str, str], np.ndarray] = {}
    header = f"{'index':<14} {'input':<32} {'dom':>4} " + " ".join(
        f"{c:>9}" for c in ("n", "median_z", "q25_z", "median_p", "above_p90", "above_p99", "auroc", "flagged")
    )
    print(header)
    for index_name, index in built.items():
        null = index.null_model
        for name, (kind, slices) in inputs.items():
            raw = features(encoder, name, slices, cache)
            similarity = index.search(index.whiten(raw), k=1).similarity
            scored[(index_name, name)] = similarity
            domain = "in" if index_name in IN_DOMAIN.get(kind, ()) else "off"
            stats = bulk(similarity, null)
            print(f"{index_name:<14} {name:<32} {domain:>4} " + " ".join(f"{v:>9.3f}" for v in stats.values()))
    np.savez(args.out / "similarity.npz", **{f"{i}|{q}": s for (i, q), s in scored.items()})
    print("\n2D sets: median z of random subsets of novel in-domain (in) and off-domain (off) slices, 500 draws")
    for index_name, index in built.items():
        for domain in ("in", "off"):
            chosen = {
                q: s
                for (i, q), s in scored.items()
                if i == index_name
                and inputs[q][0] in ("brain", "spine", "knee")
                and (index_name in IN_DOMAIN[inputs[q][0]]) == (domain == "in")
            }
            if not chosen:
                continue
            for size in (10, 20, 40):
                stats = subsets(chosen, index.null_model, size, 500, seed=size)
                print(
                    f"{index_name:<14} {domain:>4} n={size:<3} " + " ".join(f"{k} {v:6.2f}" for k, v in stats.items())
                )


if __name__ == "__main__":
    main()
