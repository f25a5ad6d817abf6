"""How our parser reads a helpdesk's own collection of real mail, against what that helpdesk
expects: agreement rates for From, Subject and attachment names, and the share of mails we
would quarantine. Prints figures; asserts nothing; ships without data.

The collection is a directory of ``NAME.box`` (one raw mail each) with ``NAME.yml`` beside
it, in the format of Zammad's parser fixtures (``test/data/mail/mailNNN.{box,yml}``): the
keys ``from`` / ``from_email``, ``subject`` and ``attachments`` (a list of items with
``filename`` and ``preferences``). Zammad's files are AGPL: fetch your own copy, keep it
out of this repository, and point this script at it::

    .venv/bin/python -m bench.realmail /path/to/zammad/test/data/mail [-v]

How each is compared (the desk's reading, not Zammad's, where they must differ):

- **From**: our ``from_addr`` (lower-cased) against ``from_email``, or, where Zammad kept
  a From it could not split (``Test test@example.com``), the address the From holds: its
  angle brackets' content whole, or the one address word of a From without brackets or
  quotes. A mail whose ``from`` names no usable address counts as agreeing when we also find
  no sender, or when our sender came from a fallback the mail names (Sender, Reply-To,
  Return-Path) — never from a guess. A fixture without ``from`` is not counted.
- **Subject**: equal after collapsing white space.
- **Attachment names**: each expected name, except the HTML alternative Zammad keeps as
  ``message.html`` (``content-alternative``) — which the desk reads as the body — must be
  among ours, as is or after :func:`mailgate.mail.attachments.display_name` sanitised both
  (sanitising is fine; losing letters is not). Zammad's own names for unnamed parts
  (``file``, ``file-2``) agree with an unnamed part of ours, and one of them with our body
  text where the fixture's body is "no visible content" (Zammad filed the text after a
  first attachment as a part; the desk reads it as the message, nothing is lost); an item
  without data (an empty part) is not counted.
- **Quarantined**: :func:`mailgate.mail.parse.parse` refuses the mail
  (``UnparseableMail``); a mail with no usable sender is counted apart (the desk keeps it and
  ignores it with that reason).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mailgate.mail.attachments import display_name
from mailgate.mail.parse import UnparseableMail, parse, usable_address

# --- the few YAML shapes of the fixtures, without a YAML library -----------------------------


def _scalar(text: str) -> str:
    """One YAML scalar as written after ``key:`` (plain, '…' or "…", folded already)."""
    text = text.strip()
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        body = text[1:-1]

        def esc(m: re.Match[str]) -> str:
            c = m.group(1)
            if c[0] in "xuU":
                return chr(int(c[1:], 16))
            return {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "_": "\xa0", "N": "\x85",
                    " ": " ", "/": "/", "\\": "\\", '"': '"'}.get(c, c)
        return re.sub(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", esc, body)
    if text in ("~", "null"):
        return ""
    return text


def _fold(lines: list[str], start: int, indent: int) -> tuple[str, int]:
    """The value of the key on ``lines[start]``, with its continuation lines (more indented
    than the key) folded into it as YAML does for flow scalars."""
    value = lines[start].split(":", 1)[1].strip()
    if re.fullmatch(r"!\S+", value):     # a tag alone: the value is a nested mapping
        value = ""
    i = start + 1
    if value in ("|", "|-", ">", ">-", "|+", ">+"):   # block scalars: kept line by line
        block = []
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > indent):
            block.append(lines[i].strip())
            i += 1
        return ("\n" if value.startswith("|") else " ").join(block).strip(), i
    parts = [value]
    # (an empty value is a nested mapping: its more indented lines are keys, not the value)
    while value and i < len(lines) and lines[i].strip() and \
            len(lines[i]) - len(lines[i].lstrip()) > indent:
        parts.append(lines[i].strip())
        i += 1
    return _scalar(" ".join(parts)), i


@dataclass
class Expected:
    from_field: str = ""
    from_email: str = ""
    subject: str | None = None
    body: str | None = None
    attachments: list[str] = field(default_factory=list)


def read_expected(path: Path) -> Expected:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out = Expected()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"([\w-]+):(\s|$)", line)
        if not m:
            i += 1
            continue
        key = m.group(1)
        if key == "attachments":
            i = _attachments(lines, i + 1, out)
            continue
        value, i = _fold(lines, i, 0)
        if key == "from":
            out.from_field = value
        elif key == "from_email":
            out.from_email = value
        elif key == "subject":
            out.subject = value
        elif key == "body":
            out.body = value
    return out


def _attachments(lines: list[str], i: int, out: Expected) -> int:
    name, alternative, in_item, empty = "", False, False, False

    def close() -> None:
        # (an item with no data is Zammad's record of an empty part: nothing to name)
        if in_item and not alternative and not empty:
            out.attachments.append(name)

    while i < len(lines) and (not lines[i] or lines[i][0] in " -"):
        line = lines[i]
        if line.startswith("- "):
            close()
            name, alternative, in_item, empty = "", False, True, False
            line = "  " + line[2:]
        if re.fullmatch(r"  data:\s*(''|\"\")?\s*", line):
            empty = True
        fm = re.match(r"  filename:(\s|$)", line)
        if fm:
            name, i = _fold(lines, i, 2)
            continue
        if re.match(r"\s+content-alternative:\s*true", line):
            alternative = True
        i += 1
    close()
    return i


# --- the comparison -------------------------------------------------------------------------


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def _names_agree(expected: str, ours: list[str]) -> bool:
    if expected in ours:
        return True
    if _unnamed(expected) and "" in ours:
        return True   # Zammad's name for an unnamed part; ours is unnamed too
    shown = display_name(expected, "")
    return any(display_name(o, "") == shown for o in ours)


def _unnamed(expected: str) -> bool:
    return re.fullmatch(r"file(-\d+)?", expected) is not None


def _fixture_address(want: Expected) -> str | None:
    """The sender address the fixture names; None when it names none at all (no ``from``).

    ``from_email`` when it is an address. Else the From as Zammad kept it: the content of
    its angle brackets, whole (``<power quadrant system@x>`` names no address, and
    ``system@x`` would be a stranger's); without brackets or quotes (``Test
    test@example.com``, a name and an address) the one word that is an address; with quotes
    but no brackets, none."""
    if not (want.from_email or want.from_field):
        return None
    address = usable_address(want.from_email.lower())
    if address:
        return address
    field_ = want.from_field or want.from_email
    bracketed = re.search(r"<([^<>]*)>", field_)
    if bracketed:
        return usable_address(bracketed.group(1).lower())
    if '"' in field_:
        return ""
    words = [w for w in field_.split() if "@" in w]
    return usable_address(words[0].lower()) if len(words) == 1 else ""


@dataclass
class Tally:
    mails: int = 0
    from_ok: int = 0
    from_n: int = 0
    subject_ok: int = 0
    subject_n: int = 0
    names_ok: int = 0
    names_n: int = 0
    quarantined: int = 0
    no_sender: int = 0
    differences: list[str] = field(default_factory=list)


def compare(box: Path, want: Expected, tally: Tally) -> None:
    tally.mails += 1
    try:
        mail = parse(box.read_bytes())
    except UnparseableMail as exc:
        tally.quarantined += 1
        tally.differences.append(f"{box.name}: quarantined ({exc})")
        return
    tally.no_sender += not mail.from_addr
    expected_addr = _fixture_address(want)
    if expected_addr is not None:   # a fixture without any from states no expectation
        tally.from_n += 1
        if expected_addr:
            ok = mail.from_addr == expected_addr
        else:   # the fixture names no usable address: none, or a real fallback, is right
            ok = not mail.from_addr or mail.sender_header not in ("from", "")
        tally.from_ok += ok
        if not ok:
            tally.differences.append(f"{box.name}: From {expected_addr!r} vs ours "
                                     f"{mail.from_addr!r} ({mail.sender_header or 'none'})")
    if want.subject is not None:
        tally.subject_n += 1
        if _squash(want.subject) == _squash(mail.subject):
            tally.subject_ok += 1
        else:
            tally.differences.append(f"{box.name}: Subject {_squash(want.subject)!r} vs ours "
                                     f"{_squash(mail.subject)!r}")
    ours = [a.filename for a in mail.attachments]
    # Zammad files the text of a mail whose first part is an attachment as an unnamed part
    # ("file") and shows "no visible content"; the desk reads that text as the message. One
    # such part agrees when our body holds text (nothing is lost, it is only elsewhere).
    text_as_body = bool(mail.text.strip()) and (want.body or "").strip() == "no visible content"
    for name in want.attachments:
        if not name:
            continue   # an unnamed part: any name we give it is fine
        tally.names_n += 1
        if _names_agree(name, ours):
            tally.names_ok += 1
        elif _unnamed(name) and text_as_body:
            text_as_body = False
            tally.names_ok += 1
        else:
            tally.differences.append(f"{box.name}: attachment {name!r} not among {ours!r}")


def _pct(n: int, d: int) -> str:
    return f"{100 * n / d:.1f}% ({n}/{d})" if d else "–"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", type=Path, help="a directory of NAME.box + NAME.yml")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every difference")
    args = ap.parse_args(argv)
    boxes = sorted(p for p in args.directory.glob("*.box") if p.with_suffix(".yml").exists())
    if not boxes:
        print(f"no NAME.box with a NAME.yml beside it in {args.directory}", file=sys.stderr)
        return 66
    import logging
    logging.getLogger("mailparser").setLevel(logging.ERROR)
    tally = Tally()
    started = time.perf_counter()
    for box in boxes:
        compare(box, read_expected(box.with_suffix(".yml")), tally)
    elapsed = time.perf_counter() - started
    print(f"{tally.mails} mails from {args.directory} in {elapsed:.2f} s "
          f"(load {os.getloadavg()[0]:.1f})")
    print(f"  From agrees:             {_pct(tally.from_ok, tally.from_n)}")
    print(f"  Subject agrees:          {_pct(tally.subject_ok, tally.subject_n)}")
    print(f"  attachment names agree:  {_pct(tally.names_ok, tally.names_n)}")
    print(f"  quarantined:             {_pct(tally.quarantined, tally.mails)}")
    print(f"  no usable sender (kept, ignored): {_pct(tally.no_sender, tally.mails)}")
    if tally.differences:
        shown = tally.differences if args.verbose else tally.differences[:20]
        print(f"\n{len(tally.differences)} differences"
              + ("" if args.verbose else " (first 20; -v for all)") + ":")
        print("\n".join(f"  {d}" for d in shown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
