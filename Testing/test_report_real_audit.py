"""A real audit on shared spine data: its report in headless Chromium, and built from the kept slices."""

from __future__ import annotations

import csv
import html
import re
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
from report_helpers import EVIL_NAME, _chromium, assert_offline, imgs, parse, plots, write_nifti

from MemorizationIndexLib import report, report_evidence
from MemorizationIndexLib.audit_output import read_audit


@pytest.fixture(scope="module")
def real_audit(tmp_path_factory, spine):
    """Index spine subjects 01-03 (train; 04 and 06 held out for the null), audit a generated volume
    mixing 5 slices copied from subjects 01/02 with subject 05's (novel) slices at alpha 0.05 (the
    40 held-out null slices cannot reach smaller p-values); its file name contains <script>."""
    from MemorizationIndexLib import audit, index_build

    root = tmp_path_factory.mktemp("real")
    index_dir = root / "index"
    options = index_build.BuildOptions(
        device="cpu", holdout_paths=[spine["04"], spine["06"]], reference_copies=False
    )  # copies: 5x slower
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
    result = _chromium(
        chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars", path.as_uri()
    )
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
    assert "(as verified)" in plain  # the copies are shown turned as the verification matched them
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
        patch.setattr(report_evidence, "read_query_volume", lambda *args: pytest.fail("query volume read again"))
        in_memory = report.render_report(out, generated="fixed", max_evidence=max_evidence, query_slices=kept)
    assert [a["src"] for a in imgs(parse(in_memory), "query")] == [a["src"] for a in imgs(parse(from_disk), "query")]
    assert in_memory == from_disk


def test_report_from_the_audit_slices_equals_reading_them(real_audit, monkeypatch):
    from MemorizationIndexLib.audit import query_slices

    out, _, audits, _ = real_audit
    kept = query_slices(audits)
    rows = read_audit(out).rows
    assert set(kept) == {(r.volume, r.slice) for r in report_evidence.ranked(rows)[:24]}
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
    assert set(kept) == {(r.volume, r.slice) for r in report_evidence.ranked(rows)[:3]}
    assert sum(len(a.evidence_slices) for a in audits) == 3
    _assert_same_report_from_kept_slices(out, kept, 3, monkeypatch)
