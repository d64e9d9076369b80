"""jobs.mask_dataset and jobs.export_images: unit tests without Ray, then end-to-end runs on
the shared local Ray (``ray_session``) over ~45 real LFW images plus the bad-file corpus,
the s3:// path against the real S3 server, and ``ray job submit`` against ``ray_head``.

The Ray runs share one module fixture (first run on a file list, a resumed full run, a
no-op rerun) so the whole file takes 1-1.5 minutes on two cores (job submit included).
"""
from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from jobs import export_images, storage
from jobs import mask_dataset as md
from jobs import mask_stages as stages
from jobs.cli import UsageError
from masktheface import dataset as mds
from masktheface import dataset_schema as S

sys.path.insert(0, str(Path(__file__).resolve().parent))
from badfiles import FACE_UNCERTAIN, NO_FACE, write_bad_corpus  # noqa: E402

LFW_VARIANTS = ["original", "cloth", "surgical_green", "surgical_blue", "N95"]
BAD = "zz_bad"
ROOT = Path(__file__).resolve().parents[1]  # the bad corpus' folder: sorts after every LFW identity

# ---------------------------------------------------------------------------------- helpers


def expected_status(code: str, name: str) -> set[str]:
    """Statuses a bad-corpus file may get (for every variant)."""
    if code == "too_large":
        return {"too_large"}
    if code != "ok":
        return {"decode_error"}
    if name in NO_FACE:
        return {"no_face"}
    if name in FACE_UNCERTAIN:
        return {"ok", "no_face", "mask_failed"}
    return {"ok"}


def read_output(out: Path | str, fs: pafs.FileSystem | None = None) -> pa.Table:
    fs = fs or pafs.LocalFileSystem()
    root = str(out)
    files = S.data_files(fs, root)
    return pa.concat_tables([pq.read_table(f, filesystem=fs) for f in files])


def pairs(table: pa.Table) -> list[tuple[str, str]]:
    return list(zip(table.column("key").to_pylist(), table.column("variant").to_pylist()))


def argv(input_: str, output: str, *extra: str) -> list[str]:
    return ["--input", input_, "--output", output, "--no-progress-bars", "--progress-every-s", "2",
            "--rows-per-file", "60", *extra]


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, lfw_images_dir) -> dict:
    """``input/<identity>/<file>``: 45 LFW images (15 identities x 3) + ``zz_bad/`` (the bad
    corpus: corrupt, truncated, huge, odd names, ...) + files that must not be listed."""
    root = tmp_path_factory.mktemp("md") / "input"
    keys = []
    for person in sorted(p for p in lfw_images_dir.iterdir() if p.is_dir()):
        imgs = sorted(person.iterdir())
        if len(imgs) < 3:
            continue
        (root / person.name).mkdir(parents=True)
        for f in imgs[:3]:
            shutil.copy(f, root / person.name / f.name)
            keys.append(f"{person.name}/{f.name}")
        if len(keys) >= 45:
            break
    source = lfw_images_dir / "George_W_Bush" / "George_W_Bush_0001.jpg"
    codes = write_bad_corpus(root / BAD, source)
    (root / BAD / "notes.txt").write_text("not an image name: never listed")
    (root / BAD / ".hidden.jpg").write_bytes(source.read_bytes())
    bad = {f"{BAD}/{name}": code for name, code in codes.items()}
    return {"root": root, "lfw": keys, "bad": bad, "all": sorted(keys + list(bad))}


@pytest.fixture(scope="module")
def runs(corpus, ray_session, tmp_path_factory) -> dict:
    """run1: a --files subset (20 LFW + 15 bad); run2: the whole tree (resumes);
    run3: the whole tree again (nothing to do)."""
    out = tmp_path_factory.mktemp("md_out") / "lfw-sm"
    first = corpus["lfw"][:20] + sorted(corpus["bad"])[:15]
    listing = out.parent / "files.txt"
    listing.write_text("# a comment\n" + "\n".join(first) + "\n")
    common = argv(str(corpus["root"]), str(out), "--recipe", "lfw-sm", "--max-error-rate", "0.5",
                  "--seed", "7")
    s1 = md.main(common + ["--files", str(listing), "--run-id", "run1"])
    t1 = read_output(out)
    s2 = md.main(common + ["--run-id", "run2"])
    t2 = read_output(out)
    s3 = md.main(common + ["--run-id", "run3"])
    return {"out": out, "first": first, "s1": s1, "s2": s2, "s3": s3, "t1": t1, "t2": t2,
            "common": common}


# ---------------------------------------------------------------------------------- unit tests


def test_recipes_and_cli():
    cfg = md.parse_args(["--input", "x", "--output", "y", "--recipe", "custom", "--variants",
                         "original,N95,surgical-#0473e2", "--code", "mix=cloth,N95", "--code",
                         "surgical_blue,KN95", "--aligned", "none"])
    assert cfg.aligned is None and cfg.variants == ("original", "N95", "surgical-#0473e2")
    plans = md.plan(cfg)
    assert [p.name for p in plans] == ["original", "N95", "surgical-0473e2", "mix", "masked"]
    assert [len(p.specs) for p in plans] == [0, 1, 1, 2, 2]
    assert [p.name for p in mds.plan_variants("lfw-sm")] == LFW_VARIANTS
    sm = mds.plan_variants("vggface2-mini-sm")
    assert [p.name for p in sm] == ["original", "masked"] and sm[1].draw == "image"
    with pytest.raises(UsageError, match="unique"):
        md.plan(md.parse_args(["--recipe", "custom", "--variants", "N95,n95"]))
    with pytest.raises(UsageError, match="custom"):
        md.MaskDatasetConfig(recipe="lfw-sm", code=("N95",))
    with pytest.raises(UsageError, match="unknown mask type 'bogus'"):
        md.plan(md.parse_args(["--recipe", "custom", "--code", "bogus"]))
    assert md.MaskDatasetConfig(count_no_face_as_error=True).error_statuses[-1] == "no_face"
    assert "no_face" not in md.MaskDatasetConfig().error_statuses
    for bad in (["--quality", "500"], ["--num-actors", "0"], ["--max-error-rate", "2"], ["--run-id", "a b"]):
        with pytest.raises(UsageError):
            md.parse_args(bad)


def test_vggface2_draw_is_per_image_by_name_and_uniform():
    """The recipe's 'masked' variant draws one type per image from the variant's own
    stream (seed, key, name): the same draw wherever that variant is rendered."""
    from masktheface.spec import choose, variant_rng

    masked = mds.plan_variants("vggface2-mini-sm")[1]
    keys = [f"n{i:06d}/0001_01.jpg" for i in range(400)]
    drawn = [choose(masked.specs, variant_rng(0, k, masked.name)).mask_type for k in keys]
    counts = Counter(drawn)
    assert set(counts) == set(mds.SM_TYPES) and min(counts.values()) > 60
    assert drawn != [choose(masked.specs, variant_rng(1, k, masked.name)).mask_type for k in keys]


def test_boxes_landmarks_and_file_lists():
    vgg = 'NAME_ID,X,Y,W,H\n"n000002/0001_01",161,140,224,324\n"n000002/0002_01",10,20,30,40\n'
    b = mds.parse_boxes(vgg)
    assert b["n000002/0001_01"] == [[161, 140, 385, 464]]
    assert mds.lookup(b, "n000002/0001_01.jpg") == [[161, 140, 385, 464]]
    assert mds.lookup(b, "train/n000002/0001_01.jpg") == [[161, 140, 385, 464]]  # root above
    two = mds.parse_boxes("a/x.jpg,1,2,50,60\na/x.jpg,60,2,90,40\n")  # two faces, xyxy, no header
    assert two["a/x"] == [[1, 2, 50, 60], [60, 2, 90, 40]]
    assert mds.parse_boxes("n1/01,1,2,3,4\n")["n1/01"] == [[1, 2, 4, 6]]
    with pytest.raises(ValueError, match="empty box"):
        mds.parse_boxes("a/x.jpg,10,10,5,5\n")
    pts = np.arange(136, dtype=float)
    got = mds.parse_landmarks("path," + ",".join(f"p{i}" for i in range(136)) + "\n/abs/root/id/img.png,"
                              + ",".join(map(str, pts)) + "\n")
    assert mds.lookup(got, "id/img.png") == [pts.tolist()]
    lst = "NAME_ID,other\nid1/a.jpg,1\n/root/data/id2/b.jpg,2\n"
    assert mds.parse_file_list(lst, "/root/data") == ["id1/a.jpg", "id2/b.jpg"]
    assert mds.parse_file_list("# c\n./x/1.jpg\n", "s3://b/in") == ["x/1.jpg"]


def test_per_identity_sampling_is_seeded_and_stable():
    items = [mds.InputItem(f"p{i}/{j:03d}.jpg", f"p{i}") for i in range(5) for j in range(10 + i)]
    a = mds.sample_per_identity(items, 4, seed=3)
    assert Counter(it.identity for it in a) == {f"p{i}": 4 for i in range(5)}
    assert a == mds.sample_per_identity(list(reversed(items)), 4, seed=3)
    assert a != mds.sample_per_identity(items, 4, seed=4)
    # an identity's sample does not depend on the others
    only_p2 = mds.sample_per_identity([it for it in items if it.identity == "p2"], 4, seed=3)
    assert only_p2 == [it for it in a if it.identity == "p2"]
    assert len(mds.sample_per_identity(items[:3], 10, seed=0)) == 3
    assert mds.InputItem.from_key("a/b/c.jpg") == mds.InputItem("a/b/c.jpg", "b")
    assert mds.InputItem.from_key("c.jpg").identity == ""


def test_plan_resume():
    done = pa.table({"key": ["a", "a", "b", "c", "c", "c", "c", "z"],
                     "variant": ["o", "m", "o", "o", "m", "x", "m", "o"], "status": ["ok"] * 8})
    finished, only = mds.plan_resume(done, ["a", "b", "c", "d"], ["o", "m"])
    assert finished == [True, False, True, False]   # "c" has a duplicate and an unknown variant
    assert only == {"b": ["m"]}                       # "d": untouched -> every variant
    assert mds.plan_resume(done.slice(0, 0), ["a"], ["o"]) == ([False], {})


def test_mask_batch_without_ray(lfw_images_dir, tmp_path):
    """The actor class called directly: the contract's schema, supplied boxes/landmarks,
    read errors, the 'only' column of a partly finished input."""
    import cv2

    from masktheface.pipeline import Masker

    face = lfw_images_dir / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    for n in ("det.jpg", "box.jpg", "lm.jpg"):
        shutil.copy(face, root / "a" / n)
    items = [mds.InputItem(f"a/{n}", "a") for n in ("det.jpg", "box.jpg", "lm.jpg", "missing.jpg")]
    faces = Masker().find_faces(cv2.imread(str(face)))
    assert len(faces) == 1
    box = [float(v) for v in faces[0].box]
    boxes = {"a/box": [box]}
    lms = {"a/lm": [faces[0].landmarks.reshape(-1).tolist()]}
    tbl = stages.input_table(items, boxes, lms, {"a/det.jpg": ["original", "N95"]}, str(root))
    assert tbl.column("source").to_pylist()[0] == str(root / "a" / "det.jpg")
    tbl = stages.read_files(tbl, pafs.LocalFileSystem(), threads=4)
    assert tbl.column("read_error").to_pylist()[:3] == [None] * 3
    assert "FileNotFound" in tbl.column("read_error").to_pylist()[3]
    variants = mds.plan_variants("custom", ("original", "N95", "cloth"))
    mb = stages.MaskBatch(stages.MaskSettings(variants, 0, 112, "png", 95, "t", {}))
    out = mb(tbl)
    assert out.schema.equals(S.arrow_schema(), check_metadata=True)
    S.validate_table(out)
    rows = out.to_pylist()
    assert [(r["key"], r["variant"]) for r in rows] == [
        ("a/det.jpg", "original"), ("a/det.jpg", "N95"),  # "only": the rest is done
        *[(f"a/{n}", v) for n in ("box.jpg", "lm.jpg", "missing.jpg") for v in ("original", "N95", "cloth")]]
    by = {(r["key"], r["variant"]): r for r in rows}
    assert [by[(f"a/{n}", "N95")]["faces_from"] for n in ("det.jpg", "box.jpg", "lm.jpg")] == \
        ["detector", "boxes", "landmarks"]
    for n in ("det.jpg", "box.jpg", "lm.jpg"):
        r = by[(f"a/{n}", "N95")]
        assert r["status"] == "ok" and r["masked"] and r["mask_type"] == "N95" and r["masked_faces"] == 1
        assert r["format"] == "png" and r["image"].startswith(b"\x89PNG") and r["aligned_size"] == 112
        assert len(r["landmarks"]) == 136 and len(r["faces"]) == 1 and r["faces"][0]["status"] == "ok"
        assert r["primary_face"] == 0
        o = by[(f"a/{n}", "original")]
        assert not o["masked"] and o["mask_type"] is None and o["faces_from"] == r["faces_from"]
        # same transform (from the unmasked landmarks) for both crops; the masked one shows the mask
        a0, a1 = (cv2.imdecode(np.frombuffer(x["aligned"], np.uint8), cv2.IMREAD_COLOR) for x in (o, r))
        assert a0.shape == a1.shape == (112, 112, 3)
        assert np.abs(a0[:40].astype(int) - a1[:40]).mean() < 2 < np.abs(a0[70:].astype(int) - a1[70:]).mean()
    np.testing.assert_allclose(by[("a/lm.jpg", "N95")]["landmarks"], lms["a/lm"][0])
    np.testing.assert_allclose(by[("a/box.jpg", "N95")]["box"], box)
    miss = by[("a/missing.jpg", "cloth")]
    assert miss["status"] == "read_error" and miss["image"] is None and miss["faces"] == []
    # the source's JPEG quality (LFW: 75) survives the re-encoding to PNG, for training's online masks
    assert {r["source_quality"] for r in rows if r["key"] != "a/missing.jpg"} == {75}
    assert miss["source_quality"] is None
    assert miss["mask_type"] == "cloth" and miss["width"] is None and miss["primary_face"] is None


def test_usage_errors_before_any_work(tmp_path, capsys, monkeypatch):
    """Bad input is exit status 2 with one line, before Ray is started."""
    def no_work(*a, **k):
        raise AssertionError("Ray work started despite a usage error")

    monkeypatch.setattr(stages, "execute", no_work)
    (tmp_path / "in" / "p").mkdir(parents=True)
    cases = [
        (["--input", str(tmp_path / "absent"), "--output", str(tmp_path / "o")], "not found"),
        (["--input", str(tmp_path / "in"), "--output", str(tmp_path / "in" / "out")], "overlap"),
        (["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")], "no images"),
        (["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--files", "nope.txt"], "not found"),
        (["--smoke-test", "--input", str(tmp_path / "in")], "--smoke-test brings its own data"),
        (["--recipe", "custom", "--variants", "original,"], "empty entry"),
    ]
    for argv_, msg in cases:
        assert md.cli(argv_) == 2, argv_
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (argv_, err)


def test_smoke_test_without_data_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKTHEFACE_DATA", str(tmp_path / "nothing-here"))
    assert md.cli(["--smoke-test"]) == 2
    err = capsys.readouterr().err
    assert "needs lfw/lfw-deepfunneled" in err and "MASKTHEFACE_DATA" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing made up, nothing written


# ---------------------------------------------------------------------------------- Ray runs


@pytest.mark.ray
def test_every_input_and_variant_accounted_for(runs, corpus):
    t2, s1, s2 = runs["t2"], runs["s1"], runs["s2"]
    want = {(k, v) for k in corpus["all"] for v in LFW_VARIANTS}
    got = pairs(t2)
    assert len(got) == len(set(got)), "duplicate rows"
    assert set(got) == want
    assert s1["inputs"] == s1["inputs_processed"] == 35 and s1["rows_written"] == 35 * 5
    assert s1["missing"] == 0  # of what run1 was asked for (the --files list)
    assert s2["missing"] == 0 and s2["duplicates"] == 0
    assert s2["cumulative"]["rows"] == len(want)
    assert ".hidden.jpg" not in " ".join(k for k, _ in got) and "notes.txt" not in " ".join(k for k, _ in got)
    # statuses: bad files as the corpus says, real faces mostly masked
    rows = {(r["key"], r["variant"]): r for r in t2.select(
        ["key", "variant", "status", "error", "image", "aligned", "identity", "masked_faces"]).to_pylist()}
    for key, code in corpus["bad"].items():
        allowed = expected_status(code, key.split("/", 1)[1])
        for v in LFW_VARIANTS:
            r = rows[(key, v)]
            assert r["status"] in allowed, (key, v, r["status"], r["error"])
            if r["status"] in ("decode_error", "too_large"):
                assert r["image"] is None and r["error"] and r["error"].startswith(code)
            assert r["identity"] == BAD
    lfw_status = Counter(rows[(k, v)]["status"] for k in corpus["lfw"] for v in LFW_VARIANTS)
    assert lfw_status["ok"] >= 0.9 * len(corpus["lfw"]) * 5, lfw_status
    assert set(lfw_status) <= {"ok", "no_face", "mask_failed"}
    for (_, v), r in rows.items():
        if r["status"] == "ok":
            assert r["image"] and r["aligned"] and (v == "original" or r["masked_faces"] >= 1)
    # the summary counts what is in the files
    statuses = Counter(t2.column("status").to_pylist())
    assert Counter(s1["statuses"]) + Counter(s2["statuses"]) == statuses
    summ = json.loads((runs["out"] / "_summary.json").read_text())
    assert summ["run_id"] == "run3" and summ["cumulative"]["statuses"] == dict(sorted(statuses.items()))
    assert (runs["out"] / "_runs" / "run1.json").exists() and (runs["out"] / "_runs" / "run2.json").exists()


@pytest.mark.ray
def test_schema_is_exact_in_every_file(runs):
    files = S.data_files(pafs.LocalFileSystem(), str(runs["out"]))
    # at least one file per run (how many depends on how Ray Data splits the stream)
    assert len(files) >= 2 and all("/part-run" in f for f in files)
    assert {f.split("/part-")[1].split("-")[0] for f in files} == {"run1", "run2"}
    for f in files:
        assert pq.read_schema(f).remove_metadata().equals(S.arrow_schema()), f
    # readable as it is, with the image bytes and (68,2) landmarks usable
    import cv2
    df = pq.read_table(files[0]).to_pandas()
    ok = df[df.status == "ok"].iloc[0]
    img = cv2.imdecode(np.frombuffer(ok.image, np.uint8), cv2.IMREAD_COLOR)
    crop = cv2.imdecode(np.frombuffer(ok.aligned, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (ok.height, ok.width, 3) and crop.shape == (160, 160, 3)
    assert np.asarray(ok.landmarks).reshape(68, 2).shape == (68, 2)


@pytest.mark.ray
def test_rerun_resumes_without_duplicates_or_recomputation(runs, corpus):
    s2, s3 = runs["s2"], runs["s3"]
    n = len(corpus["all"])
    assert s2["inputs_skipped"] == 35 and s2["inputs_processed"] == n - 35
    assert s2["rows_written"] == (n - 35) * 5
    assert s3["inputs_skipped"] == n and s3["inputs_processed"] == 0 and s3["rows_written"] == 0
    assert s3["ray_seconds"] == 0.0  # nothing to do: Ray is not even started
    t1 = runs["t1"]
    t2 = runs["t2"]
    # run1's rows are untouched by run2 (same files, same bytes)
    run1_rows = t2.filter(pa.compute.equal(t2.column("run_id"), "run1"))
    assert run1_rows.num_rows == t1.num_rows == 35 * 5
    assert sorted(pairs(run1_rows)) == sorted(pairs(t1))
    assert set(t2.column("run_id").to_pylist()) == {"run1", "run2"}


@pytest.mark.ray
def test_clean_look_reaches_the_actors_and_the_fingerprint(lfw_images_dir, tmp_path):
    """--clean: the actors' Masker draws the clean look (the same bytes as the library's
    MaskerConfig(realism=False)); it enters the resume fingerprint only when on, so outputs
    written before the flag still resume."""
    from masktheface.pipeline import Masker, MaskerConfig, Variant
    from masktheface.spec import MaskSpec

    face = lfw_images_dir / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    shutil.copy(face, root / "a" / "f.jpg")
    tbl = stages.read_files(stages.input_table([mds.InputItem("a/f.jpg", "a")], {}, {}, {}, str(root)),
                            pafs.LocalFileSystem(), threads=1)
    variants = mds.plan_variants("custom", ("original", "N95"))
    rows = {}
    for realism in (True, False):
        mb = stages.MaskBatch(stages.MaskSettings(variants, 0, None, "png", 95, "t", {"realism": realism}))
        rows[realism] = {r["variant"]: r for r in mb(tbl).to_pylist()}
    assert rows[True]["original"]["image"] == rows[False]["original"]["image"]
    assert rows[True]["N95"]["image"] != rows[False]["N95"]["image"]
    lib = Masker(MaskerConfig(realism=False)).process(
        face.read_bytes(), "a/f.jpg", [Variant("original"), Variant("N95", (MaskSpec("N95"),))], fmt="png")
    assert lib.outputs[1].image == rows[False]["N95"]["image"]
    base = ["--input", "x", "--output", "y"]
    assert "realism" not in md.fingerprint(md.parse_args(base), variants)
    assert md.fingerprint(md.parse_args(base + ["--clean"]), variants)["realism"] is False


def test_refuses_to_mix_settings(runs):
    with pytest.raises(UsageError, match="other settings.*seed"):
        md.main(runs["common"][:-2] + ["--seed", "8"])


@pytest.mark.ray
def test_half_written_file_is_quarantined_and_redone_with_the_same_bytes(runs, tmp_path):
    """A file cut short (a killed write) is moved aside; its inputs are redone on the
    rerun and come out byte-identical (seed + key decide everything)."""
    out = tmp_path / "copy"
    shutil.copytree(runs["out"], out)
    victim = sorted(S.data_files(pafs.LocalFileSystem(), str(out)))[0]
    before = pq.read_table(victim)
    data = Path(victim).read_bytes()
    Path(victim).write_bytes(data[: len(data) // 2])
    s = md.main(runs["common"][:3] + [str(out)] + runs["common"][4:] + ["--run-id", "redo"])
    assert len(s["quarantined"]) == 1 and s["quarantined"][0].endswith(".parquet.corrupt")
    keys = set(before.column("key").to_pylist())
    assert s["inputs_processed"] == len(keys) and s["missing"] == 0 and s["duplicates"] == 0
    after = read_output(out)
    assert len(pairs(after)) == len(set(pairs(after))) == runs["t2"].num_rows
    redone = {(r["key"], r["variant"]): r for r in after.filter(
        pa.compute.equal(after.column("run_id"), "redo")).to_pylist()}
    assert len(redone) == before.num_rows
    for r in before.to_pylist():
        new = redone[(r["key"], r["variant"])]
        for col in ("status", "error", "image", "aligned", "mask_type", "landmarks", "box", "faces"):
            assert new[col] == r[col], (r["key"], r["variant"], col)


@pytest.mark.ray
def test_max_error_rate_fails_after_writing(corpus, ray_session, tmp_path):
    out = tmp_path / "bad-only"
    with pytest.raises(md.ErrorRateExceeded) as ei:
        md.main(argv(str(corpus["root"] / BAD), str(out), "--recipe", "custom", "--variants",
                     "original,N95", "--max-error-rate", "0.05", "--run-id", "bad"))
    msg = str(ei.value)
    n_bad = sum(1 for c in corpus["bad"].values() if c != "ok")
    assert "exceeds --max-error-rate 5.00%" in msg and f"decode_error={2 * (n_bad - 1)}" in msg
    assert "too_large=2" in msg and str(out) in msg
    # nothing lost: every row and the summary are there
    summary = json.loads((out / "_runs" / "bad.json").read_text())
    assert summary["run_id"] == "bad" and ei.value.summary["rows_written"] == summary["rows_written"]
    assert summary["rows_written"] == 2 * len(corpus["bad"]) == read_output(out).num_rows
    # + the degraded face whose landmark fit may not settle (its masked row: mask_failed)
    uncertain = sum(1 for r in read_output(out).to_pylist()
                    if Path(r["source"]).name in FACE_UNCERTAIN and r["status"] == "mask_failed")
    assert summary["error_rows"] == 2 * n_bad + uncertain
    # keys are relative to the given root: identity "" for files at the root
    t = read_output(out)
    assert set(t.column("identity").to_pylist()) == {""}
    # a rerun finds everything done: nothing new, so nothing to fail on
    assert md.cli(argv(str(corpus["root"] / BAD), str(out), "--recipe", "custom", "--variants",
                       "original,N95", "--max-error-rate", "0.05")) == 0


@pytest.mark.ray
def test_export_images(runs, corpus, tmp_path):
    out = tmp_path / "export"
    s = export_images.main(["--input", str(runs["out"]), "--output", str(out)])
    t = runs["t2"]
    with_image = [r for r in t.select(["key", "variant", "status", "image"]).to_pylist() if r["image"]]
    assert s["images"] == len(with_image) and s["rows"] == t.num_rows
    assert sum(s["rows_without_image"].values()) == t.num_rows - len(with_image)
    assert s["rows_without_image"]["decode_error"] > 0
    for r in with_image:
        assert (out / r["variant"] / export_images.target_name(r["key"], "jpg")).read_bytes() == r["image"]
    assert export_images.target_name("x/face.bmp", "jpg") == "x/face.bmp.jpg"
    assert export_images.target_name("x/UPPER.JPG", "jpg") == "x/UPPER.JPG"
    k = corpus["lfw"][0]
    assert (out / "N95" / k).exists() and (out / "aligned" / "original" / k).exists()
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "_export.json"]
    assert len(files) == s["images"] + s["aligned"]
    only = export_images.main(["--input", str(runs["out"]), "--output", str(tmp_path / "n95"),
                               "--variants", "N95,cloth", "--no-aligned", "--status", "ok"])
    assert only["aligned"] == 0 and set(only["images_per_variant"]) == {"N95", "cloth"}


@pytest.mark.ray
def test_export_refuses_bad_input(runs, tmp_path, capsys):
    """Exit status 2, one line, nothing written: an output inside the data set (it would
    corrupt it), a variant the data set does not hold, the old space-separated list."""
    inside = runs["out"] / "images"
    cases = [(["--input", str(runs["out"]), "--output", str(inside)], "overlap"),
             (["--input", str(runs["out"]), "--output", str(runs["out"])], "overlap"),
             (["--input", str(runs["out"]), "--output", str(tmp_path / "x"), "--variants", "N95,bogus"],
              "bogus: not in"),
             (["--input", str(runs["out"]), "--output", str(tmp_path / "x"), "--variants", "N95", "cloth"],
              "unrecognized arguments"),
             (["--input", str(runs["out"]), "--output", str(tmp_path / "x"), "--status", "fine"], "unknown"),
             (["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "x")], "no data files")]
    (tmp_path / "empty").mkdir()
    for a, msg in cases:
        assert export_images.cli(a) == 2, a
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (a, err)
    assert not inside.exists() and not (tmp_path / "x").exists()
    assert read_output(runs["out"]).num_rows == runs["t2"].num_rows  # still readable


@pytest.mark.ray
@pytest.mark.s3
def test_s3_input_and_output(corpus, ray_session, s3_server, s3_bucket, s3_env, tmp_path):
    """Input, box CSV and output on the S3 server; workers get the filesystem from the
    driver (the Ray session holds AWS_* out of their environment); per-identity sampling;
    the vggface2-mini-sm recipe; resume on S3; export from S3."""
    fs = s3_server.filesystem()
    bucket = s3_bucket.removeprefix("s3://")
    people = sorted({k.split("/")[0] for k in corpus["lfw"]})[:3]
    up = [k for k in corpus["lfw"] if k.split("/")[0] in people] + \
        [f"{BAD}/truncated.jpg", f"{BAD}/with space.jpg", f"{BAD}/ünïcødé名前.jpg"]
    for k in up:
        with fs.open_output_stream(f"{bucket}/in/{k}") as f:
            f.write((corpus["root"] / k).read_bytes())
    boxed = corpus["lfw"][0]
    with fs.open_output_stream(f"{bucket}/meta/loose_bb.csv") as f:
        f.write(f'NAME_ID,X,Y,W,H\n"{boxed.rsplit(".", 1)[0]}",70,70,110,120\n'.encode())
    a = argv(f"{s3_bucket}/in", f"{s3_bucket}/out", "--recipe", "vggface2-mini-sm", "--per-identity",
             "2", "--boxes", f"{s3_bucket}/meta/loose_bb.csv", "--aligned", "112", "--max-error-rate", "0.5")
    s = md.main(a + ["--run-id", "s3a"])
    chosen = s["inputs"]
    assert chosen == 3 * 2 + 2 and s["inputs_listed"] == len(up)
    assert s["missing"] == 0 and s["rows_written"] == 2 * chosen
    out_fs, out_root = storage.filesystem_for(f"{s3_bucket}/out")
    t = read_output(out_root, out_fs)
    assert t.schema.remove_metadata().equals(S.arrow_schema())
    assert Counter(k.split("/")[0] for k, v in pairs(t) if v == "original") == \
        {**{p: 2 for p in people}, BAD: 2}
    rows = t.to_pylist()
    assert all(r["source"] == f"{s3_bucket}/in/{r['key']}" for r in rows)
    masked = [r for r in rows if r["variant"] == "masked" and r["status"] == "ok"]
    assert masked and {r["mask_type"] for r in masked} <= set(mds.SM_TYPES)
    assert all(r["aligned_size"] == 112 for r in rows)
    if boxed in {r["key"] for r in rows}:
        assert {r["faces_from"] for r in rows if r["key"] == boxed} == {"boxes"}
    assert s["boxes_matched"] == (1 if boxed in {r["key"] for r in rows} else 0)
    assert fs.get_file_info(f"{bucket}/out/_summary.json").type == pafs.FileType.File
    s2 = md.main(a + ["--run-id", "s3b"])
    assert s2["inputs_processed"] == 0 and s2["inputs_skipped"] == chosen
    e = export_images.main(["--input", f"{s3_bucket}/out", "--output", str(tmp_path / "exp")])
    assert e["images"] == sum(1 for r in rows if r["image"]) > 0


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_smoke_test(ray_head, tmp_path, data_dir):
    """``ray job submit --runtime-env-json <cluster/runtime_env.yaml> -- python -m
    jobs.mask_dataset --smoke-test``: the shipped working dir has no ../shared, so the data
    is found through MASKTHEFACE_DATA of the runtime env; as shipped (a path this machine
    does not have) the job fails clearly, with exit status 2 and the variable named."""
    from jobs.raysetup import runtime_env_with_s3

    rt = runtime_env_with_s3(ROOT / "cluster" / "runtime_env.yaml")
    rt.pop("working_dir", None)  # submit() passes --working-dir itself
    shipped = rt["env_vars"]["MASKTHEFACE_DATA"]
    assert not Path(shipped).exists()
    bad = ray_head.submit(["python", "-m", "jobs.mask_dataset", "--smoke-test"], runtime_env=rt, timeout=300)
    assert bad.returncode != 0
    log = bad.stdout + bad.stderr
    assert "--smoke-test needs lfw/lfw-deepfunneled" in log and shipped in log and "Traceback" not in log

    out = tmp_path / "job-out"
    rt["env_vars"]["MASKTHEFACE_DATA"] = str(data_dir)
    proc = ray_head.submit(["python", "-m", "jobs.mask_dataset", "--smoke-test", "--output", str(out)],
                           runtime_env=rt, timeout=420)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"output: {out}" in log and "rows written: 60" in log
    assert "Token authentication is enabled" not in log
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["ray"]["mode"] == "connected"
    assert summary["inputs_processed"] == 12 and summary["rows_written"] == 60
    assert summary["missing"] == 0 and summary["statuses"].get("ok", 0) >= 50
    assert read_output(out).num_rows == 60
