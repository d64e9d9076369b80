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

from facenet import report, verify
from facenet.pairs import read_pairs
from jobs import evaluate as ev
from jobs.cli import UsageError, parse_config
from masktheface import dataset_schema as S

PNG = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- no Ray

def _cfg(**kw) -> ev.EvaluateConfig:
    base = dict(pairs="p.txt", images="imgs", output="out")
    return ev.EvaluateConfig(**{**base, **kw})


def test_cli_builds_the_config():
    argv = ["--pairs", "p.txt", "--images", "s3://b/lfw", "--output", "o", "--far", "0.0022,0.001",
            "--variants", "original,N95", "--mixed", "--prealigned", "--limit-pairs", "20", "--seed", "3",
            "--folds", "0,1", "--fallback-box", "none", "--num-actors", "2", "--ray-address", "auto"]
    cfg = parse_config(ev.EvaluateConfig, argv, prog="t")
    assert cfg.far == (0.0022, 0.001) and cfg.variants == ("original", "N95")
    assert cfg.mixed and cfg.prealigned and cfg.limit_pairs == 20 and cfg.seed == 3
    assert cfg.folds == (0, 1) and cfg.fallback_box is None and cfg.model == "dlib"
    assert cfg.num_actors == 2 and cfg.ray_address == "auto"
    assert _cfg().fallback_box == verify.LFW_CENTRE_BOX and _cfg().variants == verify.PAPER_VARIANTS
    assert parse_config(ev.EvaluateConfig, ["--fallback-box", "0.1,0.2,0.8,0.9"], prog="t").fallback_box == \
        (0.1, 0.2, 0.8, 0.9)
    for bad in (dict(fallback_box=(0.5, 0.5, 0.2, 0.9)), dict(variants=("original", "mixed")),
                dict(variants=("N95", "N95")), dict(variants=("original", "bogus")), dict(far=(5.0,)),
                dict(far=(0.0,)), dict(mixed=True, variants=("original",)), dict(limit_pairs=0)):
        with pytest.raises(UsageError):
            _cfg(**bad)


def test_bad_input_is_refused_before_any_work(tmp_path, lfw_dir, capsys, monkeypatch):
    """Exit status 2 with one line and no traceback, before Ray or an embedder starts."""
    from jobs import raysetup

    def no_work(*a, **k):
        raise AssertionError("work started despite a usage error")

    monkeypatch.setattr(ev, "embed_images", no_work)
    monkeypatch.setattr(raysetup, "init_ray", no_work)
    monkeypatch.setattr(verify, "VariantEmbedder", no_work)
    pairs = str(lfw_dir / "pairs.txt")
    images = str(lfw_dir / "lfw-deepfunneled")
    bad_pairs = tmp_path / "bad.txt"
    bad_pairs.write_text("this is not\na pairs file at all\n")
    cases = [
        (["--far", "5"], "--far wants targets in (0, 1)"),
        (["--variants", "original,bogus"], "unknown variant 'bogus'"),
        (["--variants", "original,,N95"], "empty entry"),
        (["--pairs", str(tmp_path / "absent.txt"), "--images", images, "--output", str(tmp_path / "o")],
         "file not found"),
        (["--pairs", str(bad_pairs), "--images", images, "--output", str(tmp_path / "o")], "not a pairs file"),
        (["--pairs", pairs, "--images", str(tmp_path / "absent"), "--output", str(tmp_path / "o")], "not found"),
        (["--pairs", pairs, "--images", images], "required"),
        (["--smoke-test", "--pairs", pairs], "--smoke-test brings its own data"),
        (["--far", "0.001", "0.01"], "unrecognized arguments"),
    ]
    for argv, msg in cases:
        assert ev.cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "o").exists()
    monkeypatch.setenv("MASKTHEFACE_DATA", str(tmp_path / "no-data"))
    assert ev.cli(["--smoke-test"]) == 2
    assert "needs lfw/pairs.txt" in capsys.readouterr().err


def test_limit_pairs_spans_folds_and_classes(lfw_dir):
    pairs, issame, folds = ev.load_pairs(_cfg(pairs=str(lfw_dir / "pairs.txt"), limit_pairs=40))
    assert len(pairs) == 40 and 0 < issame.sum() < 40 and len(set(folds.tolist())) == 10
    pairs, issame, folds = ev.load_pairs(_cfg(pairs=str(lfw_dir / "pairs.txt"), folds=(2,)))
    assert len(pairs) == 600 and set(folds.tolist()) == {2} and issame.sum() == 300


def test_one_set_pairs_file_gets_ten_stratified_folds(lfw_dir):
    pairs, issame, folds = ev.load_pairs(_cfg(pairs=str(lfw_dir / "pairsDevTest.txt")))
    assert len(pairs) == 1000 and issame.sum() == 500
    for k in range(10):
        assert (folds == k).sum() == 100 and issame[folds == k].sum() == 50


def test_mixed_choice_is_seeded_per_image():
    keys = [f"p{i}/p{i}_0001.jpg" for i in range(200)]
    masks = ["N95", "cloth", "surgical_blue", "surgical_green"]
    a = verify.mixed_choice(0, keys, masks)
    assert (a == verify.mixed_choice(0, keys, masks)).all()
    assert (a[50:] == verify.mixed_choice(0, keys[50:], masks)).all()
    assert not (a == verify.mixed_choice(1, keys, masks)).all()
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
    E = verify.Embeddings(keys, variants, emb, status, error, np.full((len(keys), 2), "detected", object))
    return tmp_path / "pairs.txt", E


def test_metrics_grid_missing_pairs_and_report(tmp_path):
    pairs_file, E = _synthetic(tmp_path)
    cfg = _cfg(pairs=str(pairs_file), variants=("original", "N95"), mixed=True, cluster=True, far=(0.01, 0.1))
    pairs, issame, folds = ev.load_pairs(cfg)
    metrics, clusters = verify.compute_metrics(pairs, issame, folds, E, far=cfg.far, mixed=True, cluster=True,
                                               model="m", config=cfg)
    json.dumps(metrics, allow_nan=False)  # strict JSON
    assert metrics["variants"] == ["original", "N95", "mixed"]
    assert set(metrics["grids"]) == set(verify.grid_keys(cfg.far))
    assert set(metrics["cells"]["N95"]["original"]) <= set(verify.cell_keys(cfg.far))
    assert set(metrics) <= set(verify.VerificationMetrics.__annotations__)
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
    names, mats = verify.variant_matrix(E, mixed=True)
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
    text = ev.summarise({**metrics, "config": {"output": "out/x"}, "seconds": 75.2})
    assert text.startswith("output: out/x") and "accuracy" in text and "1m15s" in text


def test_embeddings_cache_round_trip_and_merge(tmp_path):
    _, E = _synthetic(tmp_path)
    data = E.to_bytes("fp")
    assert verify.Embeddings.from_bytes(data, "other") is None
    assert verify.Embeddings.from_bytes(b"garbage", "fp") is None
    L = verify.Embeddings.from_bytes(data, "fp")
    assert L.keys == E.keys and np.array_equal(L.emb, E.emb, equal_nan=True)
    assert L.error[5, 0] == "no face found" and L.error[0, 0] is None
    sub = verify.select(L, L.keys[:3] + ["new/new_0001.png"], ["N95", "cloth"])
    assert sub.status[:3, 0].tolist() == ["ok"] * 3 and sub.status[3, 0] == "not_embedded"
    assert (sub.status[:, 1] == "not_embedded").all()
    merged = verify.merge(L, sub)
    assert merged.variants == ["original", "N95", "cloth"] and len(merged.keys) == len(E.keys) + 1
    F = verify.Embeddings.empty(["a", "b"], ["original"])
    assert F.fill([{"key": "b", "variant": "original", "status": "ok", "error": None, "method": "detected",
                    "embedding": np.ones(4, np.float32)}, {"key": "zz", "variant": "original"}]) == 1
    assert F.emb.shape == (2, 1, 4) and F.status[:, 0].tolist() == ["not_embedded", "ok"]


def test_variant_embedder_rows_without_ray(lfw_images_dir):
    """The evaluation's per-image work as a plain object: every failure is a row."""
    from masktheface.imageio import decode_image

    E = verify.VariantEmbedder(model="dlib", variants=["original", "N95"], seed=0,
                               fallback_box=verify.LFW_CENTRE_BOX)
    data = (lfw_images_dir / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg").read_bytes()
    rows = E.image_rows("Aaron_Eckhart/Aaron_Eckhart_0001.jpg", data)
    assert [(r["variant"], r["status"], r["method"]) for r in rows] == [("original", "ok", "detected"),
                                                                       ("N95", "ok", "detected")]
    a, b = (np.asarray(r["embedding"]) for r in rows)
    assert a.shape == (128,) and 0 < np.sum((a - b) ** 2) < 0.6  # the mask moves the embedding, not far
    assert {r["status"] for r in E.image_rows("x", None, "gone")} == {"read_error"}
    assert {r["status"] for r in E.image_rows("x", b"not an image")} == {"decode_error"}
    blank = __import__("cv2").imencode(".png", np.full((120, 120, 3), 200, np.uint8))[1].tobytes()
    fallback = E.image_rows("x", blank)  # no face: landmarks fitted in the centre box
    assert fallback[0]["status"] == "ok" and {r["method"] for r in fallback} == {"centre_box"}
    E.fallback_box = None
    assert {r["status"] for r in E.image_rows("x", blank)} == {"no_face"}
    face = E.find_face(decode_image(data))
    stored = [{S.KEY: "k", S.VARIANT: "N95", S.STATUS: "ok", S.IMAGE: data,
               S.LANDMARKS: face.landmarks.ravel().tolist()},
              {S.KEY: "k", S.VARIANT: "original", S.STATUS: "no_face", S.IMAGE: None, S.LANDMARKS: None},
              {S.KEY: "k", S.VARIANT: "cloth", S.STATUS: "ok", S.IMAGE: data, S.LANDMARKS: None}]
    got = E.stored_rows(stored)
    assert [(r["variant"], r["status"], r["method"]) for r in got] == [("N95", "ok", "landmarks"),
                                                                      ("original", "no_face", "")]
    np.testing.assert_allclose(got[0]["embedding"], a, atol=1e-6)  # same pixels, same landmarks


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
                 str(tmp_path / "out"), "--prealigned", "--variants", "original,N95", "--far", "0.0022,0.001",
                 "--cluster"])
    assert m["n_pairs"] == 10 and m["status_counts"]["original"].get("ok") == m["n_images"]
    assert set(m["alignment_methods"]) <= {"aligned_detected", "aligned_landmarks", "aligned_fixed"}
    assert "tpr@far=0.0022" in m["cells"]["original"]["original"]
    assert m["clustering"]["n"] == m["n_images"]
    assert (tmp_path / "out" / "clusters.png").read_bytes().startswith(PNG)


@pytest.mark.ray
@pytest.mark.slow
def test_job_reads_mask_dataset_parquet(ray_session, lfw_dir, tmp_path):
    """A masked data set written through the contract (the rows mask_dataset's actors make):
    the masked rows are embedded with the stored (unmasked) landmarks, nothing is masked
    here; a variant the data set does not hold is refused before any work."""
    import pyarrow.parquet as pq

    from masktheface import dataset as mds
    from masktheface.pipeline import Masker

    pairs = _write_lfw_subset(lfw_dir, tmp_path / "pairs.txt", missing=False)
    keys = sorted({k for p in pairs for k in (p.left, p.right)})
    masker, variants, rows = Masker(), mds.plan_variants("custom", ("original", "cloth")), []
    for k in keys:
        base = {S.KEY: k, S.IDENTITY: k.split("/")[0], S.SOURCE: k, S.SEED: 0, S.FORMAT: "jpg", S.RUN_ID: "t",
                S.FACES_FROM: "detector", S.ALIGNED_SIZE: None}
        rows += mds.variant_rows(masker.process((lfw_dir / "lfw-deepfunneled" / k).read_bytes(), k, variants),
                                 variants, base)
    (tmp_path / "ds").mkdir()
    pq.write_table(S.table_from_rows(rows), tmp_path / "ds" / "part-0.parquet")
    assert ev.is_parquet_source(str(tmp_path / "ds")) and not ev.is_parquet_source(str(lfw_dir))
    argv = ["--pairs", str(tmp_path / "pairs.txt"), "--images", str(tmp_path / "ds"), "--output", str(tmp_path / "out")]
    with pytest.raises(UsageError, match="N95: not in the data set"):
        ev.main(argv + ["--variants", "original,N95"])
    m = ev.main(argv + ["--variants", "original,cloth"])
    assert m["n_pairs"] == 20
    assert m["alignment_methods"] == {"landmarks": m["n_images"]}
    assert m["status_counts"]["cloth"] == {"ok": m["n_images"]}
    assert m["cells"]["original"]["original"]["n_missing"] == 0


def test_smoke_test_fills_its_data(tmp_path, monkeypatch):
    lfw = tmp_path / "data" / "lfw"
    lfw.mkdir(parents=True)
    (lfw / "pairs.txt").write_text("10 300\n")
    monkeypatch.setenv("MASKTHEFACE_DATA", str(tmp_path / "data"))
    cfg = ev.smoke_config(ev.EvaluateConfig(smoke_test=True, output=str(tmp_path / "o")))
    assert cfg.pairs == str(lfw / "pairs.txt") and cfg.images == str(lfw / "lfw-deepfunneled")
    assert cfg.limit_pairs == ev.SMOKE_PAIRS and cfg.variants == ("original", "N95")
    assert cfg.output == str(tmp_path / "o")


@pytest.mark.s3
def test_pairs_file_on_s3(lfw_dir, s3_bucket, s3_env):
    """--pairs may live in object storage beside the images, as a cluster's data does."""
    from jobs import storage

    uri = storage.join_uri(s3_bucket, "lfw", "pairsDevTest.txt")
    storage.write_bytes(uri, (lfw_dir / "pairsDevTest.txt").read_bytes())
    remote = ev.load_pairs(_cfg(pairs=uri, limit_pairs=50))
    local = ev.load_pairs(_cfg(pairs=str(lfw_dir / "pairsDevTest.txt"), limit_pairs=50))
    assert remote[0] == local[0] and (remote[1] == local[1]).all() and (remote[2] == local[2]).all()
    with pytest.raises(UsageError, match="file not found"):
        ev.load_pairs(_cfg(pairs=storage.join_uri(s3_bucket, "missing.txt")))
    with pytest.raises(UsageError, match="cannot be read|file not found"):
        ev.load_pairs(_cfg(pairs="s3://no-such-bucket-mtf/pairs.txt"))
