"""facenet.pairs: the real LFW and MFR2 pair lists, and malformed files on purpose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facenet.pairs import Pair, pairs_arrays, read_pairs, unique_images
from masktheface.datadir import DATA_HINT, shared_data

DATA = shared_data() or Path("shared-data-not-found")
LFW_PAIRS = DATA / "lfw" / "pairs.txt"
LFW_IMAGES = DATA / "lfw" / "lfw-deepfunneled"
MFR2_PAIRS = DATA / "mfr2" / "pairs.txt"
MFR2_IMAGES = DATA / "mfr2"

needs_lfw = pytest.mark.skipif(not LFW_PAIRS.is_file(), reason=f"LFW pairs not found ({DATA_HINT})")
needs_mfr2 = pytest.mark.skipif(not MFR2_PAIRS.is_file(), reason=f"MFR2 pairs not found ({DATA_HINT})")


# --------------------------------------------------------------------------- real files


@needs_lfw
def test_lfw_view2_counts_and_folds() -> None:
    pairs = read_pairs(LFW_PAIRS)
    issame, folds = pairs_arrays(pairs)
    assert len(pairs) == 6000
    assert issame.dtype == bool and folds.dtype == np.int64
    assert issame.sum() == 3000
    assert np.bincount(folds).tolist() == [600] * 10
    # Each fold: 300 same then 300 different, in file order.
    for k in range(10):
        assert issame[folds == k].tolist() == [True] * 300 + [False] * 300
    assert pairs[0] == Pair("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg", True, 0)


@needs_lfw
def test_lfw_every_image_exists() -> None:
    images = unique_images(read_pairs(LFW_PAIRS))
    missing = [p for p in images if not (LFW_IMAGES / p).is_file()]
    assert missing == []
    assert len(images) == len(set(images))


@needs_lfw
def test_lfw_view1_single_number_header() -> None:
    dev = DATA / "lfw" / "pairsDevTrain.txt"
    if not dev.is_file():
        pytest.skip(f"{dev} not present")
    issame, folds = pairs_arrays(read_pairs(dev))
    assert issame.tolist() == [True] * 1100 + [False] * 1100
    assert set(folds.tolist()) == {0}


@needs_mfr2
def test_mfr2_counts_folds_and_paths() -> None:
    pairs = read_pairs(MFR2_PAIRS)
    issame, folds = pairs_arrays(pairs)
    assert len(pairs) == 848
    assert issame.sum() == 424
    # 10 contiguous chunks, larger first; non-decreasing in file order.
    assert np.bincount(folds).tolist() == [85] * 8 + [84] * 2
    assert (np.diff(folds) >= 0).all()
    assert pairs[0].left == "MitchMcConnell/MitchMcConnell_0003.png"
    assert all(p.left.endswith(".png") and p.right.endswith(".png") for p in pairs)


@needs_mfr2
def test_mfr2_every_image_exists() -> None:
    images = unique_images(read_pairs(MFR2_PAIRS))
    missing = [p for p in images if not (MFR2_IMAGES / p).is_file()]
    assert missing == []


# --------------------------------------------------------------------------- synthetic files


def _write(tmp_path: Path, text: str, name: str = "pairs.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lfw_layout_small(tmp_path: Path) -> None:
    text = "2\t1\nA\t1\t2\nB\t1\tC\t3\nD\t2\t3\nE\t4\tF\t10\n\n"  # trailing blank line is fine
    pairs = read_pairs(_write(tmp_path, text))
    assert [p.fold for p in pairs] == [0, 0, 1, 1]
    assert [p.same for p in pairs] == [True, False, True, False]
    assert pairs[3] == Pair("E/E_0004.jpg", "F/F_0010.jpg", False, 1)


def test_headerless_layout_and_extension_override(tmp_path: Path) -> None:
    text = "".join(f"P{k} 1 2\n" if k % 2 else f"P{k} 1 Q{k} 2\n" for k in range(25))
    path = _write(tmp_path, text)
    pairs = read_pairs(path, image_ext="jpeg")
    assert pairs[0] == Pair("P0/P0_0001.jpeg", "Q0/Q0_0002.jpeg", False, 0)
    assert [p.fold for p in pairs] == np.repeat(np.arange(10), [3] * 5 + [2] * 5).tolist()
    assert [p.fold for p in read_pairs(path, n_folds=5)] == np.repeat(np.arange(5), 5).tolist()
    assert read_pairs(path, layout="mfr2")[1].left.endswith(".png")


def test_unique_images_first_appearance_order() -> None:
    pairs = [Pair("a", "b", False, 0), Pair("b", "c", False, 0), Pair("a", "c", True, 1)]
    assert unique_images(pairs) == ["a", "b", "c"]
    issame, folds = pairs_arrays([])
    assert issame.shape == folds.shape == (0,)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A 1 2\nB 1\n", r":2: expected 'name i j' or 'name1 i name2 j', got 2 fields"),
        ("A 1 2\nB 1 C\n", r":2: image number must be a positive integer, got 'C'"),
        ("A 1 2\nB 1 C 2 D\n", r":2: expected .* got 5 fields"),
        ("A 1 2\n\nB x 3\n", r":3: image number must be a positive integer, got 'x'"),
        ("A 0 2\n", r":1: image number must be a positive integer, got '0'"),
        ("1 1\nA 1 2\n", r":1: header '1 1' promises 2 pairs, file has 1"),
        ("1 2\nA 1 2\nB 1 C 2\nD 1 2\nE 1 F 2\n",
         r":3: fold 0 expects 2 same then 2 different pairs; this line should be same"),
        ("\n\n", r"no pairs in file"),
    ],
)
def test_malformed_lines_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_pairs(_write(tmp_path, text))


def test_lfw_layout_requires_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r":1: expected a header"):
        read_pairs(_write(tmp_path, "A 1 2\n"), layout="lfw")
    with pytest.raises(ValueError, match="layout must be"):
        read_pairs(_write(tmp_path, "A 1 2\n"), layout="csv")  # type: ignore[arg-type]


def test_stratified_folds_put_both_classes_in_every_fold() -> None:
    from facenet.pairs import stratified_folds
    issame = np.array([True] * 25 + [False] * 25)
    folds = stratified_folds(issame, 10)
    for k in range(10):
        assert set(issame[folds == k].tolist()) == {True, False}
    assert np.bincount(folds).tolist() == [6] * 5 + [4] * 5
