"""The tests' sample data: the files committed under tests/data/, plus the bad PDFs pypdf can make.

Generated rather than committed: an encrypted PDF (user password `openpassword`) and an image-only
PDF. tests/data/README.md lists every file, where it comes from and its licence.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

COMMITTED = Path(__file__).resolve().parents[1] / "data"
PDF_PASSWORD = "openpassword"
LOREM = [
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor",
    "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud",
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.",
]


def _add_text_page(writer, lines: list[str], width: float, height: float):
    """A page that shows `lines` in Helvetica (a standard font: nothing to embed)."""
    from pypdf.generic import DictionaryObject, NameObject, StreamObject

    page = writer.add_blank_page(width=width, height=height)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
    )
    content = StreamObject()
    shown = " ".join(f"({line}) Tj T*" for line in lines)  # plain ASCII: nothing to escape
    content.set_data(f"BT /F1 10 Tf 14 TL 12 {height - 20} Td {shown} ET".encode("ascii"))
    page.replace_contents(content)
    return page


def encrypted_pdf(path: Path) -> Path:
    """One page of Lorem ipsum, encrypted (RC4 128-bit, as LibreOffice writes it) with PDF_PASSWORD."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    _add_text_page(writer, LOREM, 612, 792)
    writer.encrypt(user_password=PDF_PASSWORD, owner_password=PDF_PASSWORD + "-owner", algorithm="RC4-128")
    writer.write(path)
    return path


def images_only_pdf(path: Path) -> Path:
    """Six pages of pictures, four with a one-word label under the picture.

    A scan often carries a few stray characters (a label, a page number): 40 characters on six
    pages must still count as no text layer.
    """
    from PIL import Image, ImageDraw
    from pypdf import PdfWriter

    pictures = []
    for n in range(6):
        picture = Image.new("RGB", (64, 64), (40 * n, 120, 200 - 30 * n))
        ImageDraw.Draw(picture).ellipse((8, 8, 56, 56), fill=(255, 255 - 40 * n, 0))
        pictures.append(picture)
    scan = io.BytesIO()
    pictures[0].save(scan, "PDF", save_all=True, append_images=pictures[1:], resolution=72)
    writer = PdfWriter(clone_from=io.BytesIO(scan.getvalue()))
    label = _add_text_page(PdfWriter(), ["Background"], 64, 64)
    for number in (0, 1, 2, 5):
        writer.pages[number].merge_page(label)
    writer.write(path)
    return path


def build_sample_data(target: Path) -> Path:
    """A copy of tests/data/ with the generated PDFs beside the committed ones in `pdfs/`."""
    shutil.copytree(COMMITTED, target, ignore=shutil.ignore_patterns("README.md"))
    encrypted_pdf(target / "pdfs" / "encrypted.pdf")
    images_only_pdf(target / "pdfs" / "images-only.pdf")
    return target
