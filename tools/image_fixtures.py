#!/usr/bin/env python3
"""Generates the golden fixtures of the ImageDecoding tests with Pillow and numpy.

Writes Tests/ImageDecodingTests/Fixtures/: small input images of every variant the decoder must
handle, the outputs Pillow (the reference the tokenizers were trained with) gives for them, and
cases.json, which says which output belongs to which input, crop, resolution and view. The Swift
tests read only these committed files; they never need Pillow.

Real photographs come from the data folder of the scikit-image wheel (PyPI `scikit-image`):
astronaut, chelsea, coffee, rocket, motorcycle_left, hubble_deep_field, ihc, camera.
Synthetic gradients cover the rest.

Variants Pillow cannot write (4:4:0 and 4:1:1 sampling, YCCK, RGB colour space, restart markers)
come from tools/jpeg_variants.c, compiled here against the system libjpeg; interlaced and 16-bit
PNGs are written by a small encoder below.

Rerun (from the repository root):
    python3 -m venv .venv && .venv/bin/pip install -r tools/requirements-fixtures.txt
    .venv/bin/python tools/image_fixtures.py
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
from PIL import Image, ImageOps
from skimage import data as skdata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "ImageDecodingTests", "Fixtures")
SKDATA = os.path.dirname(skdata.__file__)

cases: list[dict] = []


# ---------------------------------------------------------------- reference crops (Pillow)

def adm_crop(img: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion's center_crop_arr, as DiT, LlamaGen and MAR call it."""
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.array(img)
    cy = (arr.shape[0] - size) // 2
    cx = (arr.shape[1] - size) // 2
    return arr[cy:cy + size, cx:cx + size]


def resize_center(img: Image.Image, size: int) -> np.ndarray:
    """torchvision Resize(size, BICUBIC) + CenterCrop(size) on a PIL image (same arithmetic)."""
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    arr = np.array(img)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    return arr[top:top + size, left:left + size]


def ten_crop(img: Image.Image, size: int, crop_range: float = 1.1) -> list[np.ndarray]:
    """LlamaGen: center_crop_arr to int(size*1.1), then torchvision TenCrop(size)."""
    big = adm_crop(img, int(size * crop_range))

    def five(a: np.ndarray) -> list[np.ndarray]:
        h, w = a.shape[:2]
        top = int(round((h - size) / 2.0))
        left = int(round((w - size) / 2.0))
        return [a[:size, :size], a[:size, w - size:], a[h - size:, :size], a[h - size:, w - size:],
                a[top:top + size, left:left + size]]

    return five(big) + five(big[:, ::-1])


def view_of(img: Image.Image, crop: str, size: int, view: int) -> np.ndarray:
    if view >= 2:
        return ten_crop(img, size)[view - 2]
    arr = adm_crop(img, size) if crop == "adm" else resize_center(img, size)
    return arr[:, ::-1] if view == 1 else arr


# ---------------------------------------------------------------- writers

_saved: dict[bytes, str] = {}


def save_rgb_png(arr: np.ndarray, name: str) -> str:
    """Writes an expected output once; identical outputs share one file to keep fixtures small."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    key = bytes(str(arr.shape), "ascii") + arr.tobytes()
    if key in _saved:
        return _saved[key]
    _saved[key] = name
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB").save(os.path.join(OUT, name), optimize=True)
    return name


def png_bytes(arr: np.ndarray, color_type: int, depth: int, interlace: bool,
              palette: np.ndarray | None = None, trns: bytes | None = None) -> bytes:
    """A minimal PNG encoder (filter 0), because Pillow cannot write Adam7 interlacing."""
    h, w = arr.shape[:2]
    chans = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    a = arr.reshape(h, w, chans)

    def raw_rows(sub: np.ndarray) -> bytes:
        out = bytearray()
        for row in sub:
            out.append(0)
            if depth == 16:
                out += row.astype(">u2").tobytes()
            elif depth == 8:
                out += row.astype(np.uint8).tobytes()
            else:
                bits = np.unpackbits(row.astype(np.uint8).reshape(-1, 1), axis=1)[:, 8 - depth:]
                out += np.packbits(bits.reshape(-1)).tobytes()
        return bytes(out)

    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        data = b"".join(raw_rows(a[y0::dy, x0::dx]) for x0, y0, dx, dy in passes
                        if a[y0::dy, x0::dx].size)
    else:
        data = raw_rows(a)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace)))
    if palette is not None:
        out += chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(data, 9)) + chunk(b"IEND", b"")


def jpeg_variant(rgb_or_cmyk: np.ndarray, name: str, *args: str) -> str:
    h, w = rgb_or_cmyk.shape[:2]
    comps = 1 if rgb_or_cmyk.ndim == 2 else rgb_or_cmyk.shape[2]
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "in.raw")
        rgb_or_cmyk.astype(np.uint8).tofile(raw)
        subprocess.run([JPEG_TOOL, raw, str(w), str(h), str(comps), os.path.join(OUT, name), *args], check=True)
    return name


def strip_app14(jpeg: bytes) -> bytes:
    """Removes the Adobe APP14 segment, leaving a plain (non-inverted) CMYK JPEG."""
    i, out = 2, bytearray(jpeg[:2])
    while i < len(jpeg):
        marker, length = jpeg[i + 1], struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        if marker == 0xDA:
            out += jpeg[i:]
            break
        if marker != 0xEE:
            out += jpeg[i:i + 2 + length]
        i += 2 + length
    return bytes(out)


# ---------------------------------------------------------------- cases

STANDARD_VIEWS = [("adm", 32, 0), ("adm", 32, 1), ("resize-center", 32, 0), ("adm", 64, 0)]


def add_case(name: str, reference: Image.Image | None, *, decode: np.ndarray | None = None,
             views=STANDARD_VIEWS, options: dict | None = None, note: str = "") -> None:
    """Records the expected full decode and crops of input `name` (Pillow's unless given)."""
    stem = name.rsplit(".", 1)[0] + ("_" + "_".join(f"{k}" for k in sorted(options)) if options else "")
    case: dict = {"input": name, "options": options or {}, "note": note, "outputs": []}
    if decode is None and reference is not None:
        decode = np.array(reference.convert("RGB"))
    if decode is not None:
        img = Image.fromarray(decode, "RGB")
        case["decode"] = save_rgb_png(decode, f"expected/{stem}.decode.png")
        for crop, size, view in views:
            arr = view_of(img, crop, size, view)
            case["outputs"].append({"crop": crop, "resolution": size, "view": view,
                                    "expected": save_rgb_png(arr, f"expected/{stem}.{crop}{size}.v{view}.png")})
    cases.append(case)


def add_error(name: str, kind: str, note: str, options: dict | None = None) -> None:
    cases.append({"input": name, "error": kind, "note": note, "options": options or {}})


def photo(name: str) -> Image.Image:
    return Image.open(os.path.join(SKDATA, name)).convert("RGB")


def write(name: str, payload: bytes) -> str:
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(payload)
    return name


def save_pil(img: Image.Image, name: str, **kw) -> str:
    img.save(os.path.join(OUT, name), **kw)
    return name


def main() -> None:
    global JPEG_TOOL
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "expected"))
    tmp = tempfile.mkdtemp()
    JPEG_TOOL = os.path.join(tmp, "jpeg_variants")
    subprocess.run(["cc", "-O2", os.path.join(ROOT, "tools", "jpeg_variants.c"), "-ljpeg", "-o", JPEG_TOOL], check=True)

    chelsea = photo("chelsea.png").resize((225, 150), Image.LANCZOS)  # cat; odd width
    coffee = photo("coffee.png").resize((201, 134), Image.LANCZOS)  # cup
    astronaut = photo("astronaut.png").resize((160, 160), Image.LANCZOS)
    rocket = photo("rocket.jpg").resize((120, 180), Image.LANCZOS)  # portrait
    motor = photo("motorcycle_left.png").resize((200, 135), Image.LANCZOS)
    ihc = photo("ihc.png").resize((96, 96), Image.LANCZOS)
    hubble = Image.open(os.path.join(SKDATA, "hubble_deep_field.jpg")).convert("L").resize((120, 138), Image.LANCZOS)
    camera = Image.open(os.path.join(SKDATA, "camera.png")).convert("L").resize((96, 96), Image.LANCZOS)

    def decoded(name: str) -> Image.Image:
        return Image.open(os.path.join(OUT, name))

    # JPEG: sampling, progressive, colour spaces, restart markers (inputs from real photos).
    n = save_pil(chelsea, "photo_chelsea_420.jpg", quality=90, subsampling=2)
    add_case(n, decoded(n), note="baseline 4:2:0, odd width: box halving of odd sizes")
    n = save_pil(coffee, "photo_coffee_422_progressive.jpg", quality=90, subsampling=1, progressive=True)
    add_case(n, decoded(n), note="progressive 4:2:2")
    n = save_pil(astronaut, "photo_astronaut_444.jpg", quality=92, subsampling=0)
    add_case(n, decoded(n), note="baseline 4:4:4, square",
             views=STANDARD_VIEWS + [("adm", 32, v) for v in range(2, 12)])
    n = jpeg_variant(np.array(rocket), "photo_rocket_440.jpg", "--sample", "1x2")
    add_case(n, decoded(n), note="4:4:0, portrait",
             views=STANDARD_VIEWS + [("adm", 32, v) for v in range(2, 12)])
    n = jpeg_variant(np.array(motor), "photo_motorcycle_411.jpg", "--sample", "4x1")
    add_case(n, decoded(n), note="4:1:1")
    n = jpeg_variant(np.array(coffee), "photo_coffee_restart.jpg", "--sample", "2x2", "--restart", "3")
    add_case(n, decoded(n), note="restart markers every 3 MCUs")
    n = jpeg_variant(np.array(motor), "photo_motorcycle_420_progressive_restart.jpg", "--sample", "2x2",
                     "--progressive", "--restart", "2")
    add_case(n, decoded(n), note="progressive with restart markers")
    n = jpeg_variant(np.array(ihc), "photo_ihc_rgb_space.jpg", "--space", "rgb", "--sample", "1x1")
    add_case(n, decoded(n), note="RGB colour space (Adobe transform 0)")
    n = save_pil(hubble, "photo_hubble_gray.jpg", quality=90)
    add_case(n, decoded(n), note="grayscale JPEG")
    n = save_pil(hubble, "photo_hubble_gray_progressive.jpg", quality=90, progressive=True)
    add_case(n, decoded(n), note="grayscale progressive JPEG")

    # CMYK. Pillow writes Adobe-inverted CMYK; Pillow's decode is right for it.
    cmyk = chelsea.resize((150, 100), Image.LANCZOS).convert("CMYK")
    n = save_pil(cmyk, "photo_chelsea_cmyk_adobe.jpg", quality=92)
    add_case(n, decoded(n), note="CMYK with Adobe APP14: stored inverted, inverted back")
    # The same bytes without APP14 are plain CMYK: not inverted. Pillow inverts anyway (a negative);
    # the expected output undoes Pillow's inversion before its own CMYK->RGB arithmetic.
    with open(os.path.join(OUT, n), "rb") as f:
        plain = write("photo_chelsea_cmyk_plain.jpg", strip_app14(f.read()))
    stored = 255 - np.array(decoded(plain))
    add_case(plain, None, decode=np.array(Image.fromarray(stored, "CMYK").convert("RGB")),
             note="CMYK without Adobe APP14: samples used as stored (departs from Pillow)")
    # YCCK is always Adobe (transform 2) and stored inverted, as Photoshop writes it.
    n = jpeg_variant(255 - np.array(cmyk), "photo_chelsea_ycck.jpg", "--space", "ycck", "--sample", "2x2")
    add_case(n, decoded(n), note="YCCK (Adobe transform 2)")

    # EXIF orientation: ignored by default, every value applied with the option.
    small = Image.fromarray(np.array(rocket.resize((24, 40), Image.LANCZOS)))
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        n = save_pil(small, f"exif_orientation_{o}.jpg", quality=95, subsampling=0, exif=exif.tobytes())
        img = decoded(n)
        add_case(n, img, views=[], note="orientation ignored (default)")
        add_case(n, None, decode=np.array(ImageOps.exif_transpose(img).convert("RGB")), views=[("adm", 16, 0)],
                 options={"applyExif": True}, note="orientation applied")

    # PNG variants (8/16-bit, gray, gray+alpha, palette, tRNS, RGBA, interlaced).
    n = save_pil(coffee, "photo_coffee_rgb8.png")
    add_case(n, decoded(n), note="RGB 8-bit PNG")
    c16 = np.array(coffee).astype(np.uint16) * 257 + np.random.default_rng(1).integers(0, 200, (134, 201, 3), dtype=np.uint16)
    n = write("photo_coffee_rgb16.png", png_bytes(c16, 2, 16, False))
    add_case(n, decoded(n), note="RGB 16-bit: high byte")
    n = write("photo_coffee_rgb8_interlaced.png", png_bytes(np.array(coffee), 2, 8, True))
    add_case(n, decoded(n), note="Adam7")
    n = write("photo_camera_gray8_interlaced.png", png_bytes(np.array(camera), 0, 8, True))
    add_case(n, decoded(n), note="gray Adam7")
    n = save_pil(camera, "photo_camera_gray8.png")
    add_case(n, decoded(n), note="gray 8-bit")
    g16 = np.array(camera).astype(np.uint16) * 257
    n = write("photo_camera_gray16.png", png_bytes(g16, 0, 16, False))
    add_case(n, None, decode=np.repeat((g16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2),
             note="gray 16-bit: high byte (Pillow clamps to white: departs)")
    g2 = (np.array(camera) >> 6).astype(np.uint8)
    n = write("photo_camera_gray2.png", png_bytes(g2, 0, 2, False))
    add_case(n, decoded(n), note="gray 2-bit")
    alpha = np.tile(np.linspace(0, 255, 96).astype(np.uint8), (96, 1))
    la = np.stack([np.array(camera), alpha], axis=2)
    n = save_pil(Image.fromarray(la, "LA"), "photo_camera_gray_alpha.png")
    add_case(n, decoded(n), note="gray+alpha: alpha dropped")
    rgba = np.concatenate([np.array(ihc), alpha[:, :, None]], axis=2)
    n = save_pil(Image.fromarray(rgba, "RGBA"), "photo_ihc_rgba.png")
    add_case(n, decoded(n), note="RGBA: alpha dropped")
    white = Image.new("RGBA", (96, 96), (255, 255, 255, 255))
    composed = np.array(Image.alpha_composite(white, decoded(n).convert("RGBA")).convert("RGB"))
    add_case(n, None, decode=composed, views=[("adm", 32, 0)], options={"background": "white"},
             note="RGBA composited over white")
    rgba16 = rgba.astype(np.uint16) * 257
    n = write("photo_ihc_rgba16_interlaced.png", png_bytes(rgba16, 6, 16, True))
    add_case(n, decoded(n), note="RGBA 16-bit Adam7")
    pal = chelsea.resize((150, 100), Image.LANCZOS).quantize(64)
    n = save_pil(pal, "photo_chelsea_palette.png")
    add_case(n, decoded(n), note="palette")
    p_idx = np.array(pal)
    p_rgb = np.array(pal.getpalette()[:64 * 3]).reshape(64, 3)
    n = write("photo_chelsea_palette_trns.png", png_bytes(p_idx, 3, 8, False, p_rgb, bytes([0, 128] + [255] * 10)))
    add_case(n, decoded(n), note="palette with tRNS: transparency ignored")
    add_case(n, None, decode=np.array(Image.alpha_composite(
        Image.new("RGBA", (150, 100), (255, 255, 255, 255)), decoded(n).convert("RGBA")).convert("RGB")),
        views=[], options={"background": "white"}, note="palette tRNS composited over white")
    n = write("photo_chelsea_palette4_interlaced.png",
              png_bytes(np.array(chelsea.resize((150, 100), Image.LANCZOS).quantize(16)), 3, 4, True,
                        np.array(chelsea.resize((150, 100), Image.LANCZOS).quantize(16).getpalette()[:48]).reshape(16, 3)))
    add_case(n, decoded(n), note="4-bit palette Adam7")

    # A PNG named .jpg: the format comes from the bytes.
    with open(os.path.join(OUT, "photo_coffee_rgb8.png"), "rb") as f:
        n = write("png_named.jpg", f.read())
    add_case(n, decoded(n), views=[("adm", 32, 0)], note="PNG bytes behind a .jpg name")

    # Synthetic gradient with an odd size, upscaled at 64 (short side below the target).
    yy, xx = np.mgrid[0:45, 0:70]
    grad = np.stack([xx * 255 // 69, yy * 255 // 44, (xx + yy) * 255 // 113], axis=2).astype(np.uint8)
    n = save_pil(Image.fromarray(grad), "gradient_70x45.png")
    add_case(n, decoded(n), note="upscaling: short side under the target")

    # A tall strip of a photograph: Pillow 13 resizes it vertical pass first (the height shrinks
    # by more than twice as many pixels as the width), in the BOX halving and the bicubic resize.
    n = save_pil(Image.fromarray(np.array(photo("astronaut.png"))[40:440, 180:330]), "tall_astronaut_150x400.png")
    add_case(n, decoded(n), views=[("adm", 64, 0), ("adm", 16, 1), ("resize-center", 64, 0), ("adm", 32, 9)],
             note="taller than 2:1: vertical pass first")

    # Degenerate sizes: single pixels, extreme aspect ratios, windows clipped at both edges.
    rng = np.random.default_rng(3)
    for w, h in [(1, 1), (3, 2), (1, 50), (61, 2), (33, 32)]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        n = save_pil(Image.fromarray(arr), f"tiny_{w}x{h}.png")
        add_case(n, decoded(n), views=[("adm", 16, 0), ("resize-center", 16, 0), ("adm", 16, 6), ("adm", 16, 11)],
                 note="degenerate size")

    # Bad inputs.
    add_error(write("empty.jpg", b""), "empty", "zero bytes")
    with open(os.path.join(OUT, "photo_chelsea_420.jpg"), "rb") as f:
        full = f.read()
    add_error(write("truncated_baseline.jpg", full[: len(full) * 6 // 10]), "truncated", "baseline cut at 60%")
    add_case("truncated_baseline.jpg", None, views=[], options={"acceptTruncated": True},
             note="accepted when asked: decodes without error")
    with open(os.path.join(OUT, "photo_coffee_422_progressive.jpg"), "rb") as f:
        prog = f.read()
    add_error(write("truncated_progressive.jpg", prog[: len(prog) * 6 // 10]), "truncated", "progressive cut at 60%")
    add_error(write("truncated_header.jpg", full[:40]), "truncated", "cut inside the header")
    with open(os.path.join(OUT, "photo_coffee_rgb8.png"), "rb") as f:
        pngb = f.read()
    add_error(write("truncated.png", pngb[: len(pngb) // 2]), "truncated", "PNG cut in IDAT")
    bad = bytearray(full)
    dqt = full.index(b"\xff\xdb")
    bad[dqt + 2:dqt + 4] = b"\x00\x01"  # a segment length shorter than its own length field
    add_error(write("corrupt_marker.jpg", bytes(bad)), "corrupt", "DQT segment with a bogus length")
    bad = bytearray(pngb)
    idat = pngb.index(b"IDAT")
    bad[idat + 4:idat + 40] = bytes(range(36))
    add_error(write("corrupt_idat.png", bytes(bad)), "corrupt", "overwritten zlib data (CRC mismatch)")
    bad = bytearray(pngb)
    bad[16:24] = b"\x00" * 8  # zero width and height in IHDR
    add_error(write("corrupt_ihdr.png", bytes(bad)), "corrupt", "zero-size IHDR")
    buf = io.BytesIO()
    chelsea.resize((16, 16), Image.LANCZOS).save(buf, "JPEG", quality=80, progressive=True)
    tiny = buf.getvalue()
    last_scan = tiny[tiny.rindex(b"\xff\xda"):-2]
    add_error(write("scan_bomb_progressive.jpg", tiny[:-2] + last_scan * 1100 + b"\xff\xd9"), "corrupt",
              "a progressive JPEG repeating one scan 1100 times (CPU bomb)")
    add_error(write("not_an_image.jpg", b"This is a text file, not a picture.\n" * 4), "notAnImage", "text")
    buf = io.BytesIO()
    chelsea.resize((32, 20)).save(buf, "GIF")
    add_error(write("animated.gif", buf.getvalue()), "unsupported", "GIF is an image but not supported")
    huge = bytearray(png_bytes(np.zeros((1, 1), np.uint8), 0, 8, False))
    huge[16:24] = struct.pack(">II", 20000, 20000)
    huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])) & 0xFFFFFFFF)
    add_error(write("oversized_header.png", bytes(huge)), "tooLarge",
              "IHDR says 20000x20000: over 178,956,970 pixels")
    bad = bytearray(full)
    sof = full.index(b"\xff\xc0")
    bad[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    add_error(write("oversized_header.jpg", bytes(bad)), "tooLarge", "SOF says 60000x60000")
    add_error("photo_chelsea_420.jpg", "tooLarge", "a custom pixel limit", options={"maxPixels": 1000})

    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"tolerance": 1, "generator": "tools/image_fixtures.py",
                   "pillow": Image.__version__, "numpy": np.__version__, "cases": cases}, f, indent=1)
    shutil.rmtree(tmp)
    total = sum(os.path.getsize(os.path.join(d, x)) for d, _, fs in os.walk(OUT) for x in fs)
    print(f"{len(cases)} cases, {total / 1e6:.2f} MB in {OUT}")


if __name__ == "__main__":
    sys.exit(main())
