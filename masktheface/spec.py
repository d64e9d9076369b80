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
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# The one definition of the mask names (masktheface.masks, the CLI and the jobs import them from here).
#: built-in types drawn when the user asks for "random"
RANDOM_TYPES: tuple[str, ...] = ("surgical", "surgical_blue", "surgical_green", "N95", "KN95", "cloth", "gas")
#: further built-in drawings, used only when named
EXTRA_TYPES: tuple[str, ...] = ("N95_valve",)
#: region tools (a flat alpha region the renderer fills or inpaints): valid only when named
REGION_TYPES: tuple[str, ...] = ("empty", "inpaint")
#: every built-in name, in its canonical spelling
BUILTIN_TYPES: tuple[str, ...] = RANDOM_TYPES + EXTRA_TYPES + REGION_TYPES
#: correct wear; mask pulled below the nose; mask pulled down onto the chin
PLACEMENTS: tuple[str, ...] = ("correct", "below_nose", "chin")
_ALIASES = {"surgical_white": "surgical", "white": "surgical", "blue": "surgical_blue", "green": "surgical_green",
            **{n.lower(): n for n in BUILTIN_TYPES}}
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
    """A type name as typed -> its canonical spelling (built-ins and aliases are matched
    case-insensitively, e.g. ``n95_valve`` -> ``N95_valve``); other names (pack templates)
    are returned stripped but otherwise unchanged."""
    name = name.strip()
    return _ALIASES.get(name.lower(), name)


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
    """A generator seeded from the run seed, an item's key and optional stream numbers, so a
    rerun or a retried task draws the same numbers for the same item on any machine.  Prefer
    the named streams :func:`variant_rng` and :func:`draw_rng`."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, _crc(key), *extra])


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def variant_rng(seed: int, key: str, variant: str) -> np.random.Generator:
    """The randomness of one output variant of one item (which spec each face draws).

    Derived from the variant's *name*, never its position among the variants asked for, so
    the same seed, key and variant give the same mask in the CLI, the data-set job and the
    evaluation, whatever other variants run beside it.
    """
    return item_rng(seed, key, _crc(variant))


def draw_rng(seed: int, key: str, purpose: str) -> np.random.Generator:
    """A per-item stream for a draw that is not a variant's own, named by ``purpose`` (e.g.
    ``"mixed"``: which one mask type an image gets when one is drawn out of several).
    Independent of :func:`variant_rng` streams (the purpose is prefixed with ``draw:``)."""
    return item_rng(seed, key, _crc("draw:" + purpose))


def choose(specs: Sequence[MaskSpec], rng: np.random.Generator) -> MaskSpec:
    """Uniform draw of one spec."""
    return specs[int(rng.integers(len(specs)))] if len(specs) > 1 else specs[0]
