"""One rule per decision, across the command, the data-set job and the evaluation (no Ray:
the job's actor class and the evaluation's embedder class are called directly).

* The primary face: the Parquet columns (box, landmarks, mask_type, primary_face) and the
  aligned crop of a row describe the same face, the library's ``primary_face``, also on
  photos where a bystander is larger than the subject; the evaluation embeds that face.
* The seed: the same seed, key and mask type (or code) give the same mask pixels in the
  ``masktheface`` command, ``jobs.mask_dataset`` and ``jobs.evaluate``, whatever other
  variants run beside it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.fs as pafs
import pytest

from jobs import mask_stages as stages
from masktheface import align
from masktheface import dataset as mds
from masktheface import dataset_schema as S
from masktheface.geometry import analyse, primary_face
from masktheface.imageio import decode_image

#: LFW images where a bystander's face is larger than the centred subject's (found by
#: scanning LFW: the old "largest face" rule picked the bystander), and a group photo
LFW_BYSTANDERS = ("Aldo_Paredes/Aldo_Paredes_0002.jpg", "Andre_Lange/Andre_Lange_0001.jpg")
CODE = "cloth,N95,surgical_blue,KN95"
SEED = 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, lfw_images_dir, photos_dir) -> Path:
    root = tmp_path_factory.mktemp("one_rule") / "in"
    for key in LFW_BYSTANDERS + ("Aaron_Eckhart/Aaron_Eckhart_0001.jpg",):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lfw_images_dir / key, root / key)
    (root / "group").mkdir()
    shutil.copy(photos_dir / "multiface.jpg", root / "group" / "multiface.jpg")
    return root


def _keys(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))


@pytest.fixture(scope="module")
def job_rows(inputs) -> dict:
    """The data-set job's actor over the inputs: original, N95, and a code list, PNG."""
    variants = mds.plan_variants("custom", ("original", "N95"), (CODE,))
    assert [v.name for v in variants] == ["original", "N95", "masked"]
    items = [mds.InputItem.from_key(k) for k in _keys(inputs)]
    table = stages.input_table(items, None, None, {}, str(inputs))
    settings = stages.MaskSettings(variants, SEED, 160, "png", 95, "t", {},
                                   {"filesystem": pafs.LocalFileSystem(), "threads": 2, "max_bytes": 2**26})
    out = stages.MaskBatch(settings)(table)
    S.validate_table(out)
    return {(r[S.KEY], r[S.VARIANT]): r for r in out.to_pylist()}


def _png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_parquet_columns_and_crop_describe_the_primary_face(inputs, job_rows):
    refitted = 0
    for key in _keys(inputs):
        orig = job_rows[(key, "original")]
        img = _png(orig[S.IMAGE])
        dec = decode_image((inputs / key).read_bytes())
        assert orig[S.FACE_COUNT] >= (2 if key.split("/")[0] in ("group",) or key in LFW_BYSTANDERS else 1)
        for variant in ("original", "N95", "masked"):
            r = job_rows[(key, variant)]
            i = r[S.PRIMARY_FACE]
            faces = r[S.FACES]
            # the library's rule, recomputed from the stored faces
            lms = [S.landmarks_68(f[S.LANDMARKS]) for f in faces]
            boxes = [f[S.BOX] for f in faces]
            assert i == primary_face(boxes, dec.bgr.shape, [analyse(lm, dec.bgr.shape) for lm in lms])
            assert r[S.BOX] == faces[i][S.BOX] and r[S.LANDMARKS] == faces[i][S.LANDMARKS]
            assert r[S.VIEW] == faces[i][S.VIEW]
            if variant != "original":
                assert r[S.MASK_TYPE] == faces[i][S.MASK_TYPE] and r[S.MASK_TYPE] is not None
            # the crop is cut around the primary face's (unmasked) alignment landmarks, in every
            # variant: the plain fit, which is the checked fit unless the check refitted
            assert r[S.ALIGN_LANDMARKS] is not None
            size = r[S.ALIGNED_SIZE]
            M = align.align_transform(S.align_landmarks_68(r), size)
            src = img if variant == "original" else _png(r[S.IMAGE])
            assert np.array_equal(_png(r[S.ALIGNED]), align.warp_crop(src, M, size)), (key, variant)
        refitted += orig[S.ALIGN_LANDMARKS] != orig[S.LANDMARKS]
        if key in LFW_BYSTANDERS:  # the subject is not the largest face here
            areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in (f[S.BOX] for f in orig[S.FACES])]
            assert orig[S.PRIMARY_FACE] != int(np.argmax(areas)), key
    assert refitted >= 1   # a face whose fit the check refitted: crop and masks follow different fits


@pytest.fixture(scope="module")
def embedder():
    from facenet.verify import VariantEmbedder

    return VariantEmbedder(model="dlib", variants=["original", "N95"], seed=SEED)


def test_evaluation_embeds_the_primary_face(inputs, job_rows, embedder):
    for key in _keys(inputs):
        face = embedder.find_face(decode_image((inputs / key).read_bytes()))
        assert face.method == "detected"
        np.testing.assert_array_equal(face.landmarks, S.align_landmarks_68(job_rows[(key, "original")]))
        # and masks it where the data set's masks went
        primary = job_rows[(key, "original")][S.PRIMARY_FACE]
        np.testing.assert_array_equal(face.faces[primary].landmarks,
                                      S.landmarks_68(job_rows[(key, "original")][S.LANDMARKS]))


def test_same_seed_key_and_mask_same_pixels_everywhere(inputs, job_rows, embedder, tmp_path):
    from masktheface import cli as mtf_cli

    out_type, out_code = tmp_path / "cli_type", tmp_path / "cli_code"
    # the command masks a folder: its keys are the paths under it, as in the data-set job
    assert mtf_cli.main(["--path", str(inputs), "--output", str(out_type), "--mask_type", "N95",
                         "--seed", str(SEED), "--format", "png", "--no-progress"]) == 0
    assert mtf_cli.main(["--path", str(inputs), "--output", str(out_code), "--code", CODE,
                         "--seed", str(SEED), "--format", "png", "--no-progress"]) == 0
    drawn = set()
    for key in _keys(inputs):
        stem = key.rsplit(".", 1)[0]
        job_n95, job_code = _png(job_rows[(key, "N95")][S.IMAGE]), _png(job_rows[(key, "masked")][S.IMAGE])
        assert np.array_equal(_png((out_type / f"{stem}_N95.png").read_bytes()), job_n95), key
        assert np.array_equal(_png((out_code / f"{stem}_masked.png").read_bytes()), job_code), key
        dec = decode_image((inputs / key).read_bytes())
        status, _, ev_n95 = embedder.render(dec, embedder.find_face(dec), key, "N95")
        assert status == "ok" and np.array_equal(ev_n95, job_n95), key
        drawn |= {f[S.MASK_TYPE] for f in job_rows[(key, "masked")][S.FACES]}
    assert len(drawn) >= 2  # the code list really drew different types per face


def test_a_variant_does_not_depend_on_the_others(inputs, job_rows):
    """Rendering 'masked' alone gives the bytes it had beside original and N95."""
    from masktheface.pipeline import Masker

    variants = mds.plan_variants("custom", (), (CODE,))
    key = "group/multiface.jpg"
    res = Masker().process((inputs / key).read_bytes(), key, variants, seed=SEED, aligned=160, fmt="png")
    assert res.outputs[0].image == job_rows[(key, "masked")][S.IMAGE]
