"""Where each field sits in a ``config.pbtxt``: a light scan of the protobuf text format.

Python's protobuf has no ``ParseInfoTree`` (C++ only), so findings would otherwise carry no line.
The scan runs only after ``text_format`` accepted the text, so it can stay lenient: it records the
position of every field occurrence under a path such as ``("input", 1, "dims", 0)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Strings (either quote, with escapes), comments, punctuation, then bare words (names, numbers, enums).
_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>\#[^\n]*)|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<punct>[{}\[\]<>:,;])|(?P<word>[^\s{}\[\]<>:,;"'#]+)"""
)
_CLOSE = {"{": "}", "<": ">"}


@dataclass(frozen=True, slots=True)
class Key:
    """A map entry in a path, found by its key (``parameters``, ``input_map``, warmup ``inputs``)."""

    value: str


PathPart = str | int | Key
Position = tuple[int, int]


@dataclass(slots=True)
class _Token:
    text: str
    line: int
    column: int
    kind: str


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    line, line_start = 1, 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "word"
        if kind not in ("ws", "comment"):
            tokens.append(_Token(match.group(), line, match.start() - line_start + 1, kind))
        newlines = match.group().count("\n")
        if newlines:
            line += newlines
            line_start = match.start() + match.group().rindex("\n") + 1
    return tokens


def _unquote(token: _Token) -> str:
    return token.text[1:-1] if token.kind == "str" else token.text


class Locator:
    """Maps field paths of one parsed config to 1-based (line, column) positions."""

    def __init__(self, text: str) -> None:
        self._tokens = _tokenize(text)
        self._i = 0
        self._positions: dict[tuple[PathPart, ...], Position] = {}
        self._message((), end=None)

    def position(self, *path: PathPart) -> Position:
        """Position of ``path``, or of its deepest recorded ancestor, or (0, 0) for the whole file.

        A name directly after a name means occurrence 0 of the singular message in between:
        ``position("dynamic_batching", "preferred_batch_size", 1)``.
        """
        normal: list[PathPart] = []
        for part in path:
            if isinstance(part, str) and normal and isinstance(normal[-1], str):
                normal.append(0)
            normal.append(part)
        for end in range(len(normal), 0, -1):
            found = self._positions.get(tuple(normal[:end]))
            if found is not None:
                return found
        return (0, 0)

    def line(self, *path: PathPart) -> int:
        return self.position(*path)[0]

    # The scanner proper: a recursive descent over the text-format grammar.

    def _peek(self) -> _Token | None:
        return self._tokens[self._i] if self._i < len(self._tokens) else None

    def _take(self) -> _Token | None:
        token = self._peek()
        self._i += 1
        return token

    def _record(self, path: tuple[PathPart, ...], token: _Token) -> None:
        self._positions.setdefault(path, (token.line, token.column))

    def _message(self, prefix: tuple[PathPart, ...], end: str | None) -> dict[str, str]:
        """Scan fields up to ``end``; return this message's first scalar values (for map keys)."""
        counts: dict[str, int] = {}
        scalars: dict[str, str] = {}
        while (token := self._take()) is not None and token.text != end:
            if token.kind != "word":
                continue  # separators, or noise the real parser already rejected
            name = token.text
            self._record((*prefix, name), token)
            nxt = self._peek()
            if nxt is not None and nxt.text == ":":
                self._take()
                nxt = self._peek()
            if nxt is not None and nxt.text == "[":
                self._take()
                while (item := self._peek()) is not None and item.text != "]":
                    if item.text == ",":
                        self._take()
                        continue
                    self._element(prefix, name, counts, item, scalars)
                self._take()
            elif nxt is not None:
                self._element(prefix, name, counts, token, scalars)
        return scalars

    def _element(
        self,
        prefix: tuple[PathPart, ...],
        name: str,
        counts: dict[str, int],
        anchor: _Token,
        scalars: dict[str, str],
    ) -> None:
        index = counts.get(name, 0)
        counts[name] = index + 1
        path = (*prefix, name, index)
        self._record(path, anchor)
        value = self._take()
        if value is None:
            return
        if value.text in _CLOSE:
            inner = self._message(path, _CLOSE[value.text])
            if "key" in inner:
                self._record((*prefix, name, Key(inner["key"])), anchor)
            return
        scalars.setdefault(name, _unquote(value))
        # Adjacent string literals concatenate in the text format.
        while value.kind == "str" and (more := self._peek()) is not None and more.kind == "str":
            self._take()
