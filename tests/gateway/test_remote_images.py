"""An allow-listed remote image is fetched whole, from a real HTTPS server that sends it in pieces."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from serving.gateway.errors import PayloadTooLargeError
from serving.gateway.images import RemoteImages
from tests.gateway.conftest import noise_png

WHERE = "messages.0.content.0.image_url.url"
IMAGE = noise_png(96)  # about 27 KB: several TLS records and TCP segments


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``localhost``: the server's, and the only one the client trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class _Slow(BaseHTTPRequestHandler):
    """Sends the image with its full Content-Length, but in pieces with pauses between them."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = IMAGE if self.path == "/cat.png" else IMAGE * 4
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for start in range(0, len(body), 4096):
            self.wfile.write(body[start : start + 4096])
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ssl.SSLContext]]:
    cert, key = _certificate(tmp_path_factory.mktemp("tls"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        yield httpd.server_address[1], trust
    finally:
        httpd.shutdown()
        httpd.server_close()


def _fetch(remote: RemoteImages, url: str) -> tuple[str, object]:
    async def go() -> tuple[str, object]:
        try:
            return await remote.fetch(url, WHERE)
        finally:
            await remote.close()

    return asyncio.run(go())


def test_an_image_sent_in_pieces_is_fetched_whole(server: tuple[int, ssl.SSLContext]) -> None:
    port, trust = server
    remote = RemoteImages(["localhost"], timeout_s=10.0, max_bytes=1 << 20, tls=trust)

    uri, info = _fetch(remote, f"https://localhost:{port}/cat.png")

    assert base64.b64decode(uri.partition(",")[2]) == IMAGE  # every byte, not what had arrived first
    assert uri.startswith("data:image/png;base64,")
    assert (info.width, info.height, info.size_bytes) == (96, 96, len(IMAGE))  # type: ignore[attr-defined]


def test_an_image_over_the_limit_is_413_however_it_arrives(server: tuple[int, ssl.SSLContext]) -> None:
    port, trust = server
    remote = RemoteImages(["localhost"], timeout_s=10.0, max_bytes=2 * len(IMAGE), tls=trust)

    with pytest.raises(PayloadTooLargeError, match=f"over {2 * len(IMAGE)} bytes"):
        _fetch(remote, f"https://localhost:{port}/big.png")
