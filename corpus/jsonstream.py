"""Stream the elements of a top-level JSON array without loading the whole file.

`json.load` of the lab's 446 MB knowledge file needs several GB; this reads it in
chunks and decodes one element at a time with `json.JSONDecoder.raw_decode`, so memory
is bounded by the chunk size plus the largest single element.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from minimind.errors import MinimindError

CHUNK_CHARS = 1 << 20
MAX_ELEMENT_CHARS = 64 << 20  # an element larger than this is treated as malformed
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class _Buffer:
    """Decoded text of the file from `pos` on, refilled from the byte stream on demand."""

    def __init__(self, handle, advance: Callable[[int], None] | None):
        self.handle = handle
        self.advance = advance or (lambda n: None)
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0
        self.eof = False
        self.consumed = 0  # characters dropped before `text`, for error positions

    def fill(self, at_least: int = CHUNK_CHARS) -> bool:
        """Append at least `at_least` more bytes' worth of text; False at end of file."""
        if self.eof:
            return False
        raw = self.handle.read(max(at_least, CHUNK_CHARS))
        self.advance(len(raw))
        try:
            more = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as err:
            raise MinimindError(f"{self.handle.name}: not UTF-8 near byte {self.handle.tell()} ({err.reason})") from err
        self.consumed += self.pos
        self.text = self.text[self.pos:] + more
        self.pos = 0
        self.eof = not raw
        return True

    def skip_whitespace(self) -> str:
        """The next non-blank character ('' at end of file), left unconsumed."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.fill():
                return ""


def iter_json_array(path: str | Path, advance: Callable[[int], None] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (index, element) for each element of the JSON array in `path`.

    A syntax error inside the array stops the stream with a MinimindError naming the
    element index: past a syntax error there is no reliable way to find the next element."""
    path = Path(path)
    decoder = json.JSONDecoder()
    with open(path, "rb") as handle:
        buf = _Buffer(handle, advance)
        first = buf.skip_whitespace()
        if first != "[":
            found = "an empty file" if first == "" else f"{first!r}"
            raise MinimindError(f"{path}: expected a JSON array starting with '[', found {found}")
        buf.pos += 1
        if buf.skip_whitespace() == "]":
            buf.pos += 1
            _expect_end(buf, path)
            return
        index = 0
        while True:
            if buf.skip_whitespace() == "":
                raise MinimindError(f"{path}: file ends inside the array, at element {index}")
            error = None
            try:
                element, end = decoder.raw_decode(buf.text, buf.pos)
                complete = end < len(buf.text) or buf.eof  # a number at the buffer's end may go on
            except json.JSONDecodeError as err:
                complete, error = False, err
            if not complete:
                pending = len(buf.text) - buf.pos
                if buf.eof or pending > MAX_ELEMENT_CHARS:
                    reason = error.msg if error else "element too large"
                    raise MinimindError(f"{path}: element {index} is not valid JSON ({reason}, "
                                        f"near character {buf.consumed + buf.pos})")
                buf.fill(at_least=pending)  # grow geometrically: a big element costs O(size)
                continue
            yield index, element
            index += 1
            buf.pos = end
            separator = buf.skip_whitespace()
            if separator == ",":
                buf.pos += 1
            elif separator == "]":
                buf.pos += 1
                _expect_end(buf, path)
                return
            else:
                found = "end of file" if separator == "" else repr(separator)
                raise MinimindError(f"{path}: expected ',' or ']' after element {index - 1}, found {found}")


def _expect_end(buf: _Buffer, path: Path) -> None:
    if buf.skip_whitespace() != "":
        raise MinimindError(f"{path}: unexpected data after the end of the JSON array")
