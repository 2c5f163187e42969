"""Images are checked in the gateway: data URIs to the header, size limits, remote URLs refused."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from serving.gateway.errors import InvalidRequestError, PayloadTooLargeError
from serving.gateway.images import ImageInfo, RemoteImages, check_data_uri, check_limits
from tests.gateway.conftest import data_uri, noise_png, png

WHERE = "messages.0.content.0.image_url.url"


def test_a_png_data_uri_reads_its_header() -> None:
    info = check_data_uri(data_uri(png()), WHERE, 1 << 20)
    assert (info.width, info.height, info.format) == (64, 64, "PNG")


def test_a_jpeg_works_too() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 20), "red").save(buffer, format="JPEG")
    info = check_data_uri(data_uri(buffer.getvalue(), "image/jpeg"), WHERE, 1 << 20)
    assert (info.width, info.height, info.format) == (10, 20, "JPEG")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("data:image/png;base64,@@@notbase64@@@", "not valid base64"),
        ("data:image/png;base64," + base64.b64encode(b"hello, not an image").decode(), "not a readable image"),
        ("data:text/plain;base64,aGVsbG8=", "base64 data URI"),
        ("data:image/png,rawbytes", "base64 data URI"),
        ("file:///etc/passwd", "base64 data URI"),
    ],
)
def test_what_is_not_an_image_is_a_400_naming_the_field(url: str, words: str) -> None:
    with pytest.raises(InvalidRequestError, match=words) as caught:
        check_data_uri(url, WHERE, 1 << 20)
    assert caught.value.param == WHERE


def test_a_header_far_into_the_file_is_still_found() -> None:
    # A JPEG whose frame header follows a 60 kB comment: past the first bytes the gateway decodes.
    buffer = io.BytesIO()
    Image.new("RGB", (33, 44), "blue").save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    comment = b"x" * 60_000
    padded = jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]
    info = check_data_uri(data_uri(padded, "image/jpeg"), WHERE, 1 << 20)
    assert (info.width, info.height, info.size_bytes) == (33, 44, len(padded))


def test_bad_base64_far_past_the_header_is_caught_here() -> None:
    url = data_uri(noise_png(200))
    broken = url[:-100] + "!" + url[-99:]
    with pytest.raises(InvalidRequestError, match="not valid base64"):
        check_data_uri(broken, WHERE, 1 << 20)
    assert check_data_uri(url, WHERE, 1 << 20).size_bytes == len(noise_png(200))


def test_a_truncated_header_is_a_400() -> None:
    with pytest.raises(InvalidRequestError):
        check_data_uri(data_uri(png()[:20]), WHERE, 1 << 20)


def test_an_image_over_the_byte_limit_is_413_before_decoding() -> None:
    raw = png(side=256)
    with pytest.raises(PayloadTooLargeError, match="GATEWAY_MAX_IMAGE_BYTES"):
        check_data_uri(data_uri(raw), WHERE, len(raw) // 2)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _bmp_header(width: int, height: int) -> bytes:
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(dib), 0, 0, 14 + len(dib)) + dib


@pytest.mark.parametrize("header", [_png_header(40_000, 40_000), _bmp_header(30_000, 30_000)], ids=["png", "bmp"])
def test_a_decompression_bomb_is_413_from_its_header_alone(header: bytes) -> None:
    with pytest.raises(PayloadTooLargeError, match="too many pixels"):
        check_data_uri(data_uri(header), WHERE, 1 << 24)


def test_an_honest_header_of_the_same_kinds_passes() -> None:
    assert check_data_uri(data_uri(_png_header(640, 480)), WHERE, 1 << 24).pixels == 640 * 480
    assert check_data_uri(data_uri(_bmp_header(64, 32)), WHERE, 1 << 24).format == "BMP"


def test_a_versions_own_limits() -> None:
    images = [(WHERE, ImageInfo(2000, 1000, "PNG", 100))]
    check_limits(images, max_images=1, max_pixels=2_000_000)
    with pytest.raises(PayloadTooLargeError, match="at most 1999999 pixels"):
        check_limits(images, max_images=1, max_pixels=1_999_999)
    with pytest.raises(InvalidRequestError, match="holds 2 images; this model takes at most 1"):
        check_limits(images * 2, max_images=1, max_pixels=None)
    check_limits(images * 9, max_images=None, max_pixels=None)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # the classic SSRF target
        "https://127.0.0.1:8001/v2/models",
        "https://evil.example/cat.png",
        "http://images.example/cat.png",  # allowed host, but not over https
        "https://user:pw@images.example/cat.png",
    ],
)
def test_remote_urls_are_refused_unless_allowed(url: str) -> None:
    remote = RemoteImages(["images.example"], 1.0, 1 << 20)
    with pytest.raises(InvalidRequestError, match="remote image URLs are refused"):
        asyncio.run(remote.fetch(url, WHERE))


def test_with_no_allowed_hosts_nothing_is_fetched() -> None:
    remote = RemoteImages([], 1.0, 1 << 20)
    with pytest.raises(InvalidRequestError, match=r"allowed https hosts: none"):
        remote.check_url("https://images.example/cat.png", WHERE)
    assert remote._session is None
