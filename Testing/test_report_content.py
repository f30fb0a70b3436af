"""The HTML audit report's content on hand-written audits: verdict, evidence, escaping, --no-training-images, caps."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from report_helpers import (
    EVIL_NAME,
    assert_offline,
    imgs,
    parse,
    plots,
    svg_texts,
    svg_trees,
    write_fixture_audit,
    write_nifti,
)

from MemorizationIndexLib import report, report_evidence


class FakeIndex:
    """Stands in for ReferenceIndex: serves reference slices from real volumes."""

    def __init__(self, sources: dict[str, np.ndarray]):
        self.sources = sources

    def reference_slice(self, source, slice_index):
        arr = self.sources.get(source)
        return None if arr is None else arr[slice_index].astype(np.float32)


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
            rows.append(
                dict(
                    volume=str(qpath),
                    slice=k,
                    similarity=0.99 - 0.001 * k,
                    nn_source=str(spine["01"]),
                    nn_slice=copied[k],
                )
            )
        else:
            rows.append(
                dict(volume=str(qpath), slice=k, similarity=0.45 + 0.005 * k, nn_source=str(spine["02"]), nn_slice=k)
            )
    out = tmp_path / "audit"
    write_fixture_audit(
        out,
        rows,
        index_path=str(tmp_path / "index"),
        volumes=[
            {
                "volume": str(qpath),
                "axis": "sagittal",
                "array_axis": 0,
                "slices_total": 20,
                "slices_scored": 20,
                "slices_skipped_empty": 0,
            }
        ],
    )
    other = sitk.GetArrayFromImage(sitk.ReadImage(str(spine["02"])))
    fake = FakeIndex({str(spine["01"]): train, str(spine["02"]): other})
    monkeypatch.setattr(report_evidence, "load_reference_index", lambda path: fake)
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
    assert (
        "6 of 20 slices (30.0%) look like copies of training slices; expected by chance at this threshold: 0.02"
        in plain
    )
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
        t01 = report_evidence.display01(other[k])
        b64 = base64.b64encode(report_evidence.gray_png(t01)).decode("ascii")
        assert b64 not in text
    assert "training image withheld" in " ".join(dom.text)


def test_training_image_unavailable_is_said(fixture_audit, monkeypatch):
    out, _, _ = fixture_audit
    monkeypatch.setattr(report_evidence, "load_reference_index", lambda path: "index could not be opened (gone)")
    text = report.render_report(out, max_evidence=3)
    gallery = text[text.index('id="evidence"') :]
    assert gallery.count("training image not available") == 3
    assert not imgs(parse(text), "train")


def test_caps_at_many_slices(tmp_path: Path):
    """1,200 slices in 60 volumes: the gallery and the strips are capped and the report says so."""
    rows, volumes = [], []
    for v in range(60):
        name = f"/nonexistent/gen_{v:02d}.nii.gz"
        volumes.append(
            {
                "volume": name,
                "axis": "axial",
                "array_axis": 0,
                "slices_total": 20,
                "slices_scored": 20,
                "slices_skipped_empty": 0,
            }
        )
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


@pytest.mark.parametrize("copy", ["transpose", "rot+90", "rot-90", "hflip"])
def test_evidence_pair_orients_a_non_square_training_slice_as_matched(copy: str):
    from MemorizationIndexLib.transforms import reference_copy

    train = np.random.default_rng(0).random((40, 64)).astype(np.float32)
    query = reference_copy(train, copy)  # a copy in the matched orientation: [64, 40] when the axes swap
    oriented, label, r = report_evidence.match_orientation(query, train, copy)
    assert oriented.shape == query.shape and label.startswith(copy)
    assert r > 0.99
