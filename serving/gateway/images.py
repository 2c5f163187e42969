"""Check images in the gateway, before Triton sees them: data URIs decoded to the header, sizes bounded.

A request's images are base64 ``data:image/...`` URIs. Remote URLs are refused unless their host is
on ``GATEWAY_IMAGE_URL_HOSTS``: fetching whatever URL a client names lets it probe the gateway's
network (SSRF). An allowed URL is fetched over https, without redirects, size-capped, and
forwarded as a data URI (the model reads data URIs only). Only the image header is decoded here;
the model decodes the pixels.
"""

from __future__ import annotations

import base64
import binascii
import io
import ssl
import struct
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from PIL import Image, UnidentifiedImageError

from core.contract import IMAGE_FORMATS
from serving.gateway.errors import InvalidRequestError, PayloadTooLargeError

#: Formats the model opens (the contract's one list); anything else is refused with a 400.
FORMATS = IMAGE_FORMATS
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Base64 characters decoded for the header check (a multiple of 4: 48 KiB of image).
_HEAD_CHARS = 65536


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the header says: enough to apply a version's pixel limit."""

    width: int
    height: int
    format: str
    size_bytes: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def check_data_uri(url: str, where: str, max_bytes: int) -> ImageInfo:
    """Decode a ``data:image/...;base64,`` URI's header; raise ``InvalidRequestError`` or ``PayloadTooLargeError``."""
    header, sep, payload = url.partition(",")
    if not (header.startswith("data:image/") and sep and header.endswith(";base64")):
        raise InvalidRequestError(
            f"{where}: an image must be a base64 data URI such as data:image/png;base64,... (got {url[:32]!r})",
            param=where,
        )
    size = len(payload) // 4 * 3 - payload[-2:].count("=")
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"{where}: the image is {size} bytes; the limit is {max_bytes} (GATEWAY_MAX_IMAGE_BYTES)", param=where
        )
    # Valid base64 is a pattern, checked without decoding: a megabyte decodes in milliseconds, and
    # the header sits in the first bytes (the model decodes the pixels anyway).
    if not _is_base64(payload):
        raise InvalidRequestError(
            f"{where}: the data URI is not valid base64 (only A-Z, a-z, 0-9, '+', '/', '=' padding at the end)",
            param=where,
        )
    head = binascii.a2b_base64(payload[:_HEAD_CHARS])
    try:
        return check_bytes(head, where, size)
    except InvalidRequestError:
        if len(payload) <= _HEAD_CHARS:
            raise
    # A header beyond the first bytes (a JPEG with a large EXIF block): read the whole image.
    return check_bytes(binascii.a2b_base64(payload), where, size)


def _is_base64(payload: str) -> bool:
    """Standard base64 with its padding, decided in C at memory speed (a regex takes as long as decoding)."""
    if len(payload) % 4 or not payload.isascii():
        return False
    body = payload.rstrip("=")
    return len(payload) - len(body) <= 2 and not body.encode("ascii").translate(None, _ALPHABET)


def check_bytes(raw: bytes, where: str, size: int | None = None) -> ImageInfo:
    """Read an image's header (from ``raw``, the image or its first bytes): format and size, no pixels."""
    size = len(raw) if size is None else size
    if raw[:8] == _PNG_SIGNATURE and raw[12:16] == b"IHDR" and len(raw) >= 24:
        # The common case read directly (Pillow's open costs more than the rest of a request's checks).
        width, height = struct.unpack(">II", raw[16:24])
        if width * height > Image.MAX_IMAGE_PIXELS:
            raise PayloadTooLargeError(f"{where}: the image has too many pixels ({width}x{height})", param=where)
        if width < 1 or height < 1:
            raise InvalidRequestError(f"{where}: the image is empty ({width}x{height})", param=where)
        return ImageInfo(width, height, "PNG", size)
    try:
        with warnings.catch_warnings():
            # Pillow's bomb check warns first and raises past twice its limit; both are "too big" here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw), formats=FORMATS) as image:
                width, height, kind = image.width, image.height, str(image.format)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadTooLargeError(f"{where}: the image has too many pixels ({exc})", param=where) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequestError(
            f"{where}: not a readable image (send {', '.join(FORMATS)}): {type(exc).__name__}", param=where
        ) from exc
    if width < 1 or height < 1:
        raise InvalidRequestError(f"{where}: the image is empty ({width}x{height})", param=where)
    return ImageInfo(width, height, kind, size)


def check_limits(images: list[tuple[str, ImageInfo]], max_images: int | None, max_pixels: int | None) -> None:
    """A version's own limits (its config's MAX_IMAGES and MAX_IMAGE_PIXELS); None: no limit known."""
    if max_images is not None and len(images) > max_images:
        raise InvalidRequestError(
            f"the request holds {len(images)} images; this model takes at most {max_images}", param="messages"
        )
    for where, info in images:
        if max_pixels is not None and info.pixels > max_pixels:
            raise PayloadTooLargeError(
                f"{where}: the image is {info.width}x{info.height} ({info.pixels} pixels); "
                f"this model takes at most {max_pixels} pixels per image",
                param=where,
            )


class RemoteImages:
    """Fetch allowed remote images; with no allowed hosts nothing is ever fetched.

    ``tls`` is the certificate trust for the fetches (default: the system's).
    """

    def __init__(self, hosts: list[str], timeout_s: float, max_bytes: int, tls: ssl.SSLContext | None = None) -> None:
        self.hosts = frozenset(hosts)
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.tls = tls
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_url(self, url: str, where: str) -> str:
        """The URL if the gateway may fetch it; else the 400 that says how to send the image instead."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme != "https" or host not in self.hosts or parts.username or parts.password:
            allowed = ", ".join(sorted(self.hosts)) or "none"
            raise InvalidRequestError(
                f"{where}: remote image URLs are refused (allowed https hosts: {allowed}); "
                "send the image inline as a base64 data URI",
                param=where,
            )
        return url

    async def fetch(self, url: str, where: str) -> tuple[str, ImageInfo]:
        """The image at an allowed ``url`` as a data URI, and its header."""
        self.check_url(url, where)
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.tls) if self.tls is not None else None
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), trust_env=False, connector=connector
            )
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise InvalidRequestError(
                        f"{where}: fetching the image answered HTTP {response.status}", param=where
                    )
                raw = await _read_at_most(response.content, self.max_bytes + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise InvalidRequestError(
                f"{where}: the image could not be fetched: {type(exc).__name__}", param=where
            ) from exc
        if len(raw) > self.max_bytes:
            raise PayloadTooLargeError(f"{where}: the image is over {self.max_bytes} bytes", param=where)
        info = check_bytes(raw, where)
        mime = f"image/{info.format.lower()}"
        return f"data:{mime};base64,{base64.b64encode(raw).decode()}", info


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to ``limit`` bytes. ``stream.read(n)`` returns what has arrived so far, which for a
    body sent in several packets is only its beginning: read until the body ends or the limit."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)
