"""Hypothesis strategies shared by the fuzzers: images good and bad as data URIs, and chat messages."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from functools import cache
from typing import Any

from hypothesis import strategies as st

from tiny_model import shapes


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, color_type: int = 2) -> bytes:
    """A few hundred bytes of PNG whose header declares ``width`` x ``height`` (any 32-bit values)."""
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 64)  # far less data than declared: a decoder must stop, not allocate
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def _other_format(image: Any, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=kind)
    return buffer.getvalue()


@cache
def valid_images() -> tuple[bytes, ...]:
    """Small real images of the tiny model's task (64x64): a PNG, then a JPEG, a GIF and a BMP."""
    return (
        _png(shapes.sample(7, 0).image),
        *(_other_format(shapes.sample(7, 1).image, k) for k in ("JPEG", "GIF", "BMP")),
    )


VALID_IMAGE = st.integers(min_value=0, max_value=3).map(lambda index: valid_images()[index])

_32_BIT = st.integers(min_value=0, max_value=2**32 - 1)
_SIDE = st.integers(min_value=0, max_value=5000)  # sizes near a model's pixel limit, either side of it
_CORRUPTED = st.builds(
    lambda raw, where, value: raw[:where] + bytes([value]) + raw[where + 1 :],
    VALID_IMAGE,
    st.integers(min_value=0, max_value=200),
    st.integers(min_value=0, max_value=255),
)
#: Image files: valid, declaring huge or zero sizes, cut short, corrupted, or not images at all.
IMAGE_BYTES = st.one_of(
    VALID_IMAGE,
    st.builds(png_declaring, _32_BIT, _32_BIT, st.sampled_from([0, 2, 3, 4, 6, 7])),
    st.builds(png_declaring, _SIDE, _SIDE),
    st.builds(lambda raw, cut: raw[:cut], VALID_IMAGE, st.integers(min_value=0, max_value=400)),
    _CORRUPTED,
    st.binary(max_size=64),
    st.sampled_from([b"GIF89a", b"\xff\xd8\xff\xe0", b"BM", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"%PDF-1.4"]),
)
_MIMES = st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml", "text/plain"])
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def data_uri(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


#: Image URLs as a client might send them: data URIs of ``IMAGE_BYTES``, broken base64, other schemes.
IMAGE_URLS = st.one_of(
    st.builds(data_uri, IMAGE_BYTES, _MIMES),
    st.builds(lambda raw: f"data:image/png;base64,{base64.b64encode(raw).decode().rstrip('=')}", IMAGE_BYTES),
    st.text(alphabet=_B64_ALPHABET + "-_ \n%*", max_size=40).map(lambda text: f"data:image/png;base64,{text}"),
    st.sampled_from(
        [
            "data:image/png;base64,",
            "data:image/png,not-base64",
            "data:;base64,iVBORw0KGgo=",
            "https://example.com/cat.png",
            "http://169.254.169.254/latest/meta-data/",
            "file:///etc/passwd",
            "",
        ]
    ),
    st.text(max_size=30),
)


def often(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any], one_in: int = 4) -> st.SearchStrategy[Any]:
    """``odd`` one time in ``one_in``, else ``usual``: random enough to break things, valid enough to get far."""
    # Not integers(): Hypothesis draws their bounds far more often than their share.
    return st.sampled_from([True] * (one_in - 1) + [False]).flatmap(lambda pick: usual if pick else odd)


TEXT = often(st.text(max_size=60), st.text(alphabet="ab ", min_size=500, max_size=3000), 8)
TEXT_PART = st.fixed_dictionaries({"type": st.just("text"), "text": TEXT})
#: An image part whose URL is valid one time in two (and broken in every way ``IMAGE_URLS`` knows otherwise).
IMAGE_PART = st.fixed_dictionaries(
    {
        "type": st.just("image_url"),
        "image_url": st.fixed_dictionaries({"url": often(VALID_IMAGE.map(data_uri), IMAGE_URLS, 2)}),
    }
)
#: Parts the contract does not allow: unknown types, missing or mistyped fields, not objects at all.
ODD_PART = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["image_url", "text", "image", "audio", ""])}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": IMAGE_URLS | st.integers() | st.none()}),
    st.fixed_dictionaries({"type": st.just("text"), "text": st.integers() | st.none() | st.lists(st.text(max_size=3))}),
    st.none() | st.integers() | st.text(max_size=5),
)
CONTENT = TEXT | st.lists(often(TEXT_PART, IMAGE_PART, 3), min_size=1, max_size=3)
#: The user's question: text, or parts with up to four images.
QUESTION = st.fixed_dictionaries(
    {
        "role": st.just("user"),
        "content": TEXT | st.builds(list.__add__, st.lists(IMAGE_PART, max_size=3), st.lists(TEXT_PART, max_size=2)),
    }
)
#: A conversation shaped as the contract wants (system first, the user's question last): only its
#: values (texts, images, sizes) are random.
CONVERSATION = st.builds(
    lambda system, turns, question: system + turns + [question],
    st.lists(st.fixed_dictionaries({"role": st.just("system"), "content": TEXT}), max_size=1),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": CONTENT}), max_size=3),
    QUESTION,
)
_ODD_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "tool", "User", "", None]) | st.text(max_size=8), "content": CONTENT}
    ),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.lists(ODD_PART, min_size=1)}),
    st.fixed_dictionaries({"role": st.just("user")}, optional={"content": st.none() | st.integers() | st.just([])}),
    st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=2),
)
#: A conversation with a fault or two: odd messages anywhere, or none at the end from the user.
ODD_CONVERSATION = st.builds(
    lambda messages, odd, where: messages[:where] + odd + messages[where:],
    CONVERSATION,
    st.lists(_ODD_MESSAGE, min_size=1, max_size=2),
    st.integers(min_value=0, max_value=5),
) | st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": CONTENT}))
