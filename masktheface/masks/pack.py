"""MaskTheFace-format template packs (``masks.cfg`` + RGBA PNGs), warped by a homography as
in the original tool."""
from __future__ import annotations

import configparser
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..imageio import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Template:
    """One MaskTheFace template: uint8 (h,w,4) BGRA and its anchors a..f, float32 (6,2) px."""

    name: str
    bgra: np.ndarray
    anchors: np.ndarray


@dataclass(frozen=True)
class MaskPack:
    """A MaskTheFace-format pack: templates by their ``masks.cfg`` section name (e.g.
    ``"surgical"``, ``"surgical_left"``, ``"N95_right"``) and the texture images found
    under ``root/textures`` (recursive, sorted)."""

    root: str
    templates: dict[str, Template] = field(repr=False)
    textures: tuple[str, ...] = field(repr=False)

    def views(self, mask_type: str) -> dict[str, Template]:
        """``{"front": .., "left": .., "right": ..}`` for the views of ``mask_type`` present."""
        out: dict[str, Template] = {}
        for view, name in (("front", mask_type), ("left", f"{mask_type}_left"), ("right", f"{mask_type}_right")):
            if name in self.templates:
                out[view] = self.templates[name]
        return out

    def types(self) -> tuple[str, ...]:
        """Front-view names (templates that are not ``*_left`` / ``*_right``)."""
        return tuple(n for n in self.templates if not n.endswith(("_left", "_right")))


# -- MaskTheFace packs ------------------------------------------------------------------------------
_ANCHOR_KEYS = tuple(f"mask_{c}" for c in "abcdef")
#: anchors are homography correspondences, not pixels: they may lie outside their PNG (the
#: original pack has 8 templates with points up to 12% of the width outside); further out
#: than this fraction of the size is taken for a typo
_ANCHOR_SLACK = 0.5


def read_image_unchanged(path: str | os.PathLike) -> np.ndarray | None:
    """Decode an image file as stored (works with non-ASCII paths); None if undecodable."""
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def _to_bgra8(img: np.ndarray, where: str) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) * 255 + 32767) // 65535
    elif img.dtype != np.uint8:
        raise ValueError(f"{where}: unsupported pixel type {img.dtype}")
    img = img.astype(np.uint8)
    if img.ndim != 3 or img.shape[2] != 4:
        raise ValueError(f"{where}: a template needs an alpha channel (RGBA PNG), got shape {img.shape}")
    return img


def _resolve_template(root: Path, rel: str) -> Path | None:
    """``template:`` paths are relative to the pack's parent in the original
    (``masks/templates/x.png``); try that, the pack itself, and the basename under
    ``templates/``."""
    p = Path(rel.strip().strip('"').strip("'"))
    candidates = [p] if p.is_absolute() else [root.parent / p, root / p]
    candidates += [root / "templates" / p.name, root / p.name]
    for c in candidates:
        if c.is_file():
            return c
    return None


def _parse_point(value: str, where: str) -> tuple[float, float]:
    parts = [s for s in value.replace(";", ",").split(",") if s.strip()]
    if len(parts) != 2:
        raise ValueError(f"{where}: expected 'x, y', got {value!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"{where}: expected two numbers 'x, y', got {value!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"{where}: non-finite point {value!r}")
    return x, y


def load_pack(root: str | os.PathLike) -> MaskPack:
    """Load a MaskTheFace-format pack: ``root/masks.cfg`` (or the cfg file itself), its
    RGBA templates and the texture images under ``root/textures``.

    Sections without a ``template`` key (the original's ``empty``/``inpaint`` region tools)
    are skipped.  Raises FileNotFoundError when there is no masks.cfg and ValueError on a
    malformed cfg, a missing or alpha-less template or anchors far outside the image.
    """
    root_p = Path(root)
    cfg_path = root_p if root_p.is_file() else root_p / "masks.cfg"
    root_p = cfg_path.parent
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no masks.cfg in {str(root)!r}")
    parser = configparser.ConfigParser(interpolation=None, strict=True, inline_comment_prefixes=(";", "#"))
    parser.optionxform = str.lower  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(cfg_path.read_text(encoding="utf-8-sig"), source=str(cfg_path))
    except (configparser.Error, UnicodeDecodeError) as e:
        raise ValueError(f"malformed {cfg_path}: {e}") from e

    templates: dict[str, Template] = {}
    for name in parser.sections():
        sec = parser[name]
        where = f"{cfg_path} [{name}]"
        if "template" not in sec:
            log.debug("%s: no template, skipped (region tool)", where)
            continue
        missing = [key for key in _ANCHOR_KEYS if key not in sec]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        anchors = np.array([_parse_point(sec[key], f"{where} {key}") for key in _ANCHOR_KEYS], np.float32)
        path = _resolve_template(root_p, sec["template"])
        if path is None:
            raise ValueError(f"{where}: template {sec['template']!r} not found")
        img = read_image_unchanged(path)
        if img is None:
            raise ValueError(f"{where}: cannot decode template {str(path)!r}")
        bgra = _to_bgra8(img, f"{where} {path.name}")
        h, w = bgra.shape[:2]
        slack_x, slack_y = _ANCHOR_SLACK * w, _ANCHOR_SLACK * h
        if (np.any(anchors[:, 0] < -slack_x) or np.any(anchors[:, 0] > w - 1 + slack_x)
                or np.any(anchors[:, 1] < -slack_y) or np.any(anchors[:, 1] > h - 1 + slack_y)):
            raise ValueError(f"{where}: anchors {anchors.tolist()} lie far outside the {w}x{h} template")
        if cv2.contourArea(cv2.convexHull(anchors)) < 1e-3 * w * h:
            raise ValueError(f"{where}: anchors {anchors.tolist()} are degenerate (collinear)")
        bgra.setflags(write=False)
        anchors.setflags(write=False)
        templates[name] = Template(name, bgra, anchors)
    if not templates:
        raise ValueError(f"{cfg_path}: no templates")

    tex_dir = root_p / "textures"
    textures = tuple(sorted(
        str(p) for p in tex_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )) if tex_dir.is_dir() else ()
    log.info("loaded mask pack %s: %d templates, %d textures", root_p, len(templates), len(textures))
    return MaskPack(str(root_p), templates, textures)
