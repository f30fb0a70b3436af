"""The HTML audit report (issue 5): content, escaping, --no-training-images, caps, errors, and a
real audit on shared spine data rendered in headless Chromium (screenshot + DOM)."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MemorizationIndexLib import report, report_plots
from MemorizationIndexLib.audit_output import SliceRow, read_audit
from MemorizationIndexLib.errors import UserError

EVIL_NAME = "evil<script>alert(1)<script>&\"'.nii.gz"
SVG = "{http://www.w3.org/2000/svg}"
COLUMNS = ["volume", "slice", "similarity", "z", "mi", "oni", "p_value", "flagged", "nn_source", "nn_slice"]


# ----------------------------------------------------------------------------------------------
# helpers


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


def write_fixture_audit(out_dir: Path, rows: list[dict], *, volumes: list[dict], index_path: str = "",
                        null: np.ndarray | None = None, alpha: float = 0.001) -> None:
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
            writer.writerow([r["volume"], r["slice"], f"{r['similarity']:.6g}", f"{z:.6g}",
                             f"{(1 + np.tanh(z)) / 2:.6g}", f"{-np.tanh(z):.6g}", f"{p:.6g}",
                             int(p < alpha), r["nn_source"], r["nn_slice"]])
    np.save(out_dir / "null_similarity.npy", null.astype(np.float32))
    summary = {
        "tool": "MemorizationIndex", "version": "0.1.0",
        "index": {"path": index_path, "index_id": "idx-<b>fixture</b>", "encoder_id": "enc:224:b3",
                  "encoder_name": "efficientnet-lite0", "weights_sha256": "ab" * 32, "axis": "sagittal",
                  "null_type": "train-split", "n_reference_slices": 40},
        "null": {"mean": mean, "std": std, "n": int(null.size)},
        "threshold": {"alpha": alpha, "similarity": mean + z_t * std, "z": z_t,
                      "mi": (1 + np.tanh(z_t)) / 2, "oni": -np.tanh(z_t)},
        "volumes": volumes,
        "overall": {},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


class FakeIndex:
    """Stands in for ReferenceIndex: serves reference slices from real volumes."""

    def __init__(self, sources: dict[str, np.ndarray]):
        self.sources = sources

    def reference_slice(self, source, slice_index):
        arr = self.sources.get(source)
        return None if arr is None else arr[slice_index].astype(np.float32)


@pytest.fixture(scope="module")
def spine(shared_data: Path) -> dict[str, Path]:
    folder = shared_data / "spine" / "myosegmentum"
    paths = {n: folder / f"{n}.nii.gz" for n in ("01", "02", "03", "04", "05", "06")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    assert not missing, f"shared spine data incomplete: {missing}"
    return paths


@pytest.fixture()
def fixture_audit(tmp_path: Path, spine, monkeypatch):
    """A hand-written audit of one query volume (6 slices copied from subject 01, 14 from subject 05)
    under a file name containing <script>, with a fake index serving subject 01's slices."""
    train_img = sitk.ReadImage(str(spine["01"]))
    train = sitk.GetArrayFromImage(train_img)  # [20, 224, 224]: 20 sagittal slices along array axis 0
    novel = sitk.GetArrayFromImage(sitk.ReadImage(str(spine["05"])))
    query = novel.copy()
    copied = {3: 7, 4: 8, 10: 12, 11: 13, 12: 14, 15: 2}
    for q, t in copied.items():
        query[q] = train[t][:, ::-1] if q == 15 else train[t]  # one copy is left-right flipped
    qdir = tmp_path / "gen"
    qdir.mkdir()
    qpath = qdir / EVIL_NAME
    write_nifti(query, train_img, qpath)
    rows = []
    for k in range(query.shape[0]):
        if k in copied:
            rows.append(dict(volume=str(qpath), slice=k, similarity=0.99 - 0.001 * k, nn_source=str(spine["01"]),
                             nn_slice=copied[k]))
        else:
            rows.append(dict(volume=str(qpath), slice=k, similarity=0.45 + 0.005 * k, nn_source=str(spine["02"]),
                             nn_slice=k))
    out = tmp_path / "audit"
    write_fixture_audit(out, rows, index_path=str(tmp_path / "index"),
                        volumes=[{"volume": str(qpath), "axis": "sagittal", "array_axis": 0, "slices_total": 20,
                                  "slices_scored": 20, "slices_skipped_empty": 0}])
    other = sitk.GetArrayFromImage(sitk.ReadImage(str(spine["02"])))
    fake = FakeIndex({str(spine["01"]): train, str(spine["02"]): other})
    monkeypatch.setattr(report, "_load_reference_index", lambda path: fake)
    return out, copied, other


# ----------------------------------------------------------------------------------------------
# fast tests on hand-written audit outputs


def test_fixture_report_content_and_escaping(fixture_audit):
    out, copied, _ = fixture_audit
    path = report.write_report(out)
    assert path == out / "report.html"
    text = path.read_text(encoding="utf-8")
    assert_offline(text)
    dom = parse(text)
    plain = " ".join(dom.text)
    assert "6 of 20 slices (30.0%) look like copies of training slices; expected by chance at this threshold: 0.02" in plain
    assert "Likely memorization" in plain
    # the evil file name is text: escaped in the source, never a tag
    assert "<script" not in text.lower()
    assert html.escape(EVIL_NAME) in text
    assert EVIL_NAME in plain
    assert "idx-<b>fixture</b>" in plain and "<b>fixture</b>" not in text
    # plots + 6 flagged evidence trios first (most suspicious first), all images present
    assert len(plots(dom, "hist")) == 1 and len(plots(dom, "strips")) == 1 and len(plots(dom)) == 2
    assert all(a.get("role") == "img" and a.get("aria-label") for a in plots(dom))
    trees = svg_trees(text)
    assert f"{EVIL_NAME}  (6 flagged of 20)" in svg_texts(trees["strips"])  # the evil name: text in the SVG too
    assert "Audited mi over the null distribution" in svg_texts(trees["hist"])
    assert len(imgs(dom, "query")) == 20 and len(imgs(dom, "train")) == 20 and len(imgs(dom, "diff")) == 20
    flagged_tags = [a.get("class") for t, a in dom.tags if t == "div" and "evidence" in (a.get("class") or "")]
    assert flagged_tags[:6] == ["evidence flagged"] * 6 and "flagged" not in flagged_tags[6]
    # copies: the difference image of a copied slice is (nearly) black, the flipped copy found as hflip
    assert "shown orientation: hflip" in plain
    assert "pixel correlation r = 1.000" in plain


def test_fixture_no_training_images_leaves_no_training_pixels(fixture_audit):
    out, _, other = fixture_audit  # other: subject 02, the nearest training volume of the novel slices
    with_images = report.render_report(out)
    train_pngs = [a["src"] for a in imgs(parse(with_images), "train")]
    diff_pngs = [a["src"] for a in imgs(parse(with_images), "diff")]
    assert train_pngs and diff_pngs

    text = report.write_report(out, no_training_images=True).read_text(encoding="utf-8")
    dom = parse(text)
    assert_offline(text)
    assert not imgs(dom, "train") and not imgs(dom, "diff")
    # histogram + strips (SVG) + the query slices + the strongest generated slice beside the verdict
    assert len(plots(dom)) == 2 and len(imgs(dom)) == 20 + 1 and len(imgs(dom, "top-query")) == 1
    # (a copied slice's training image equals the query image, which is the generator's own output)
    query_pngs = {a["src"] for a in imgs(parse(with_images), "query")}
    private = [src for src in train_pngs + diff_pngs if src not in query_pngs]
    assert len(private) >= 14 + 20
    for src in private:
        assert src.split(",", 1)[1] not in text
    # the training slices' own PNG encodings are absent too (novel query slices 0, 1, 2 -> 02's 0, 1, 2)
    for k in (0, 1, 2):
        t01 = report._display01(other[k])
        b64 = base64.b64encode(report._gray_png(t01)).decode("ascii")
        assert b64 not in text
    assert "training image withheld" in " ".join(dom.text)


def test_training_image_unavailable_is_said(fixture_audit, monkeypatch):
    out, _, _ = fixture_audit
    monkeypatch.setattr(report, "_load_reference_index", lambda path: "index could not be opened (gone)")
    text = report.render_report(out, max_evidence=3)
    gallery = text[text.index('id="evidence"'):]
    assert gallery.count("training image not available") == 3
    assert not imgs(parse(text), "train")


def test_caps_at_many_slices(tmp_path: Path):
    """1,200 slices in 60 volumes: the gallery and the strips are capped and the report says so."""
    rows, volumes = [], []
    for v in range(60):
        name = f"/nonexistent/gen_{v:02d}.nii.gz"
        volumes.append({"volume": name, "axis": "axial", "array_axis": 0, "slices_total": 20,
                        "slices_scored": 20, "slices_skipped_empty": 0})
        for k in range(20):
            sim = 0.99 if (v == 7 and k < 5) else 0.4 + 0.01 * ((v * 20 + k) % 17)
            rows.append(dict(volume=name, slice=k, similarity=sim, nn_source="/gone/train.nii.gz", nn_slice=k))
    out = tmp_path / "big"
    write_fixture_audit(out, rows, volumes=volumes, index_path="/gone/index")
    text = report.write_report(out, max_evidence=10).read_text(encoding="utf-8")
    plain = " ".join(parse(text).text)
    assert "5 of 1200 slices (0.4%)" in plain and "expected by chance at this threshold: 1.2" in plain
    assert text.count('class="evidence') == 10
    assert "1190 slices are left out of this gallery (0 of them flagged)" in plain
    assert f"Showing {report.MAX_STRIPS} of 60 volumes; {60 - report.MAX_STRIPS} are left out." in plain
    assert "10 more volumes are not listed here" in plain
    assert text.count("query image not available") == 10
    assert len(text) < 2_000_000
    # most suspicious volume first in the table and in the strips (capped at MAX_STRIPS)
    assert plain.index("gen_07.nii.gz") < plain.index("gen_00.nii.gz")
    titles = [t for t in svg_texts(svg_trees(text)["strips"]) if "flagged of" in t]
    assert len(titles) == report.MAX_STRIPS and titles[0] == "gen_07.nii.gz  (5 flagged of 20)"


def test_missing_and_corrupt_outputs_raise_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        report.write_report(tmp_path / "nope")
    out = tmp_path / "audit"
    write_fixture_audit(out, [dict(volume="a.nii.gz", slice=0, similarity=0.5, nn_source="t", nn_slice=0)],
                        volumes=[])
    report.write_report(out)  # fine as written

    (out / "summary.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="summary.json is not valid JSON") as err:
        report.write_report(out)
    assert "\n" not in str(err.value)

    write_fixture_audit(out, [dict(volume="a.nii.gz", slice=0, similarity=0.5, nn_source="t", nn_slice=0)],
                        volumes=[])
    (out / "null_similarity.npy").write_bytes(b"garbage")
    with pytest.raises(UserError, match="null_similarity.npy is not a readable"):
        report.write_report(out)

    write_fixture_audit(out, [dict(volume="a.nii.gz", slice=0, similarity=0.5, nn_source="t", nn_slice=0)],
                        volumes=[])
    (out / "slices.csv").write_text("volume,slice\na,1\n", encoding="utf-8")
    with pytest.raises(UserError, match="missing columns"):
        report.write_report(out)
    (out / "slices.csv").write_text(",".join(COLUMNS) + "\na,x,1,1,1,1,1,0,t,0\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2 is corrupt"):
        report.write_report(out)
    (out / "slices.csv").unlink()
    with pytest.raises(UserError, match="slices.csv is missing"):
        report.write_report(out)


# ----------------------------------------------------------------------------------------------
# the SVG plots


def _rows(volume: str, mis, flagged=(), first_slice: int = 0) -> list:
    out = []
    for i, mi in enumerate(mis):
        z = float(np.arctanh(np.clip(2 * mi - 1, -0.999999, 0.999999)))
        out.append(SliceRow(volume=volume, slice=first_slice + i, similarity=0.5, z=z, mi=float(mi),
                            oni=-float(np.tanh(z)), p_value=0.5, flagged=i in flagged, nn_source="t.nii.gz",
                            nn_slice=0, nn_flip="none"))
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
    "thousands of slices": (_rows("big.nii.gz", _RNG.uniform(0, 1, 5000), flagged=set(range(0, 5000, 50))),
                            _RNG.normal(0.5, 0.05, 100_000), THRESHOLD),
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
    assert {"Audited mi over the null distribution", "The same in z units",
            "Memorization Index mi (0.5 = typical real slice, 1 = copy)", "density (square-root scale)",
            f"null: real vs training (n={null.size})", f"audited slices (n={len(rows)})"} <= set(texts)
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
    assert [label for _, label in report_plots._linear_ticks(0.0, 1.0, target=8)] == \
        ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert report_plots._linear_ticks(-4.2, 7.9, target=8)[0][1] == "\u22124"
    assert [v for v, _ in report_plots._linear_ticks(-0.5, 4999.5, target=12, integer=True)][:3] == [0, 500, 1000]
    big = report_plots.strips_svg([("big", _rows("big", _RNG.uniform(0, 1, 5000)))], 0.99)
    assert len(big) < 200_000  # dots share a path, one per pixel at most


def test_report_path_does_not_import_matplotlib(tmp_path: Path):
    out = tmp_path / "audit"
    write_fixture_audit(out, _rows_as_dicts(), volumes=[])
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from MemorizationIndexLib import report; "
            "report.write_report(sys.argv[2]); print(sorted(m for m in sys.modules if m.startswith('matplotlib')))")
    result = subprocess.run([sys.executable, "-c", code, str(Path(report.__file__).parents[1]), str(out)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
    assert (out / "report.html").is_file()


def _rows_as_dicts() -> list[dict]:
    return [{"volume": "/gone/gen.nii.gz", "slice": k, "similarity": 0.45 + 0.01 * k, "nn_source": "/gone/t.nii.gz",
             "nn_slice": k} for k in range(12)]


# ----------------------------------------------------------------------------------------------
# a real audit on shared data, rendered in headless Chromium


def _chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)


@pytest.fixture(scope="module")
def real_audit(tmp_path_factory, spine):
    """Index spine subjects 01-03 (train; 04 and 06 held out for the null), audit a generated volume
    mixing 5 slices copied from subjects 01/02 with subject 05's (novel) slices at alpha 0.05 (the
    40 held-out null slices cannot reach smaller p-values); its file name contains <script>."""
    from MemorizationIndexLib import audit, index_build

    root = tmp_path_factory.mktemp("real")
    index_dir = root / "index"
    options = index_build.BuildOptions(device="cpu", holdout_paths=[spine["04"], spine["06"]], reference_copies=False)  # copies: 5x slower
    index_build.build_index([spine["01"], spine["02"], spine["03"]], index_dir, options)
    ref = sitk.ReadImage(str(spine["01"]))
    t01 = sitk.GetArrayFromImage(ref)
    t02 = sitk.GetArrayFromImage(sitk.ReadImage(str(spine["02"])))
    query = sitk.GetArrayFromImage(sitk.ReadImage(str(spine["05"]))).copy()
    query[4], query[5], query[9] = t01[4], t01[5], t01[9]
    query[12], query[13] = t02[12], t02[13]
    gen_dir = root / "gen"
    gen_dir.mkdir()
    qpath = gen_dir / EVIL_NAME
    write_nifti(query, ref, qpath)
    out = root / "audit"
    audits = audit.audit_paths(index_dir, [qpath], out, device="cpu", alpha=0.05)
    return out, qpath, audits, index_dir


def test_real_audit_report_in_chromium(real_audit, chromium, tmp_path):
    out, qpath, _, _ = real_audit
    path = report.write_report(out)
    text = path.read_text(encoding="utf-8")
    assert_offline(text)
    with open(out / "slices.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    flagged = {int(r["slice"]) for r in rows if r["flagged"] == "1"}
    assert {4, 5, 9, 12, 13} <= flagged, f"copied slices not all flagged: {sorted(flagged)}"

    # screenshot of the first screen: non-blank, with the verdict's colour band in it
    shot = tmp_path / "first_screen.png"
    result = _chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,900",
                       "--hide-scrollbars", path.as_uri())
    assert shot.is_file() and shot.stat().st_size > 0, result.stderr[-2000:]
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(shot)))
    assert pixels.shape[:2] == (900, 1280)
    rgb = pixels[..., :3].astype(int)
    assert rgb.std() > 10, "screenshot is blank"
    red_band = (rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] < 80)  # the verdict's red border
    assert red_band[:300].sum() > 500, "the red 'likely memorization' verdict is not in the first screen"
    shutil.copy(shot, out / "first_screen.png")  # kept beside the report for a human look

    # the DOM as Chromium built it
    result = _chromium(chromium, tmp_path, "--dump-dom", path.as_uri())
    dom_text = result.stdout
    assert "<main>" in dom_text, result.stderr[-2000:]
    dom = parse(dom_text)
    plain = " ".join(dom.text)
    n = len(rows)
    k = len(flagged)
    assert f"{k} of {n} slices" in plain and "look like copies of training slices" in plain
    assert "expected by chance at this threshold" in plain
    # verdict at the top: before the metadata, the plots and the evidence
    order = [dom_text.find(marker) for marker in ('id="verdict"', 'id="meta"', 'id="plots"', 'id="evidence"')]
    assert -1 not in order and order == sorted(order)
    first_img = dom_text.find("<img")
    assert dom_text.find("look like copies") < first_img
    # plots and evidence pairs, all embedded
    assert len(plots(dom, "hist")) == 1 and len(plots(dom, "strips")) == 1
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs(dom))
    n_ev = min(24, n)
    assert len(imgs(dom, "query")) == n_ev and len(imgs(dom, "train")) == n_ev and len(imgs(dom, "diff")) == n_ev
    # the five copies come first in the gallery, each shown with its exact source (correlation 1)
    shown = [int(m) for m in re.findall(r'query: <span class="path">[^<]*</span> slice (\d+)<br>', dom_text)]
    assert len(shown) == n_ev and set(shown[:5]) == {4, 5, 9, 12, 13}, shown
    assert plain.count("pixel correlation r = 1.000") >= 5
    assert "(as matched by the audit)" in plain  # the flip recorded in neighbors.csv is used
    assert len(imgs(dom, "top-query")) == 1 and len(imgs(dom, "top-train")) == 1
    # the evil name is text, never a tag
    assert not [t for t, _ in dom.tags if t == "script"]
    assert "<script" not in text.lower()
    assert EVIL_NAME in plain
    assert html.escape(EVIL_NAME) in text

    # --no-training-images: no training slice or difference, and none of the training PNGs
    # (a copied slice's training image equals its query image: that is the generator's own output)
    public = {a["src"] for a in imgs(parse(text), "query")}
    train_srcs = [a["src"].split(",", 1)[1] for a in imgs(parse(text), "train") if a["src"] not in public]
    diff_srcs = [a["src"].split(",", 1)[1] for a in imgs(parse(text), "diff")]
    assert train_srcs  # training pixels of the novel slices' neighbours were in the full report
    private = report.write_report(out, no_training_images=True).read_text(encoding="utf-8")
    assert_offline(private)
    pdom = parse(private)
    assert not imgs(pdom, "train") and not imgs(pdom, "diff")
    assert len(plots(pdom)) == 2 and len(imgs(pdom)) == n_ev + 1 and not imgs(pdom, "top-train")
    for src in train_srcs + diff_srcs:
        assert src not in private
    result = _chromium(chromium, tmp_path, "--dump-dom", path.as_uri())
    assert "training image withheld" in result.stdout


def _assert_same_report_from_kept_slices(out: Path, kept: dict, max_evidence: int, monkeypatch) -> None:
    """The report from the audit's kept slices equals the one that reads the query volumes, and
    reads none of them."""
    from_disk = report.render_report(out, generated="fixed", max_evidence=max_evidence)
    with monkeypatch.context() as patch:
        patch.setattr(report, "_read_query_volume", lambda *args: pytest.fail("query volume read again"))
        in_memory = report.render_report(out, generated="fixed", max_evidence=max_evidence, query_slices=kept)
    assert [a["src"] for a in imgs(parse(in_memory), "query")] == [a["src"] for a in imgs(parse(from_disk), "query")]
    assert in_memory == from_disk


def test_report_from_the_audit_slices_equals_reading_them(real_audit, monkeypatch):
    from MemorizationIndexLib.audit import query_slices

    out, _, audits, _ = real_audit
    kept = query_slices(audits)
    rows = read_audit(out).rows
    assert set(kept) == {(r.volume, r.slice) for r in report._ranked(rows)[:24]}
    assert all(img.base is None and img.flags.c_contiguous for img in kept.values())  # copies, not views of the volume
    _assert_same_report_from_kept_slices(out, kept, 24, monkeypatch)


def test_audit_keeps_only_the_best_evidence_over_all_volumes(real_audit, spine, tmp_path, monkeypatch):
    """Two volumes, keep 3: the 3 slices the report ranks first (ties in mi and similarity, as
    written, broken by volume then slice), none of the other volume's."""
    from MemorizationIndexLib import audit

    _, qpath, _, index_dir = real_audit
    out = tmp_path / "audit"
    audits = audit.audit_paths(index_dir, [spine["01"], qpath], out, device="cpu", alpha=0.05, keep_evidence=3)
    kept = audit.query_slices(audits)
    rows = read_audit(out).rows
    assert set(kept) == {(r.volume, r.slice) for r in report._ranked(rows)[:3]}
    assert sum(len(a.evidence_slices) for a in audits) == 3
    _assert_same_report_from_kept_slices(out, kept, 3, monkeypatch)
