"""Every mail of the corpus through the real desk: store → one worker pass → rows and outbox
(tests/support/harness.py), on SQLite (issue 11, item 10). Two promises over real mail:

- **No bounce is ever answered.** Every bounce, auto-reply and complaint the sources name
  (see corpus.expectation) leaves no mail at all in the outbox: no acknowledgement, no
  refusal to a stranger — answering them is backscatter.
- **Quarantine is for mail the program failed on**: at most 2% of the corpus. A mail with no
  usable sender is kept and ignored with that reason, not quarantined.

The desk refuses strangers (the default), so a bounce taken for a person's mail would show
as a refusal in the outbox.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailgate.app import App
from mailgate.db.migrate import upgrade
from mailgate.db.models import Outbox
from tests.corpus.corpus import CORPUS, expectation, mail_files, report, source_of
from tests.support.desk import SettingsFactory, register_demo
from tests.support.harness import DeskHarness

MAX_QUARANTINED = 0.02
MACHINE = ("bounce", "auto-reply", "automatic")


@pytest.fixture
def sqlite_desk(make_settings: SettingsFactory) -> Iterator[DeskHarness]:
    app = App(make_settings())   # SQLite: database_url is parametrised below
    upgrade(app.engine)
    register_demo(app)
    yield DeskHarness(app)
    app.close()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_corpus_mail_through_the_desk(corpus: Path, sqlite_desk: DeskHarness) -> None:
    desk = sqlite_desk
    stats: dict[str, Counter[str]] = defaultdict(Counter)
    machine_rows: dict[int, str] = {}
    quarantined: list[str] = []
    started = time.perf_counter()
    for rel in mail_files():
        row = desk.receive((CORPUS / rel).read_bytes(), envelope_from="")
        s = stats[source_of(rel)]
        s["mails"] += 1
        s[str(row.status)] += 1
        if row.status == "quarantined":
            quarantined.append(f"{rel}: {row.reason}")
        if expectation(rel) in MACHINE:
            s["machine"] += 1
            machine_rows[row.id] = rel
    elapsed = time.perf_counter() - started
    with desk.app.sessions() as s:
        answered = dict(s.execute(select(Outbox.inbound_id, func.count())
                                  .group_by(Outbox.inbound_id)).all())
    answered_machine = sorted(f"{machine_rows[i]} ({n} mails)" for i, n in answered.items()
                              if i in machine_rows)
    for inbound_id in answered:
        rel = machine_rows.get(inbound_id)
        if rel is not None:
            stats[source_of(rel)]["machine_answered"] += 1

    total = sum(s["mails"] for s in stats.values())
    q_total = sum(s["quarantined"] for s in stats.values())
    rows = ["| source | mails | ticket | ignored | refused | quarantined | "
            "bounces/auto-replies named by the source | of those answered |",
            "|---|---|---|---|---|---|---|---|"]
    for src in sorted(stats):
        s = stats[src]
        rows.append(f"| {src} | {s['mails']} | {s['ticket']} | {s['ignored']} | "
                    f"{s['refused']} | {s['quarantined']} | {s['machine']} | "
                    f"{s['machine_answered']} |")
    rows.append(f"| **all** | {total} | {sum(s['ticket'] for s in stats.values())} | "
                f"{sum(s['ignored'] for s in stats.values())} | "
                f"{sum(s['refused'] for s in stats.values())} | {q_total} "
                f"({100 * q_total / total:.2f}%) | {sum(s['machine'] for s in stats.values())} "
                f"| {len(answered_machine)} |")
    report("The corpus through the desk (store → worker, SQLite)", "\n".join(rows))
    print(f"\n{total} mails in {elapsed:.1f} s ({total / elapsed:.0f} mails/s), "
          f"load {os.getloadavg()[0]:.1f}")
    print("\n".join(["Quarantined:", *quarantined, "Machine mail answered:", *answered_machine]))

    assert total >= 1400
    assert answered_machine == [], "a bounce or auto-reply was answered (backscatter)"
    assert q_total / total <= MAX_QUARANTINED, quarantined
    assert not any("no valid sender" in q or "no usable sender" in q for q in quarantined)
