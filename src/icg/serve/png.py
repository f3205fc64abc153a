"""PNG bytes for HTTP: the same AI-generated marker as `icg generate` writes to disk."""

from __future__ import annotations

import io

from PIL import Image, PngImagePlugin

from icg.generation import DIGITAL_SOURCE_TYPE, XMP_TEMPLATE


def encode_marked_png(image: Image.Image, **text: str) -> bytes:
    """Encode ``image`` as PNG with the IPTC `trainedAlgorithmicMedia` XMP marker and ``text``
    chunks; the same image and text always give the same bytes."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP_TEMPLATE.format(source=DIGITAL_SOURCE_TYPE))
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def png_is_marked(data: bytes) -> bool:
    """Whether PNG bytes carry the AI-generated marker."""
    with Image.open(io.BytesIO(data)) as im:
        return DIGITAL_SOURCE_TYPE in str(im.info.get("XML:com.adobe.xmp", ""))
