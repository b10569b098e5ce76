"""Reading one image file into the mode a dataset asks for ("L" or "RGB"), the same way everywhere.

Beyond ``Image.convert``: the EXIF orientation is applied (a phone photo stored sideways is shown upright, as
viewers show it); 16-bit grey images are scaled to 8 bits (``convert`` would clip them to white); transparent
pixels (RGBA, LA, palette with transparency) are laid on white, as most viewers show them, rather than on
whatever colour the transparent pixels happen to hold; CMYK goes through Pillow's CMYK→RGB.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
WITH_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}

# what Image.open / load raise for a file that is not a readable image of acceptable size
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def convert_image(im: Image.Image, mode: str) -> Image.Image:
    """``im`` in ``mode``: 16-bit grey scaled to 8 bits, transparency laid on white, then ``convert``."""
    if im.mode in SIXTEEN_BIT:
        arr = np.asarray(im, dtype=np.float64) / 257.0
        im = Image.fromarray(arr.round().clip(0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in WITH_ALPHA:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return im if im.mode == mode else im.convert(mode)


def check_pixel_count(im: Image.Image) -> None:
    """Raises :class:`PIL.Image.DecompressionBombError` for an image over ``PIL.Image.MAX_IMAGE_PIXELS`` (None:
    no limit). Pillow itself only warns between the limit and twice it; a dataset image that large is refused."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and im.width * im.height > limit:
        raise Image.DecompressionBombError(
            f"Image size ({im.width * im.height} pixels, {im.width}×{im.height}) exceeds limit of {limit} pixels")


def open_image(path: str | Path, mode: str) -> Image.Image:
    """Decodes ``path`` upright (EXIF orientation applied) in ``mode``. Raises what Pillow raises
    (:data:`DECODE_ERRORS`), and :class:`~PIL.Image.DecompressionBombError` for any image over
    ``MAX_IMAGE_PIXELS`` (:func:`check_pixel_count`); :func:`file_problem` says why a path is not a file at all."""
    with Image.open(path) as im:
        check_pixel_count(im)  # before decoding: the header gives the size
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        return convert_image(im, mode)


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image file (a missing file, a broken link, a folder, a FIFO or device,
    which would block or never end), or None when it is a regular file."""
    try:
        st = os.stat(path)  # follows symbolic links
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (it points to {os.readlink(path)}, which does not exist)"
        return "file not found"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not an image file"
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        return f"{kind}, not a regular image file (reading it could block or never end)"
    return None


def decode_problem(path: Path, mode: str) -> str | None:
    """Why ``path`` cannot be decoded as an image in ``mode``, or None when it can."""
    problem = file_problem(path)
    if problem is not None:
        return problem
    try:
        open_image(path, mode)
    except Image.DecompressionBombError as e:
        return (f"too many pixels ({e}); Pillow refuses it as a possible decompression bomb. Shrink the image, "
                "or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it")
    except DECODE_ERRORS as e:
        return f"unreadable or corrupt image ({type(e).__name__}: {e})"
    return None
