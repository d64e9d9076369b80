"""masktheface: realistic simulated face masks on every face of an image.

Library entry points::

    from masktheface import Masker, MaskSpec, Variant
    masker = Masker()                       # loads dlib's models once
    result = masker.mask(bgr_image, MaskSpec("N95"))
    processed = masker.process(jpeg_bytes, key="id/img.jpg", variants=[Variant("N95", (MaskSpec("N95"),))])
"""
from .spec import MaskSpec, SpecError, parse_code  # noqa: F401

__all__ = ["Masker", "MaskerConfig", "MaskSpec", "Variant", "SpecError", "parse_code"]


def __getattr__(name: str):
    # the pipeline pulls in dlib/OpenCV: import it only when asked for
    if name in ("Masker", "MaskerConfig", "Variant", "MaskResult", "FaceResult", "Processed"):
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(name)
