"""Agent commands by mail: lines at the top of an agent's mail that start with ``#``.

    #note                          internal note: stored, sent to the other agents only
    #status open|waiting|resolved|closed
    #resolve  #close  #reopen  #wait    the same as #status resolved|closed|open|waiting
    #priority normal|urgent
    #assign <agent e-mail>|me
    #site <4-digit site ID>
    #link <ticket ref>
    #requester <e-mail>            the ticket belongs to this editor (a forwarded mail)

Whatever follows the command lines is the answer relayed to the editor (unless #note).
Parsing checks the syntax only; what needs the database (does the agent, the site, the
ticket exist?) is checked when the commands are applied (:mod:`mailgate.tickets.agentwork`),
all of them before any is applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.mail.addresses import is_valid_address, normalize
from mailgate.tickets.states import State

_ALIASES = {"resolve": State.RESOLVED, "close": State.CLOSED, "reopen": State.OPEN,
            "wait": State.WAITING}
PRIORITIES = ("normal", "urgent")
AGENT_STATES = tuple(s.value for s in State if s != State.NEW)

# What the refusal lists, in this order.
ACCEPTED = (
    "#note",
    f"#status {'|'.join(AGENT_STATES)}",
    "#resolve  #close  #reopen  #wait",
    f"#priority {'|'.join(PRIORITIES)}",
    "#assign <agent e-mail>|me",
    "#site <4-digit site ID>",
    "#link <ticket number, e.g. SD-12>",
    "#requester <e-mail>",
)

# A command line: '#' and a word at the start of a line. "#1 oorzaak" is text, not a command.
_LINE = re.compile(r"\s*#([A-Za-z]+)\b(.*)")


@dataclass(frozen=True)
class Command:
    line: str     # as written, for the refusal
    word: str     # the command, lower case, aliases resolved to "status"
    arg: str      # the checked argument ("" when none)


@dataclass(frozen=True)
class BadLine:
    line: str
    reason: str


@dataclass(frozen=True)
class AgentCommand:
    """The command lines at the top of an agent's mail, and the text after them."""

    commands: tuple[Command, ...]
    errors: tuple[BadLine, ...]
    text: str

    @property
    def note(self) -> bool:
        return any(c.word == "note" for c in self.commands)

    @property
    def state(self) -> State | None:
        states = [State(c.arg) for c in self.commands if c.word == "status"]
        return states[-1] if states else None

    def get(self, word: str) -> str | None:
        args = [c.arg for c in self.commands if c.word == word]
        return args[-1] if args else None


def _check(word: str, arg: str) -> tuple[str, str] | str:
    """(word, argument) as applied, or the reason the line is wrong."""
    low = arg.strip().lower()
    if word in _ALIASES:
        return ("status", _ALIASES[word].value) if not low else \
            f"#{word} takes no argument"
    if word == "note":
        return ("note", "") if not low else "#note takes no argument (write the note below it)"
    if word == "status":
        return ("status", low) if low in AGENT_STATES else \
            f"unknown state {arg.strip()!r}: use one of {', '.join(AGENT_STATES)}"
    if word == "priority":
        return ("priority", low) if low in PRIORITIES else \
            f"unknown priority {arg.strip()!r}: use {' or '.join(PRIORITIES)}"
    if word == "assign":
        if low == "me" or is_valid_address(normalize(arg)):
            return "assign", normalize(arg)
        return "#assign needs an agent's e-mail address or 'me'"
    if word == "site":
        return ("site", low) if re.fullmatch(r"\d{4}", low) else \
            "#site needs a 4-digit site ID"
    if word == "link":
        return ("link", arg.strip().upper()) if re.fullmatch(r"\[?[a-z][a-z0-9]*-\d+\]?", low) \
            else "#link needs a ticket number such as SD-12"
    if word == "requester":
        return ("requester", normalize(arg)) if is_valid_address(normalize(arg)) else \
            "#requester needs the editor's e-mail address"
    return f"unknown command #{word}"


def parse_command(text: str) -> AgentCommand | None:
    """The commands at the top of ``text``; None when the mail starts with no command."""
    lines = text.strip().splitlines()
    commands: list[Command] = []
    errors: list[BadLine] = []
    used = 0
    for line in lines:
        m = _LINE.fullmatch(line)
        if m is None:
            break
        used += 1
        checked = _check(m.group(1).lower(), m.group(2))
        if isinstance(checked, str):
            errors.append(BadLine(line.strip(), checked))
        else:
            commands.append(Command(line.strip(), *checked))
    if used == 0:
        return None
    return AgentCommand(tuple(commands), tuple(errors), "\n".join(lines[used:]).strip())

