"""Container health check, standard library only: ``healthcheck.py URL``; exit 0 when healthy.

``http://...`` is healthy when it answers 200 within the timeout; ``tcp://host:port`` when it accepts
a connection. Every image runs this one script, so no image needs curl.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import urlparse

TIMEOUT_S = 3.0


def healthy(url: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when ``url`` is healthy, else why not."""
    parsed = urlparse(url)
    if parsed.scheme == "tcp":
        if parsed.hostname is None or parsed.port is None:
            return f"{url}: give tcp://host:port"
        try:
            with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout_s):
                return None
        except OSError as exc:
            return f"{url}: {exc}"
    if parsed.scheme not in ("http", "https"):
        return f"{url}: only http(s):// and tcp:// are checked"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"
    return None if status == 200 else f"{url}: HTTP {status}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.exit("usage: healthcheck.py URL (http://host:port/path or tcp://host:port)")
    problem = healthy(argv[0])
    if problem is not None:
        sys.exit(f"unhealthy: {problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
