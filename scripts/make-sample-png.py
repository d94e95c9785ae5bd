#!/usr/bin/env python3
"""Writes tests/data/sample.png: a 64x64 synthetic RGB picture (sky gradient,
green ground, a red disc and a blue square) for the README's first command and
image-loading tests. Standard library only; with the same zlib the output is
byte-for-byte the same, so rerunning this leaves the committed file unchanged.

    python3 scripts/make-sample-png.py [OUT.png]
"""
import os
import struct
import sys
import zlib

W = H = 64


def pixel(x, y):
    if y >= 44:  # ground
        return (40 + y, 120 + (x % 8) * 4, 40)
    dx, dy = x - 22, y - 24
    if dx * dx + dy * dy <= 12 * 12:  # red disc
        return (220, 40 + 2 * y, 30)
    if 38 <= x < 56 and 26 <= y < 44:  # blue square
        return (30, 60 + x, 200)
    return (90 + y * 2, 150 + y, 250 - x)  # sky


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "tests", "data", "sample.png")
    raw = b"".join(b"\x00" + bytes(c for x in range(W) for c in pixel(x, y)) for y in range(H))
    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))  # 8-bit RGB
           + chunk(b"IDAT", zlib.compress(raw, 9))
           + chunk(b"IEND", b""))
    with open(out, "wb") as f:
        f.write(png)
    print(f"{out}: {W}x{H} RGB, {len(png)} bytes")


if __name__ == "__main__":
    main()
