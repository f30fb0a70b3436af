"""Helpers shared by the HTML audit report tests: DOM/SVG parsing, hand-written audit outputs, headless Chromium."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MemorizationIndexLib.audit_output import Neighbour, SliceScore

EVIL_NAME = "evil<script>alert(1)<script>&\"'.nii.gz"
SVG = "{http://www.w3.org/2000/svg}"
COLUMNS = ["volume", "slice", "similarity", "z", "mi", "oni", "p_value", "flagged", "nn_source", "nn_slice"]


# ----------------------------------------------------------------------------------------------
# helpers


@dataclass
class AuditedVolume:
    """A hand-made audited volume for ``audit_output.write_audit`` (synthetic audit folders)."""

    volume: str
    scores: list[SliceScore]
    neighbours: dict[int, list[Neighbour]] = field(default_factory=dict)


class _Dom(HTMLParser):
    """Collects tags (in document order), img attributes and text of an HTML document."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> _Dom:
    dom = _Dom()
    dom.feed(text)
    return dom


def imgs(dom: _Dom, cls: str | None = None) -> list[dict]:
    out = [a for t, a in dom.tags if t == "img"]
    if cls is not None:
        out = [a for a in out if cls in (a.get("class") or "").split()]
    return out


def plots(dom: _Dom, cls: str | None = None) -> list[dict]:
    """The inline <svg> plots (with the given class)."""
    out = [a for t, a in dom.tags if t == "svg"]
    if cls is not None:
        out = [a for a in out if cls in (a.get("class") or "").split()]
    return out


def svg_trees(text: str) -> dict[str, ET.Element]:
    """{first class: parsed element} of each inline <svg> (ET raises on malformed XML)."""
    trees = [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", text, re.DOTALL)]
    return {tree.get("class", "").split()[1]: tree for tree in trees}


def svg_texts(tree: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in tree.iter(f"{SVG}text")]


def assert_offline(text: str) -> None:
    """No remote fetches: no http(s) or protocol-relative URL in any src/href/url(), no scripts,
    and no SVG element that could fetch or embed anything."""
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:|//)", text, re.I)
    assert "@import" not in text
    dom = parse(text)
    forbidden = ("script", "iframe", "object", "embed", "link", "foreignobject", "image", "use", "a")
    assert not [t for t, _ in dom.tags if t in forbidden]
    for tag, attrs in dom.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert not name.endswith("href"), (tag, name)
            if name == "src" and value:
                assert value.startswith("data:image/png;base64,"), value


def write_nifti(array_kji: np.ndarray, like: sitk.Image, path: Path) -> None:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    img.CopyInformation(like)
    sitk.WriteImage(img, str(path))


def write_fixture_audit(
    out_dir: Path,
    rows: list[dict],
    *,
    volumes: list[dict],
    index_path: str = "",
    null: np.ndarray | None = None,
    alpha: float = 0.001,
) -> None:
    """Hand-written audit outputs in the api-contract formats."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    null = rng.normal(0.5, 0.05, 2000) if null is None else null
    mean, std = float(null.mean()), float(null.std())
    z_t = 3.09
    with open(out_dir / "slices.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for r in rows:
            z = (r["similarity"] - mean) / std
            p = (1 + int((null >= r["similarity"]).sum())) / (null.size + 1)
            writer.writerow(
                [
                    r["volume"],
                    r["slice"],
                    f"{r['similarity']:.6g}",
                    f"{z:.6g}",
                    f"{(1 + np.tanh(z)) / 2:.6g}",
                    f"{-np.tanh(z):.6g}",
                    f"{p:.6g}",
                    int(p < alpha),
                    r["nn_source"],
                    r["nn_slice"],
                ]
            )
    np.save(out_dir / "null_similarity.npy", null.astype(np.float32))
    summary = {
        "tool": "MemorizationIndex",
        "version": "0.1.0",
        "index": {
            "path": index_path,
            "index_id": "idx-<b>fixture</b>",
            "encoder_id": "enc:224:b3",
            "encoder_name": "efficientnet-lite0",
            "weights_sha256": "ab" * 32,
            "axis": "sagittal",
            "null_type": "train-split",
            "n_reference_slices": 40,
        },
        "null": {"mean": mean, "std": std, "n": int(null.size)},
        "threshold": {
            "alpha": alpha,
            "similarity": mean + z_t * std,
            "z": z_t,
            "mi": (1 + np.tanh(z_t)) / 2,
            "oni": -np.tanh(z_t),
        },
        "volumes": volumes,
        "overall": {},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def _chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
