"""The built-in mask library (drawn by our own code) and the MaskTheFace template-pack loader.

Built-in masks are vector drawings in the canonical face frame of
:mod:`masktheface.canonical` (a mean frontal face, jaw 0/16 at x=100/900, chin near
y=1044).  They are drawn once per (type, placement, scale) in frontal pose and cached;
the renderer carries them onto each face with a piecewise-affine landmark warp, so pose
is the warp's business, not ours.

How a mask is drawn (:func:`draw_builtin`):

1. The *body* (fabric, pleats, seams, valves, filters) is painted in the canonical frame
   on a supersampled canvas of premultiplied float layers (colour, alpha, fabric).
   Shapes are polygons filled with ``cv2.fillPoly(..., LINE_AA, shift)``; shading is an
   analytic per-pixel field (pleat shadows, dome, side fall-off), so it is smooth at any
   resolution.
2. For the incorrect-wear placements the body is moved by a smooth warp of the frame: the
   horizontal position is kept *relative to the jaw width at that height* and heights are
   remapped linearly, so a mask pulled down to the chin narrows with the jaw and still
   hugs the face outline.
3. Straps and ear loops are drawn after that warp, from the (moved) attachment points to
   fixed points at the ears / head, so a mask on the chin still hangs from the ears.
4. Everything is clipped to :data:`masktheface.canonical.MESH_HULL` (the warp cannot
   carry art outside it), downsampled with ``INTER_AREA`` *in premultiplied form* and
   un-premultiplied, then the colour is bled under transparent pixels: straight alpha
   with no dark fringe when the renderer interpolates.

The six key points a..f of an art follow MaskTheFace's template convention: a / c the
top-left / top-right corners of the mask, b its top centre (on the nose line), d / f the
left / right edges at mouth height, e its bottom centre (under the chin).

MaskTheFace packs (``masks.cfg`` + RGBA PNGs, each template with six anchors) are loaded
by :func:`load_pack`; they are warped by a homography, as in the original.

The rooms: :mod:`.canvas` (the canonical frame, geometry helpers, the premultiplied
canvas, shared shading), :mod:`.drawings` (one drawing function per mask type),
:mod:`.art` (placements, straps, hull clip, downsampling, the scale ladder and the cache:
:func:`draw_builtin`), :mod:`.pack` (the template-pack loader).
"""
from __future__ import annotations

from .art import DRAW_EVERY, MaskArt, canonical_name, clear_cache, draw_builtin, is_builtin, quantise_scale
from .pack import MaskPack, Template, load_pack, read_image_unchanged

__all__ = ["DRAW_EVERY", "MaskArt", "MaskPack", "Template", "canonical_name", "clear_cache", "draw_builtin",
           "is_builtin", "load_pack", "quantise_scale", "read_image_unchanged"]
