"""Big base64 bodies kept out of Python's e-mail parser (issue 11, item 5: memory).

Python's parser turns a mail into text and lines before it joins each part's lines into
its payload: for a 21 MB mail with a 15 MB attachment that is about eight times the mail at
once (the text, a StringIO of four bytes per character, a str per 76-character line), and
``get_payload(decode=True)`` makes four more copies of the part. So before the parser sees
the bytes, every long run of base64 lines (:data:`MIN_RUN` bytes or more of whole lines of
base64 characters, no padding, no blank line: lines that can be neither a header, nor a
boundary, nor anything but base64 content) is replaced by one line holding a token. The
parser then reads a small skeleton with the same structure.

Afterwards (:func:`restore`) the tokens are put back as the text they stand for everywhere
except in the leaf parts that are base64 attachments outside any enclosed message: those
are decoded from the raw bytes by :func:`decoded`, in windows, straight into the result.
Anything unexpected about such a part (another transfer encoding, characters that are not
base64, padding that does not end it) puts the text back instead and leaves the part to
the parser's own decoding: the same bytes either way, only the memory differs.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import secrets
import weakref
from dataclasses import dataclass, field
from email.message import Message

MIN_RUN = 16 * 1024  # bytes of base64 lines: smaller runs cost the parser little
_WINDOW = 1 << 20
# One character class, no group repeated per line: the regex engine keeps no backtracking
# state per line (a nested repeat over 280,000 lines took ~35x the mail in its stack), and a
# match runs to the end of the block, so the scan is linear.
_BLOCK = re.compile(rb"[A-Za-z0-9+/\r\n]{64,}")
_BLANK = re.compile(rb"\n\n|\r\r|\n\r")  # a blank line: it would end a header block
_SPACE = b" \t\r\n"  # deleted with bytes.translate: ~10x a regex's speed on base64
_B64_TEXT = re.compile(r"[A-Za-z0-9+/ \t\r\n]*={0,2}[ \t\r\n]*")
_NESTED = ("message/",)


@dataclass
class Stash:
    """The raw bytes the skeleton was made from, and where each token's run lies in them."""

    raw: bytes
    token: str  # the prefix of this mail's tokens, unique in it
    runs: list[tuple[int, int]] = field(default_factory=list)  # [start, end): see runs()

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.token) + r"(\d+)X")

    def text(self, index: int) -> str:
        start, end = self.runs[index]
        return self.raw[start:end].decode("ascii")

    def put_back(self, value: str) -> str:
        return self.pattern.sub(lambda m: self.text(int(m.group(1))), value)


# Leaf parts whose payload still holds tokens, decoded from the raw bytes by `decoded`.
_STASHED: weakref.WeakKeyDictionary[Message, Stash] = weakref.WeakKeyDictionary()


def runs(raw: bytes) -> list[tuple[int, int]]:
    """[start, end) of each run of whole lines made of base64 characters only (no "=", no
    blank line, at least MIN_RUN bytes): from the start of its first line to the end of its
    last line's text (its line ending not included)."""
    found: list[tuple[int, int]] = []
    if len(raw) < MIN_RUN:
        return found
    for m in _BLOCK.finditer(raw):
        start, end = m.span()
        if end - start < MIN_RUN:
            continue
        if start > 0 and raw[start - 1] not in b"\r\n":  # a line's tail: from the next line
            while start < end and raw[start] not in b"\r\n":
                start += 1
        while start < end and raw[start] in b"\r\n":
            start += 1
        if end < len(raw) and raw[end] not in b"\r\n":  # a line's head: to the line before
            while end > start and raw[end - 1] not in b"\r\n":
                end -= 1
        while end > start and raw[end - 1] in b"\r\n":
            end -= 1
        if end - start < MIN_RUN or end == len(raw) or _BLANK.search(raw, start, end):
            continue
        found.append((start, end))
    return found


def stash(raw: bytes) -> tuple[bytes, Stash | None]:
    """(the skeleton for the parser, the stash); (raw itself, None) when there is no run."""
    found = runs(raw)
    if not found:
        return raw, None
    token = "MAILGATEBASE64RUN" + secrets.token_hex(8).upper() + "N"
    out = Stash(raw, token)
    pieces: list[bytes] = []
    at = 0
    for start, end in found:
        # The run's last line ending stays: the parser treats the line ending before a
        # boundary as the boundary's, and so it will treat the token line's.
        pieces += [raw[at:start], f"{token}{len(out.runs)}X".encode()]
        out.runs.append((start, end))
        at = end
    pieces.append(raw[at:])
    return b"".join(pieces), out


def restore(msg: Message, found: Stash | None) -> None:
    """The tokens back as text in every part, but for the base64 attachments `decoded`
    reads from the raw bytes."""
    if found is None:
        return
    _restore(msg, found, inside_message=False)


def _restore(part: Message, found: Stash, inside_message: bool) -> None:
    for name in ("preamble", "epilogue"):
        value = getattr(part, name, None)
        if isinstance(value, str) and found.token in value:
            setattr(part, name, found.put_back(value))
    payload = _payload(part)
    if isinstance(payload, list):
        nested = inside_message or part.get_content_type().startswith(_NESTED)
        for sub in payload:
            if isinstance(sub, Message):
                _restore(sub, found, nested)
        return
    if not isinstance(payload, str) or found.token not in payload:
        return
    if (not inside_message and part.get_content_maintype() not in ("text", "message",
                                                                   "multipart")
            and str(part.get("content-transfer-encoding", "")).strip().lower() == "base64"
            and _B64_TEXT.fullmatch(found.pattern.sub("", payload))):
        _STASHED[part] = found
        return
    _set_payload(part, found.put_back(payload))


def _payload(part: Message) -> object:
    """The payload as stored: get_payload() would convert 8-bit text through its charset."""
    return vars(part).get("_payload")


def _set_payload(part: Message, value: str) -> None:
    vars(part)["_payload"] = value


def decoded(part: Message) -> bytes | None:
    """The decoded bytes of a part whose base64 runs were kept out of the parser (what
    ``get_payload(decode=True)`` gives once the text is back); None for any other part."""
    found = _STASHED.get(part)
    if found is None:
        return None
    payload = _payload(part)
    assert isinstance(payload, str)
    out = io.BytesIO()
    carry = b""
    view = memoryview(found.raw)
    try:
        at = 0
        for m in found.pattern.finditer(payload):
            carry = _feed(out, carry, payload[at:m.start()].encode("ascii"))
            start, end = found.runs[int(m.group(1))]
            for window in range(start, end, _WINDOW):
                carry = _feed(out, carry, view[window:min(window + _WINDOW, end)])
            at = m.end()
        tail = (carry + payload[at:].encode("ascii")).translate(None, _SPACE)
        if len(tail) % 4:
            raise binascii.Error("padding")
        out.write(base64.b64decode(tail, validate=True))
    except (binascii.Error, ValueError):
        # Not the well-formed base64 this way is for: the parser's own decoding decides.
        del _STASHED[part]
        _set_payload(part, found.put_back(payload))
        return None
    finally:
        view.release()
    return out.getvalue()  # BytesIO hands over its buffer: no copy


def _feed(out: io.BytesIO, carry: bytes, data: bytes | memoryview) -> bytes:
    """Decodes the whole groups of four of carry + data into `out`; returns what is left.
    Padding is only allowed at the very end (in the tail `decoded` checks itself)."""
    chunk = (carry + bytes(data)).translate(None, _SPACE)
    whole = len(chunk) - len(chunk) % 4
    if b"=" in chunk[:whole]:
        raise binascii.Error("padding inside the data")
    out.write(base64.b64decode(chunk[:whole], validate=True))
    return chunk[whole:]
