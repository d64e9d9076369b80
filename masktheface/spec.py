"""Mask specifications and MaskTheFace's ``--code`` syntax.

A spec says what to draw on one face: type, optional colour (hex + weight), optional
texture (built-in pattern name or image path + weight) and placement.  A *code* is a
comma-separated list of ``type[-#hex|-texture]`` entries from which one is drawn uniformly
at random per face, e.g. ``"surgical-#0473e2, N95, cloth-checks, cloth-/data/my-fabric.png"``.
Only the first ``-`` after the type separates the modifier, so texture paths may contain
``-``; a modifier starting with ``#`` is a colour, anything else a texture.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

#: types drawn when the user asks for "random"
RANDOM_TYPES = ("surgical", "surgical_blue", "surgical_green", "N95", "KN95", "cloth", "gas")
#: region tools: valid only when named explicitly
REGION_TYPES = ("empty", "inpaint")
PLACEMENTS = ("correct", "below_nose", "chin")
_ALIASES = {"surgical_white": "surgical", "n95": "N95", "kn95": "KN95", "white": "surgical",
            "blue": "surgical_blue", "green": "surgical_green"}
_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


class SpecError(ValueError):
    """A mask specification that cannot be understood (message says which part and why)."""


def parse_hex(color: str) -> tuple[int, int, int]:
    """'#rrggbb' / 'rrggbb' / '#rgb' -> (b, g, r) ints (OpenCV order)."""
    m = _HEX.match(color.strip())
    if not m:
        raise SpecError(f"colour {color!r} is not a hex colour like #0473e2")
    h = m.group(1)
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return b, g, r


@dataclass(frozen=True)
class MaskSpec:
    """What to draw on one face.  ``mask_type`` is a built-in type, a region tool or the name
    of a template in a loaded MaskTheFace pack; weights are in [0, 1]."""

    mask_type: str = "surgical"
    color: str | None = None
    color_weight: float = 0.5
    texture: str | None = None
    texture_weight: float = 0.5
    placement: str = "correct"

    def __post_init__(self) -> None:
        if not self.mask_type:
            raise SpecError("empty mask type")
        if self.color is not None:
            parse_hex(self.color)
        for name in ("color_weight", "texture_weight"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise SpecError(f"{name} must lie in [0, 1], got {v}")
        if self.placement not in PLACEMENTS:
            raise SpecError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")

    @property
    def label(self) -> str:
        """A short, filename-safe description, e.g. ``surgical_blue`` or ``cloth-checks``."""
        parts = [self.mask_type]
        if self.color:
            parts.append(self.color.lstrip("#").lower())
        if self.texture:
            parts.append(re.sub(r"[^A-Za-z0-9_]+", "_", self.texture.rsplit("/", 1)[-1].rsplit(".", 1)[0]))
        if self.placement != "correct":
            parts.append(self.placement)
        return "-".join(parts)


def normalise_type(name: str) -> str:
    name = name.strip()
    return _ALIASES.get(name.lower(), _ALIASES.get(name, name))


def parse_entry(entry: str, *, color_weight: float = 0.5, texture_weight: float = 0.5,
                placement: str = "correct") -> MaskSpec:
    """One ``type[-#hex|-texture]`` entry -> MaskSpec."""
    entry = entry.strip()
    if not entry:
        raise SpecError("empty entry in mask code")
    mtype, sep, mod = entry.partition("-")
    mtype = normalise_type(mtype)
    if not mtype:
        raise SpecError(f"entry {entry!r} has no mask type")
    color = texture = None
    if sep:
        if not mod.strip():
            raise SpecError(f"entry {entry!r}: nothing after '-'")
        if mod.strip().startswith("#"):
            parse_hex(mod)
            color = mod.strip()
        else:
            texture = mod.strip()
    return MaskSpec(mtype, color, color_weight, texture, texture_weight, placement)


def parse_code(code: str, **kw) -> tuple[MaskSpec, ...]:
    """``"surgical-#0473e2,N95,cloth-checks"`` -> specs.  Commas separate entries; brackets
    around the list (the original's ``[a, b]`` style) are accepted."""
    code = code.strip()
    if code.startswith("[") and code.endswith("]"):
        code = code[1:-1]
    specs = tuple(parse_entry(e, **kw) for e in code.split(","))
    if not specs:
        raise SpecError("empty mask code")
    return specs


def item_rng(seed: int, key: str, *extra: int) -> np.random.Generator:
    """A generator seeded from the run seed and an item's key (and e.g. a variant index), so a
    rerun or a retried task draws the same numbers for the same item on any machine."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8")), *extra])


def choose(specs: Sequence[MaskSpec], rng: np.random.Generator) -> MaskSpec:
    """Uniform draw of one spec."""
    return specs[int(rng.integers(len(specs)))] if len(specs) > 1 else specs[0]


def with_type(spec: MaskSpec, mask_type: str) -> MaskSpec:
    return replace(spec, mask_type=mask_type)
