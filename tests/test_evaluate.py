"""jobs.evaluate and facenet.report: driver-side metrics and pictures without Ray, then the
job end to end on the shared local Ray (``ray_session``) over real LFW and MFR2 images.

The Ray runs are small (a 20-pair LFW file with 2 variants, 8 MFR2 pairs, 8 pairs from a
hand-made Parquet) and share one module-scoped LFW run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from facenet import report
from facenet.pairs import read_pairs
from jobs import evaluate as ev

PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- no Ray

def _cfg(**kw) -> ev.EvaluateConfig:
    base = dict(pairs="p.txt", images="imgs", output="out")
    return ev.EvaluateConfig(**{**base, **kw})


def test_cli_builds_the_config():
    argv = ["--pairs", "p.txt", "--images", "s3://b/lfw", "--output", "o", "--far", "0.0022", "0.001",
            "--variants", "original,N95", "--mixed", "--prealigned", "--limit-pairs", "20", "--seed", "3",
            "--folds", "0", "1", "--fallback-box", "none"]
    from jobs import common
    cfg = common.parse_dataclass(ev.EvaluateConfig, argv)
    assert cfg.far == (0.0022, 0.001) and cfg.variant_list == ("original", "N95")
    assert cfg.mixed and cfg.prealigned and cfg.limit_pairs == 20 and cfg.seed == 3
    assert cfg.folds == (0, 1) and cfg.fallback is None and cfg.model == "dlib"
    assert _cfg().fallback == ev.LFW_CENTRE_BOX
    with pytest.raises(ValueError):
        _cfg(fallback_box="0.5,0.5,0.2,0.9").fallback
    with pytest.raises(ValueError):
        _cfg(variants="original,mixed").variant_list
    with pytest.raises(ValueError):
        _cfg(variants="N95,N95").variant_list


def test_limit_pairs_spans_folds_and_classes(lfw_dir):
    pairs, issame, folds = ev.load_pairs(_cfg(pairs=str(lfw_dir / "pairs.txt"), limit_pairs=40))
    assert len(pairs) == 40 and 0 < issame.sum() < 40 and len(set(folds.tolist())) == 10
    pairs, issame, folds = ev.load_pairs(_cfg(pairs=str(lfw_dir / "pairs.txt"), folds=(2,)))
    assert len(pairs) == 600 and set(folds.tolist()) == {2} and issame.sum() == 300


def test_mixed_choice_is_seeded_per_image():
    keys = [f"p{i}/p{i}_0001.jpg" for i in range(200)]
    a = ev.mixed_choice(0, keys, ["N95", "cloth", "surgical_blue", "surgical_green"])
    assert (a == ev.mixed_choice(0, keys, ["N95", "cloth", "surgical_blue", "surgical_green"])).all()
    assert (a[50:] == ev.mixed_choice(0, keys[50:], ["N95", "cloth", "surgical_blue", "surgical_green"])).all()
    assert not (a == ev.mixed_choice(1, keys, ["N95", "cloth", "surgical_blue", "surgical_green"])).all()
    assert set(a.tolist()) == {0, 1, 2, 3}


def _synthetic(tmp_path: Path, n_ids: int = 12, per: int = 4, dim: int = 16, seed: int = 0):
    """A headerless pairs file over fake identities, and an Embeddings object for them where
    masked variants are noisier; one image has no embedding in any variant."""
    rng = np.random.default_rng(seed)
    keys = [f"id{i:02d}/id{i:02d}_{j + 1:04d}.png" for i in range(n_ids) for j in range(per)]
    centres = rng.normal(size=(n_ids, dim))
    lines = []
    for i in range(n_ids):
        lines += [f"id{i:02d} 1 2", f"id{i:02d} 3 4", f"id{i:02d} 1 {(i % 2) + 3}"]
        lines += [f"id{i:02d} 1 id{(i + 1) % n_ids:02d} 2", f"id{i:02d} 2 id{(i + 5) % n_ids:02d} 3",
                  f"id{i:02d} 4 id{(i + 7) % n_ids:02d} 1"]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    variants = ["original", "N95"]
    emb = np.empty((len(keys), 2, dim), np.float32)
    for k, key in enumerate(keys):
        c = centres[int(key[2:4])]
        for j, noise in enumerate((0.3, 0.9)):
            v = c + noise * rng.normal(size=dim)
            emb[k, j] = v / np.linalg.norm(v)
    status = np.full((len(keys), 2), "ok", object)
    error = np.full((len(keys), 2), None, object)
    emb[5] = np.nan
    status[5] = "no_face"
    error[5] = "no face found"
    E = ev.Embeddings(keys, variants, emb, status, error, np.full((len(keys), 2), "detected", object))
    return tmp_path / "pairs.txt", E


def test_metrics_grid_missing_pairs_and_report(tmp_path):
    pairs_file, E = _synthetic(tmp_path)
    cfg = _cfg(pairs=str(pairs_file), variants="original,N95", mixed=True, cluster=True, far=(0.01, 0.1))
    pairs, issame, folds = ev.load_pairs(cfg)
    metrics, clusters = ev.compute_metrics(cfg, pairs, issame, folds, E)
    json.dumps(metrics, allow_nan=False)  # strict JSON
    assert metrics["variants"] == ["original", "N95", "mixed"]
    acc = np.array(metrics["grids"]["accuracy"], dtype=float)
    assert acc.shape == (3, 3) and np.isfinite(acc).all()
    assert acc[0, 0] > acc[1, 1]  # noisier masked embeddings verify worse
    n_missing = sum(1 for p in pairs if E.keys[5] in (p.left, p.right))
    assert n_missing > 0
    cell = metrics["cells"]["original"]["original"]
    assert cell["n_missing"] == n_missing and cell["n_valid"] == len(pairs) - n_missing
    assert cell["accuracy_all"] < cell["accuracy"]
    assert metrics["status_counts"]["N95"] == {"no_face": 1, "ok": len(E.keys) - 1}
    assert metrics["n_failures"] == 2 and metrics["failures"][0]["key"] == E.keys[5]
    assert set(metrics["roc"]) >= {"original|original", "original|N95", "original|mixed"}
    ft = metrics["fixed_threshold"]
    assert ft["cells"]["original"]["original"]["accuracy"] == pytest.approx(cell["accuracy_fit"])
    c = metrics["clustering"]
    assert c["n_identities"] == 12 and c["n_missing"] == 1 and 0 < c["purity"] <= 1 and 0 < c["nmi"] <= 1
    # the mixed variant reuses one masked embedding per image
    names, mats = ev.variant_matrix(E, cfg)
    assert np.array_equal(mats["mixed"][:5], mats["N95"][:5], equal_nan=True)

    figs = report.make_figures(metrics, compare=metrics, clusters=clusters)
    assert {"heatmap_accuracy.png", "heatmap_tpr_far0.01.png", "heatmap_acc_far0.1.png",
            "roc_template_original.png", "bar_nomask_vs_mask.png", "clusters.png"} <= set(figs)
    assert all(b.startswith(PNG) for b in figs.values())
    metrics["figures"] = sorted(figs)
    md = report.render_markdown(metrics, "t")
    html = report.render_html(metrics, "t")
    assert "![heatmap_accuracy.png](heatmap_accuracy.png)" in md and "| original |" in md
    assert "<img src='clusters.png'" in html and html.count("<table>") >= 3


def test_embeddings_cache_round_trip_and_merge(tmp_path):
    _, E = _synthetic(tmp_path)
    path = str(tmp_path / "e.npz")
    E.save(path, "fp")
    assert ev.Embeddings.load(path, "other") is None
    L = ev.Embeddings.load(path, "fp")
    assert L.keys == E.keys and np.array_equal(L.emb, E.emb, equal_nan=True)
    assert L.error[5, 0] == "no face found" and L.error[0, 0] is None
    sub = ev.select(L, L.keys[:3] + ["new/new_0001.png"], ["N95", "cloth"])
    assert sub.status[:3, 0].tolist() == ["ok"] * 3 and sub.status[3, 0] == "not_embedded"
    assert (sub.status[:, 1] == "not_embedded").all()
    merged = ev.merge(L, sub)
    assert merged.variants == ["original", "N95", "cloth"] and len(merged.keys) == len(E.keys) + 1


def test_parse_landmarks_shapes():
    lm = np.arange(136, dtype=np.float32)
    assert ev._parse_landmarks(lm).shape == (68, 2)
    two = [np.zeros(136), np.r_[np.zeros(68), np.arange(68) * 10.0]]
    assert ev._parse_landmarks(np.concatenate(two))[:, 1].max() == 670
    assert ev._parse_landmarks(None) is None and ev._parse_landmarks([1.0, 2.0]) is None


# ---------------------------------------------------------------------------------- Ray

def _write_lfw_subset(lfw_dir: Path, path: Path, missing: bool = True) -> list:
    """2 folds x (5 same + 5 different) from View 2 in LFW layout ('2 5' header); the last
    different pair points at an image that does not exist."""
    pairs = read_pairs(lfw_dir / "pairs.txt")
    lines = ["2\t5"]
    for fold in (0, 1):
        same = [p for p in pairs if p.fold == fold and p.same][:5]
        diff = [p for p in pairs if p.fold == fold and not p.same][:5]
        for p in same:
            n = p.left.split("/")[0]
            lines.append(f"{n}\t{int(p.left[-8:-4])}\t{int(p.right[-8:-4])}")
        for p in diff:
            a, b = p.left.split("/")[0], p.right.split("/")[0]
            lines.append(f"{a}\t{int(p.left[-8:-4])}\t{b}\t{int(p.right[-8:-4])}")
    if missing:
        lines[-1] = "No_Body\t1\tAbel_Pacheco\t1"
    path.write_text("\n".join(lines) + "\n")
    return read_pairs(path)


@pytest.fixture(scope="module")
def lfw_run(ray_session, lfw_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_lfw")
    pairs = _write_lfw_subset(lfw_dir, tmp / "pairs.txt")
    out = tmp / "out"
    argv = ["--pairs", str(tmp / "pairs.txt"), "--images", str(lfw_dir / "lfw-deepfunneled"),
            "--output", str(out), "--variants", "original,N95", "--mixed", "--seed", "0"]
    metrics = ev.main(argv)
    return argv, out, pairs, metrics


@pytest.mark.ray
@pytest.mark.slow
def test_job_end_to_end_lfw(lfw_run):
    argv, out, pairs, metrics = lfw_run
    assert metrics["n_pairs"] == 20 and metrics["variants"] == ["original", "N95", "mixed"]
    for name in ("metrics.json", "report.md", "report.html", "embeddings.npz", "heatmap_accuracy.png",
                 "heatmap_tpr_far0.001.png", "heatmap_acc_far0.001.png", "roc_template_original.png",
                 "bar_nomask_vs_mask.png"):
        assert (out / name).is_file(), name
    assert (out / "heatmap_accuracy.png").read_bytes().startswith(PNG)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["grids"]["accuracy"] == metrics["grids"]["accuracy"]
    # each distinct (image, variant) once; the missing file is a read_error row in each variant
    n = len({k for p in pairs for k in (p.left, p.right)})
    assert metrics["n_images"] == n
    counts = metrics["status_counts"]
    assert counts["original"] == {"ok": n - 1, "read_error": 1} and counts["N95"] == {"ok": n - 1, "read_error": 1}
    bad = [f for f in metrics["failures"] if f["status"] == "read_error"]
    assert {f["key"] for f in bad} == {"No_Body/No_Body_0001.jpg"}
    # the pair with the missing image is reported as missing, in every cell
    cell = metrics["cells"]["original"]["N95"]
    assert cell["n_missing"] == 1 and cell["n_valid"] == 19
    assert cell["accuracy_all"] <= cell["accuracy"]
    # the unmasked pairs are easy for dlib's ResNet
    assert metrics["cells"]["original"]["original"]["accuracy"] >= 0.85


@pytest.mark.ray
@pytest.mark.slow
def test_job_rerun_reuses_embeddings(lfw_run):
    argv, out, pairs, metrics = lfw_run
    mtime = os.path.getmtime(out / "embeddings.npz")
    again = ev.main(argv + ["--variants", "N95,original"])  # a subset in another order: no new work
    assert os.path.getmtime(out / "embeddings.npz") == mtime
    assert again["cells"]["original"]["N95"]["accuracy"] == metrics["cells"]["original"]["N95"]["accuracy"]


@pytest.mark.ray
@pytest.mark.slow
def test_job_mfr2_prealigned_with_clustering(ray_session, mfr2_dir, tmp_path):
    lines = (mfr2_dir / "pairs.txt").read_text().splitlines()[:10]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    m = ev.main(["--pairs", str(tmp_path / "pairs.txt"), "--images", str(mfr2_dir), "--output",
                 str(tmp_path / "out"), "--prealigned", "--variants", "original,N95", "--far", "0.0022", "0.001",
                 "--cluster"])
    assert m["n_pairs"] == 10 and m["status_counts"]["original"].get("ok") == m["n_images"]
    assert set(m["alignment_methods"]) <= {"aligned_detected", "aligned_landmarks", "aligned_fixed"}
    assert "tpr@far=0.0022" in m["cells"]["original"]["original"]
    assert m["clustering"]["n"] == m["n_images"]
    assert (tmp_path / "out" / "clusters.png").read_bytes().startswith(PNG)


@pytest.mark.ray
@pytest.mark.slow
def test_job_reads_mask_dataset_parquet(ray_session, lfw_dir, tmp_path):
    """Rows shaped like jobs.mask_dataset's (key, variant, status, image, landmarks): the
    masked rows are embedded with the stored (unmasked) landmarks, nothing is masked here."""
    import cv2
    import pyarrow as pa
    import pyarrow.parquet as pq

    from masktheface.pipeline import Masker, MaskerConfig
    from masktheface.spec import MaskSpec, item_rng

    pairs = _write_lfw_subset(lfw_dir, tmp_path / "pairs.txt", missing=False)
    keys = sorted({k for p in pairs for k in (p.left, p.right)})
    masker = Masker(MaskerConfig())
    rows = []
    for k in keys:
        data = (lfw_dir / "lfw-deepfunneled" / k).read_bytes()
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        faces = masker.find_faces(bgr)
        lm = faces[0].landmarks.ravel().tolist() if faces else None
        rows.append(dict(key=k, variant="original", status="ok" if faces else "no_face", image=data, landmarks=lm))
        if faces:
            res = masker.mask(bgr, MaskSpec("cloth"), item_rng(0, k), faces=faces)
            rows.append(dict(key=k, variant="cloth", status=res.status,
                             image=cv2.imencode(".jpg", res.image)[1].tobytes(), landmarks=lm))
        else:
            rows.append(dict(key=k, variant="cloth", status="no_face", image=None, landmarks=None))
    schema = pa.schema([("key", pa.string()), ("variant", pa.string()), ("status", pa.string()),
                        ("image", pa.binary()), ("landmarks", pa.list_(pa.float32(), 136))])
    (tmp_path / "ds").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "ds" / "part-0.parquet")
    assert ev.is_parquet_source(str(tmp_path / "ds")) and not ev.is_parquet_source(str(lfw_dir))
    m = ev.main(["--pairs", str(tmp_path / "pairs.txt"), "--images", str(tmp_path / "ds"),
                 "--output", str(tmp_path / "out"), "--variants", "original,cloth"])
    assert m["n_pairs"] == 20
    assert m["alignment_methods"] == {"landmarks": m["n_images"]}
    assert m["status_counts"]["cloth"] == {"ok": m["n_images"]}
    assert m["cells"]["original"]["original"]["n_missing"] == 0


def test_smoke_test_flag_fills_defaults(tmp_path, monkeypatch):
    from jobs import evaluate as ev

    monkeypatch.setenv("MASKTHEFACE_DATA", str(tmp_path / "absent"))
    with pytest.raises(SystemExit, match="needs LFW"):
        ev._smoke_argv([])
    lfw = tmp_path / "data" / "lfw"
    lfw.mkdir(parents=True)
    (lfw / "pairs.txt").write_text("10 300\n")
    monkeypatch.setenv("MASKTHEFACE_DATA", str(tmp_path / "data"))
    argv = ev._smoke_argv(["--output", str(tmp_path / "o"), "--variants=original"])
    assert argv.count("--output") == 1 and "--variants" not in argv
    assert argv[argv.index("--pairs") + 1] == str(lfw / "pairs.txt") and "--limit-pairs" in argv
