"""The leak scanner itself: it finds a token wherever it sits in a file, and only there."""

from __future__ import annotations

from pathlib import Path

from tests.security.leaks import contains, scan


def test_the_scanner_finds_a_token_wherever_it_sits(tmp_path: Path) -> None:
    secret = "scanner-self-test-4c1e9b7d2a"
    big = tmp_path / "deep" / "big.log"
    big.parent.mkdir()
    # Across the boundary between two read chunks: the overlap must still see it whole.
    big.write_bytes(b"." * ((1 << 20) - 10) + secret.encode() + b"." * 100)
    (tmp_path / "clean.log").write_text("nothing here")
    (tmp_path / "link.log").symlink_to(big)

    assert scan([tmp_path], [secret]) == {big: [secret]}
    assert contains(big, [b"absent"]) == []
