"""masktheface: realistic simulated face masks on every face of an image.

Library entry points::

    from masktheface import Masker, MaskSpec, Variant
    masker = Masker()                       # loads dlib's models once
    result = masker.mask(bgr_image, MaskSpec("N95"))
    processed = masker.process(jpeg_bytes, key="id/img.jpg", variants=[Variant("N95", (MaskSpec("N95"),))])

One rule per decision, used by the CLI, the jobs and the evaluation alike:
:func:`primary_face` (which face is "the" face of an image), :func:`variant_rng` /
:func:`draw_rng` (per-item randomness by name), :func:`shared_data` (where the data sets
are), :data:`IMAGE_EXTENSIONS` (what counts as an image file).
"""
from .datadir import shared_data
from .geometry import primary_face
from .imageio import IMAGE_EXTENSIONS
from .spec import MaskSpec, SpecError, draw_rng, parse_code, variant_rng

__all__ = ["Masker", "MaskerConfig", "MaskSpec", "Variant", "SpecError", "parse_code", "primary_face",
           "variant_rng", "draw_rng", "shared_data", "IMAGE_EXTENSIONS"]


def __getattr__(name: str):
    # the pipeline pulls in dlib/OpenCV: import it only when asked for
    if name in ("Masker", "MaskerConfig", "Variant", "MaskResult", "FaceResult", "Processed"):
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(name)
