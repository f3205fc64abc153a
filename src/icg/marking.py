"""The AI-generated marker every generated PNG carries: IPTC ``trainedAlgorithmicMedia`` as XMP.

The IPTC Digital Source Type vocabulary names covers drawn by a generative model
``trainedAlgorithmicMedia``; it is embedded as an XMP packet in a PNG ``iTXt`` chunk, where
content-credential readers look for it.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, PngImagePlugin

from icg.io import atomic_path

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP_TEMPLATE = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" '
    'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
    "<Iptc4xmpExt:DigitalSourceType>{source}</Iptc4xmpExt:DigitalSourceType>"
    "</rdf:Description></rdf:RDF></x:xmpmeta>"
    '<?xpacket end="w"?>'
)


def save_generated_png(image: Image.Image, path: Path, **text: str) -> None:
    """Write a PNG atomically with the IPTC `trainedAlgorithmicMedia` marker as XMP (iTXt)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP_TEMPLATE.format(source=DIGITAL_SOURCE_TYPE))
    for key, value in text.items():
        info.add_text(key, value)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def is_marked_generated(path: Path | str) -> bool:
    """Whether a PNG carries the AI-generated marker."""
    with Image.open(path) as im:
        return DIGITAL_SOURCE_TYPE in str(im.info.get("XML:com.adobe.xmp", ""))
