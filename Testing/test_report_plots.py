"""The report's inline SVG plots (histogram, strips, ticks) and that rendering never imports matplotlib."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from report_helpers import EVIL_NAME, SVG, svg_texts, write_fixture_audit

from MemorizationIndexLib import report, report_plots
from MemorizationIndexLib.audit_output import SliceRow

# ----------------------------------------------------------------------------------------------
# the SVG plots


def _rows(volume: str, mis, flagged=(), first_slice: int = 0) -> list:
    out = []
    for i, mi in enumerate(mis):
        z = float(np.arctanh(np.clip(2 * mi - 1, -0.999999, 0.999999)))
        out.append(
            SliceRow(
                volume=volume,
                slice=first_slice + i,
                similarity=0.5,
                z=z,
                mi=float(mi),
                oni=-float(np.tanh(z)),
                p_value=0.5,
                flagged=i in flagged,
                nn_source="t.nii.gz",
                nn_slice=0,
                nn_flip="none",
            )
        )
    return out


THRESHOLD = {"alpha": 0.001, "similarity": 0.65, "z": 3.09, "mi": (1 + np.tanh(3.09)) / 2, "oni": -np.tanh(3.09)}
UNREACHABLE = {"alpha": 1e-6, "similarity": float("inf"), "z": float("inf"), "mi": 1.0, "oni": -1.0}
_RNG = np.random.default_rng(3)
SVG_CASES = {
    "copies": (_rows(EVIL_NAME, [0.3, 0.5, 0.7, 1.0, 1.0], flagged={3, 4}), _RNG.normal(0.5, 0.05, 3000), THRESHOLD),
    "no null": (_rows("a.nii.gz", [0.2, 0.6]), np.array([]), THRESHOLD),
    "no rows": ([], _RNG.normal(0.5, 0.05, 300), THRESHOLD),
    "nothing": ([], np.array([]), UNREACHABLE),
    "unreachable threshold": (_rows("a.nii.gz", [0.2, 0.6, 0.9]), _RNG.normal(0.5, 0.05, 50), UNREACHABLE),
    "single slice": (_rows("one.nii.gz", [0.7], first_slice=17), _RNG.normal(0.5, 0.05, 300), THRESHOLD),
    "all equal": (_rows("eq.nii.gz", [0.5] * 20), np.full(200, 0.5), THRESHOLD),
    "thousands of slices": (
        _rows("big.nii.gz", _RNG.uniform(0, 1, 5000), flagged=set(range(0, 5000, 50))),
        _RNG.normal(0.5, 0.05, 100_000),
        THRESHOLD,
    ),
}


def _numbers_are_finite(tree: ET.Element) -> None:
    for element in tree.iter():
        for name, value in element.attrib.items():
            if name not in ("aria-label", "class", "role"):
                assert "nan" not in value.lower() and "inf" not in value.lower(), (element.tag, name, value)


@pytest.mark.parametrize("case", list(SVG_CASES))
def test_svg_plots_are_well_formed_in_edge_cases(case):
    rows, null, threshold = SVG_CASES[case]
    reachable = np.isfinite(threshold["z"])
    hist = ET.fromstring(report_plots.histogram_svg(rows, null, 0.5, 0.05, threshold))
    _numbers_are_finite(hist)
    texts = svg_texts(hist)
    assert hist.get("class") == "plot hist" and hist.get("aria-label") == hist.find(f"{SVG}title").text
    assert {
        "Audited mi over the null distribution",
        "The same in z units",
        "Memorization Index mi (0.5 = typical real slice, 1 = copy)",
        "density (square-root scale)",
        f"null: real vs training (n={null.size})",
        f"audited slices (n={len(rows)})",
    } <= set(texts)
    assert texts.count(f"null: real vs training (n={null.size})") == 2
    dashed = hist.findall(f".//{SVG}line[@stroke-dasharray]")
    if reachable:  # a line in each panel and in each legend
        assert len(dashed) == 4 and f"threshold z = {threshold['z']:.4g}" in texts
    else:
        assert not dashed and sum("no threshold line" in t for t in texts) == 2
    assert len(hist.findall(f".//{SVG}path[@fill='{report_plots.NULL_COLOR}']")) == (1 if null.size else 0) * 2
    if not rows:
        return
    strips = ET.fromstring(report_plots.strips_svg(report._volume_order(rows), threshold["mi"] if reachable else None))
    _numbers_are_finite(strips)
    assert strips.get("class") == "plot strips" and strips.get("aria-label")
    assert len(strips.findall(f".//{SVG}line[@stroke-dasharray]")) == (1 if reachable else 0)
    flagged = sum(r.flagged for r in rows)
    assert f"{report_plots.short_name(rows[0].volume)}  ({flagged} flagged of {len(rows)})" in svg_texts(strips)
    assert "slice index" in svg_texts(strips)
    assert len(strips.findall(f".//{SVG}path[@stroke='{report_plots.THRESHOLD_COLOR}']")) == (1 if flagged else 0)


def test_svg_axes_ticks():
    single = ET.fromstring(report_plots.strips_svg([("one.nii.gz", _rows("one.nii.gz", [0.7], first_slice=17))], 0.99))
    assert sorted(t for t in svg_texts(single) if t.isdigit()) == ["0", "1", "17"]  # x: slice 17 only; y: 0, 0.5, 1
    assert "0.5" in svg_texts(single)
    assert [label for _, label in report_plots._linear_ticks(0.0, 1.0, target=8)] == [
        "0.0",
        "0.2",
        "0.4",
        "0.6",
        "0.8",
        "1.0",
    ]
    assert report_plots._linear_ticks(-4.2, 7.9, target=8)[0][1] == "\u22124"
    assert [v for v, _ in report_plots._linear_ticks(-0.5, 4999.5, target=12, integer=True)][:3] == [0, 500, 1000]
    big = report_plots.strips_svg([("big", _rows("big", _RNG.uniform(0, 1, 5000)))], 0.99)
    assert len(big) < 200_000  # dots share a path, one per pixel at most


def test_report_path_does_not_import_matplotlib(tmp_path: Path):
    out = tmp_path / "audit"
    write_fixture_audit(out, _rows_as_dicts(), volumes=[])
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from MemorizationIndexLib import report; "
        "report.write_report(sys.argv[2]); print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(Path(report.__file__).parents[1]), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
    assert (out / "report.html").is_file()


def _rows_as_dicts() -> list[dict]:
    return [
        {
            "volume": "/gone/gen.nii.gz",
            "slice": k,
            "similarity": 0.45 + 0.01 * k,
            "nn_source": "/gone/t.nii.gz",
            "nn_slice": k,
        }
        for k in range(12)
    ]
