"""Verification pair lists: LFW's ``pairs.txt`` format and MFR2's headerless variant.

Both files use the same two line shapes, fields separated by any whitespace
(LFW uses tabs, MFR2 spaces):

* ``name i j``          – two images of one person (a *same* pair);
* ``name1 i name2 j``   – one image each of two people (a *different* pair).

Image ``i`` of ``name`` is ``name/name_{i:04d}{ext}`` relative to the image
root (LFW: ``lfw-deepfunneled/``, ``.jpg``; MFR2: the ``mfr2/`` folder, ``.png``).

Layouts
-------
``"lfw"``
    A header line.  ``F P`` (View 2, ``10 300``): ``F`` folds, each a block of
    ``P`` same pairs followed by ``P`` different pairs; the fold of a pair is
    its block.  ``P`` alone (View 1, ``pairsDevTrain.txt``: ``1100``): one fold
    of ``P`` same then ``P`` different pairs.  The line count and the
    same/different order inside each block are checked.
``"mfr2"``
    No header; any order of pair lines.  The file defines no folds, so pairs
    are cut into ``n_folds`` (10) **contiguous** chunks in file order, sizes
    differing by at most one, larger first (:func:`facenet.metrics.contiguous_folds`;
    MFR2's 848 pairs give 8 folds of 85 and 2 of 84).  Contiguous, not
    random, so fold membership depends on the file alone and matches what
    :func:`facenet.metrics.evaluate` does when given no folds.  MFR2's file is
    already shuffled, so each chunk mixes same and different pairs.
``"auto"``
    ``"lfw"`` when the first non-blank line is one or two integers, else
    ``"mfr2"``.

The default extension follows the layout (``.jpg`` for LFW, ``.png`` for MFR2);
pass ``image_ext`` to override.  Blank lines are ignored; anything else
malformed raises ``ValueError`` naming the file and line number.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
from numpy.typing import NDArray

from facenet.metrics import contiguous_folds

__all__ = ["Pair", "image_path", "pairs_arrays", "read_pairs", "unique_images"]

Layout = Literal["auto", "lfw", "mfr2"]
_DEFAULT_EXT = {"lfw": ".jpg", "mfr2": ".png"}


@dataclass(frozen=True)
class Pair:
    """One verification pair; ``left``/``right`` are image paths relative to the image root."""

    left: str
    right: str
    same: bool
    fold: int


def image_path(name: str, index: int, ext: str) -> str:
    """Relative path of image ``index`` of ``name``.

    ``("Abel_Pacheco", 1, ".jpg") -> "Abel_Pacheco/Abel_Pacheco_0001.jpg"``.
    """
    return f"{name}/{name}_{index:04d}{ext}"


def _is_header(tokens: list[str]) -> bool:
    return 1 <= len(tokens) <= 2 and all(t.isdigit() for t in tokens)


def _index(token: str, where: str) -> int:
    if not token.isdigit() or int(token) < 1:
        raise ValueError(f"{where}: image number must be a positive integer, got {token!r}")
    return int(token)


def read_pairs(
    path: str | PathLike[str],
    image_ext: str | None = None,
    layout: Layout = "auto",
    n_folds: int = 10,
    text: str | None = None,
) -> list[Pair]:
    """Read a pairs file into :class:`Pair` objects in file order.

    ``image_ext`` is e.g. ``".jpg"`` or ``"png"`` (default by layout);
    ``n_folds`` applies only to the headerless ``"mfr2"`` layout.  See the
    module docstring for the formats and how folds are assigned.  ``text``: the
    file's contents, already read (e.g. from object storage); ``path`` then only
    names it in messages.
    """
    if layout not in ("auto", "lfw", "mfr2"):
        raise ValueError(f"layout must be 'auto', 'lfw' or 'mfr2', got {layout!r}")
    if text is None:
        text = Path(path).read_text()
    path = str(path)
    # (line number, tokens) of non-blank lines; line numbers are 1-based for messages.
    lines = [(no, line.split()) for no, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no pairs in file")
    if layout == "auto":
        layout = "lfw" if _is_header(lines[0][1]) else "mfr2"
    ext = _DEFAULT_EXT[layout] if image_ext is None else image_ext
    if ext and not ext.startswith("."):
        ext = "." + ext

    per_class = 0  # LFW: pairs per class per fold
    folds = np.zeros(0, dtype=np.int64)  # headerless: fold of each line
    if layout == "lfw":
        no, header = lines[0]
        if not _is_header(header):
            raise ValueError(
                f"{path}:{no}: expected a header 'folds pairs_per_class' or 'pairs_per_class', "
                f"got {' '.join(header)!r}"
            )
        n_file_folds, per_class = (int(header[0]), int(header[1])) if len(header) == 2 else (1, int(header[0]))
        body = lines[1:]
        expected = n_file_folds * 2 * per_class
        if len(body) != expected:
            raise ValueError(
                f"{path}:{no}: header '{' '.join(header)}' promises {expected} pairs, file has {len(body)}"
            )
    else:
        body = lines
        folds = contiguous_folds(len(body), n_folds)

    pairs: list[Pair] = []
    for k, (no, tok) in enumerate(body):
        where = f"{path}:{no}"
        if len(tok) == 3:
            name, i, j = tok
            left, right = image_path(name, _index(i, where), ext), image_path(name, _index(j, where), ext)
            same = True
        elif len(tok) == 4:
            n1, i, n2, j = tok
            left, right = image_path(n1, _index(i, where), ext), image_path(n2, _index(j, where), ext)
            same = False
        else:
            raise ValueError(
                f"{where}: expected 'name i j' or 'name1 i name2 j', got {len(tok)} fields: {' '.join(tok)!r}"
            )
        if layout == "lfw":
            fold, pos = divmod(k, 2 * per_class)
            if same != (pos < per_class):
                want = "same ('name i j')" if pos < per_class else "different ('name1 i name2 j')"
                raise ValueError(
                    f"{where}: fold {fold} expects {per_class} same then {per_class} different pairs; "
                    f"this line should be {want}"
                )
        else:
            fold = int(folds[k])
        pairs.append(Pair(left=left, right=right, same=same, fold=fold))
    return pairs


def pairs_arrays(pairs: Iterable[Pair]) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """``pairs -> (issame bool (N,), folds int64 (N,))`` for :func:`facenet.metrics.evaluate`."""
    pairs = list(pairs)
    issame = np.fromiter((p.same for p in pairs), dtype=bool, count=len(pairs))
    folds = np.fromiter((p.fold for p in pairs), dtype=np.int64, count=len(pairs))
    return issame, folds


def stratified_folds(issame: NDArray[np.bool_], n_folds: int = 10) -> NDArray[np.int64]:
    """``issame`` bool (N,) -> int64 (N,) fold labels for a pairs file that is one set
    (LFW View 1's ``pairsDevTest.txt``): the i-th same pair goes to fold ``i % n_folds``,
    the i-th different pair likewise, so every fold holds both classes in file order and
    k-fold threshold selection applies as on View 2."""
    issame = np.asarray(issame, bool)
    folds = np.empty(issame.shape[0], np.int64)
    for cls in (True, False):
        idx = np.flatnonzero(issame == cls)
        folds[idx] = np.arange(idx.size) % n_folds
    return folds


def unique_images(pairs: Iterable[Pair]) -> list[str]:
    """Every image referenced by ``pairs``, once each, in order of first appearance.

    Embed these once, then look pairs up: LFW's 6000 pairs reference 7701 images.
    """
    return list(dict.fromkeys(path for p in pairs for path in (p.left, p.right)))
