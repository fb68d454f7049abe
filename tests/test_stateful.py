"""The store against a model of the contract, on random sequences of operations.

The model is a dict of rows and a clock; each rule runs one operation on the store and
on the model, and the answers must agree, as must every session visible afterwards.
The ids come from a small pool so that operations collide on purpose, and the clock
moves in steps that land on, just before and just after the expiry moment, and within
and past PostgreSQL's expiry resolution (an increment or assign_user there keeps a stored
expiry less than the resolution short of now + max age).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

import pytest
from _support import FAR_FUTURE
from conftest import PG_URL, START, FakeClock, drop_tables, require_postgres
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from sauce_sql import (
    AnalyticsSession,
    ReviveSession,
    SequenceType,
    SessionExists,
    SessionNotFound,
    Store,
)
from sauce_sql.config import DEFAULT_HISTORY_MAX_AGE
from sauce_sql.statements import expiry_resolution

MAX_AGE = 100
IDS = ["s1", "s2", "s3", "s-\u00e9\u00e8-\U0001f600"]
# What each user agent, client IP and user becomes when stored.
USER_AGENTS = {"": "", "Mozilla/5.0": "Mozilla/5.0", "nul\x00ua": "nulua", "x" * 600: "x" * 512}
CLIENT_IPS = {None: None, "": None, "192.0.2.7": "192.0.2.7", "2001:DB8::0:1": "2001:db8::1"}
USERS = [None, "u1", "u2"]
# 1 s is within PostgreSQL's expiry resolution (5 s at this max age), 6 s past it.
STEPS = [1, 6, MAX_AGE - 1, MAX_AGE, MAX_AGE + 1, 3 * MAX_AGE]
OFFSETS = [-MAX_AGE, -1, 0, 1, MAX_AGE]
EXAMPLES = {"sqlite_memory": 150, "postgresql": 60, "postgresql_lean": 40}


@dataclass(frozen=True)
class Row:
    """The model's copy of one stored row."""

    user_agent: str
    client_ip: str | None
    user_id: str | None
    view_sequence: int
    event_sequence: int
    created_at: datetime
    last_modified: datetime
    expires_at: datetime

    def session(self, session_id: str) -> AnalyticsSession:
        """What the store should return for this row."""
        return AnalyticsSession(session_id, *self.__dict__.values())


class StoreMachine(RuleBasedStateMachine):
    """One store and its model; the test sets ``store`` and ``clock`` on a subclass."""

    store: ClassVar[Store]
    clock: ClassVar[FakeClock]
    examples: ClassVar[list[int]]
    #: Whether increments and assign_user keep an expiry within the resolution.
    lean_expiry: ClassVar[bool]

    def __init__(self) -> None:
        super().__init__()
        self.clock.now = START
        # Start each example from empty tables: at FAR_FUTURE every session expired and
        # its archived copy is past history retention too.
        self.store.cleanup(FAR_FUTURE)
        self.rows: dict[str, Row] = {}
        #: The sessions cleanup archived, per id, oldest first.
        self.archived: dict[str, list[Row]] = {}
        self.examples.append(1)

    # -- the model ------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.clock.now

    def live(self, sid: str) -> Row | None:
        row = self.rows.get(sid)
        return row if row is not None and row.expires_at > self.now else None

    def touched(self, row: Row, *, lean: bool = False, **changes: Any) -> Row:
        """``row`` after a write: sliding expiry from now. With ``lean`` (an increment
        or assign_user on PostgreSQL) a stored expiry within the resolution below the
        new one is kept."""
        expires = self.now + timedelta(seconds=MAX_AGE)
        resolution = expiry_resolution(timedelta(seconds=MAX_AGE))
        if lean and self.lean_expiry and expires - resolution <= row.expires_at <= expires:
            expires = row.expires_at
        return replace(row, last_modified=self.now, expires_at=expires, **changes)

    def fresh(self, ua: str, ip: str | None, uid: str | None) -> Row:
        expires = self.now + timedelta(seconds=MAX_AGE)
        return Row(USER_AGENTS[ua], CLIENT_IPS[ip], uid, 0, 0, self.now, self.now, expires)

    def revived(self, sid: str, ua: str, ip: str | None, uid: str | None) -> Row:
        row = self.rows.get(sid)
        if row is None and self.archived.get(sid):
            # Revival reaches history: the latest archived session comes back.
            row = self.archived[sid].pop()
        if row is None:
            return self.fresh(ua, ip, uid)
        user = uid if uid is not None else row.user_id
        return self.touched(row, user_agent=USER_AGENTS[ua], client_ip=CLIENT_IPS[ip], user_id=user)

    def archive(self, sid: str, row: Row) -> None:
        """``row`` of ``sid`` moved to history."""
        archived = self.archived.setdefault(sid, [])
        # One key per (id, expiry): a later archived session of that key replaces it.
        archived[:] = [old for old in archived if old.expires_at != row.expires_at]
        archived.append(row)

    # -- rules ----------------------------------------------------------------------

    @rule(
        sid=st.sampled_from([*IDS, None]),
        ua=st.sampled_from(sorted(USER_AGENTS)),
        ip=st.sampled_from(list(CLIENT_IPS)),
        uid=st.sampled_from(USERS),
    )
    def new_session(self, sid: str | None, ua: str, ip: str | None, uid: str | None) -> None:
        if sid is not None and self.live(sid) is not None:
            with pytest.raises(SessionExists):
                self.store.new_session(sid, user_agent=ua, client_ip=ip, user_id=uid)
            return
        got = self.store.new_session(sid, user_agent=ua, client_ip=ip, user_id=uid)
        if sid is not None and sid in self.rows:
            # The expired row it replaces is archived first.
            self.archive(sid, self.rows[sid])
        if sid is None:
            assert len(got.session_id) == 32
            assert got.session_id not in self.rows
            sid = got.session_id
        self.rows[sid] = self.fresh(ua, ip, uid)
        assert got == self.rows[sid].session(sid)

    @rule(sid=st.sampled_from(IDS), kind=st.sampled_from(["view", "event", *SequenceType]))
    def inc_sequence(self, sid: str, kind: str) -> None:
        row = self.live(sid)
        if row is None:
            with pytest.raises(SessionNotFound):
                self.store.inc_sequence(sid, kind)
            return
        if kind == "view":
            row = self.touched(row, lean=True, view_sequence=row.view_sequence + 1)
            expected = row.view_sequence
        else:
            row = self.touched(row, lean=True, event_sequence=row.event_sequence + 1)
            expected = row.event_sequence
        assert self.store.inc_sequence(sid, kind) == expected
        self.rows[sid] = row

    @rule(sid=st.sampled_from(IDS), uid=st.sampled_from(USERS))
    def assign_user(self, sid: str, uid: str | None) -> None:
        row = self.live(sid)
        if row is None:
            with pytest.raises(SessionNotFound):
                self.store.assign_user(sid, uid)
            return
        self.store.assign_user(sid, uid)
        self.rows[sid] = self.touched(row, lean=True, user_id=uid)

    @rule(
        sid=st.sampled_from(IDS),
        ua=st.sampled_from(sorted(USER_AGENTS)),
        ip=st.sampled_from(list(CLIENT_IPS)),
        uid=st.sampled_from(USERS),
        maybe=st.booleans(),
    )
    def revive(self, sid: str, ua: str, ip: str | None, uid: str | None, maybe: bool) -> None:
        revive = ReviveSession(sid, user_agent=ua, user_id=uid, client_ip=ip)
        live = self.live(sid)
        if maybe and live is not None:
            assert self.store.maybe_revive_session(revive) == live.session(sid)
            return
        call = self.store.maybe_revive_session if maybe else self.store.revive_session
        got = call(revive)
        self.rows[sid] = self.revived(sid, ua, ip, uid)
        assert got == self.rows[sid].session(sid)

    @rule(sid=st.sampled_from(IDS))
    def lookup(self, sid: str) -> None:
        row = self.live(sid)
        assert self.store.lookup_session(sid) == (None if row is None else row.session(sid))
        assert self.store.session_exists(sid) is (row is not None)

    @rule(offset=st.sampled_from([None, *OFFSETS]))
    def cleanup(self, offset: int | None) -> None:
        moment = self.now if offset is None else self.now + timedelta(seconds=offset)
        expired = [sid for sid, row in self.rows.items() if row.expires_at <= moment]
        before = self.store.get_state().total_cleaned
        got = self.store.cleanup() if offset is None else self.store.cleanup(moment)
        assert got == len(expired)
        for sid in expired:
            self.archive(sid, self.rows.pop(sid))
        cutoff = moment - timedelta(seconds=DEFAULT_HISTORY_MAX_AGE)
        for archived in self.archived.values():
            archived[:] = [row for row in archived if row.expires_at > cutoff]
        state = self.store.get_state()
        assert (state.last_cleanup_at, state.last_cleanup_deleted) == (moment, got)
        assert state.total_cleaned == before + got

    @rule(seconds=st.sampled_from(STEPS))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @invariant()
    def agrees(self) -> None:
        for sid in {*IDS, *self.rows}:
            row = self.live(sid)
            assert self.store.lookup_session(sid) == (None if row is None else row.session(sid))


@pytest.fixture(
    params=[
        "sqlite_memory",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("postgresql_lean", marks=pytest.mark.postgresql),
    ]
)
def machine_store(request: pytest.FixtureRequest) -> Iterator[tuple[str, Store, FakeClock]]:
    """One started store per run (each example empties its table), and its clock."""
    clock = FakeClock()
    if request.param == "sqlite_memory":
        with Store("sqlite://", clean_interval=None, clock=clock, session_max_age=MAX_AGE) as s:
            yield request.param, s, clock
        return
    require_postgres()
    table = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with Store(
            PG_URL,
            table_name=table,
            clean_interval=None,
            clock=clock,
            session_max_age=MAX_AGE,
            lean_expiry=request.param == "postgresql_lean",
        ) as s:
            yield request.param, s, clock
    finally:
        drop_tables(PG_URL, table)


def test_store_agrees_with_model(machine_store: tuple[str, Store, FakeClock]) -> None:
    """Random sequences of every operation, clock steps and cleanups give the answers
    the contract's model gives, and leave the same sessions visible."""
    name, store, clock = machine_store
    examples: list[int] = []
    machine = type(
        "Machine",
        (StoreMachine,),
        {
            "store": store,
            "clock": clock,
            "examples": examples,
            "lean_expiry": name == "postgresql_lean",
        },
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES[name],
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    print(f"FIGURES stateful {name}: examples={len(examples)}")
