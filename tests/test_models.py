"""The values the store hands out and takes in: frozen dataclasses and a str enum."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from typing import Any

import pytest

from sauce_sql import AnalyticsSession, InvalidInput, ReviveSession, SequenceType, StoreState

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
SESSION = AnalyticsSession("sid", "ua", "192.0.2.1", "u1", 1, 2, NOW, NOW, NOW)
STATE = StoreState("sqlite://", "sqlite", "sessions", 3600.0, None, False, None, None, 0)


def test_revive_dict_is_keyed_by_field_name() -> None:
    """to_dict gives exactly the four field names with their values."""
    revive = ReviveSession("sid", user_agent="ua", user_id="u1", client_ip="::1")
    assert revive.to_dict() == {
        "session_id": "sid",
        "user_agent": "ua",
        "user_id": "u1",
        "client_ip": "::1",
    }


@pytest.mark.parametrize(
    "revive",
    [
        ReviveSession("sid"),
        ReviveSession("sid", user_agent="Mozilla/5.0", user_id="u1", client_ip="192.0.2.1"),
        ReviveSession("séance ✓", user_agent="агент 🚀"),
    ],
)
def test_revive_round_trips_through_json(revive: ReviveSession) -> None:
    """A ReviveSession kept as JSON (a cookie, say) comes back equal."""
    kept = json.dumps(revive.to_dict())
    assert ReviveSession.from_dict(json.loads(kept)) == revive


def test_revive_defaults() -> None:
    """A ReviveSession needs only an id: no user agent, user or IP by default."""
    revive = ReviveSession("sid")
    assert (revive.user_agent, revive.user_id, revive.client_ip) == ("", None, None)
    assert ReviveSession.from_dict({"session_id": "sid"}) == revive


MALFORMED_REVIVE_DICTS: dict[str, Any] = {
    "None": None,
    "a str": "sid",
    "a list": [("session_id", "sid")],
    "bytes": b'{"session_id": "sid"}',
    "no session_id": {"user_agent": "ua"},
    "empty session_id": {"session_id": ""},
    "session_id None": {"session_id": None},
    "session_id 0": {"session_id": 0},
    "session_id []": {"session_id": []},
    "session_id {}": {"session_id": {}},
    "session_id 5": {"session_id": 5},
    "session_id True": {"session_id": True},
    "session_id bytes": {"session_id": b"sid"},
    "user_agent 0": {"session_id": "sid", "user_agent": 0},
    "user_agent []": {"session_id": "sid", "user_agent": []},
    "user_agent {}": {"session_id": "sid", "user_agent": {}},
    "user_agent None": {"session_id": "sid", "user_agent": None},
    "user_agent 5": {"session_id": "sid", "user_agent": 5},
    "user_id 0": {"session_id": "sid", "user_id": 0},
    "user_id []": {"session_id": "sid", "user_id": []},
    "user_id 5": {"session_id": "sid", "user_id": 5},
    "user_id False": {"session_id": "sid", "user_id": False},
    "client_ip 0": {"session_id": "sid", "client_ip": 0},
    "client_ip {}": {"session_id": "sid", "client_ip": {}},
    "client_ip int": {"session_id": "sid", "client_ip": 3232235777},
    "client_ip list": {"session_id": "sid", "client_ip": ["192.0.2.1"]},
}


@pytest.mark.parametrize("data", MALFORMED_REVIVE_DICTS.values(), ids=MALFORMED_REVIVE_DICTS.keys())
def test_malformed_revive_dicts_are_invalid_input(data: object) -> None:
    """Anything malformed in a client's revive dict (not a mapping, a missing or empty
    session_id, a field of the wrong type) is InvalidInput, never coerced."""
    with pytest.raises(InvalidInput):
        ReviveSession.from_dict(data)  # type: ignore[arg-type]


def test_revive_dict_values_are_taken_as_they_are() -> None:
    """A well-formed revive dict gives exactly its values; None is kept for user_id and
    client_ip, missing fields take their defaults, unknown keys are ignored."""
    data = {"session_id": "sid", "user_agent": "ua", "user_id": None, "client_ip": None, "x": 1}
    assert ReviveSession.from_dict(data) == ReviveSession("sid", "ua", None, None)
    assert ReviveSession.from_dict({"session_id": "sid", "user_id": "u"}).user_id == "u"


def test_to_dict_returns_a_new_dict() -> None:
    """Changing the dict from to_dict does not change the ReviveSession."""
    revive = ReviveSession("sid", user_agent="ua")
    data = revive.to_dict()
    data["user_agent"] = "changed"
    assert revive.user_agent == "ua"


@pytest.mark.parametrize(
    ("value", "field"),
    [(ReviveSession("sid"), "session_id"), (SESSION, "view_sequence"), (STATE, "url")],
    ids=["ReviveSession", "AnalyticsSession", "StoreState"],
)
def test_values_are_frozen(value: object, field: str) -> None:
    """The dataclasses refuse assignment to their fields."""
    assert dataclasses.is_dataclass(value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, "changed")


def test_values_compare_and_hash_by_content() -> None:
    """Equal field values make equal, hashable values."""
    assert AnalyticsSession("sid", "ua", "192.0.2.1", "u1", 1, 2, NOW, NOW, NOW) == SESSION
    assert len({SESSION, dataclasses.replace(SESSION), ReviveSession("a"), ReviveSession("a")}) == 2


def test_field_names_follow_the_contract() -> None:
    """The dataclasses have the contract's fields, in its order."""
    assert [f.name for f in dataclasses.fields(AnalyticsSession)] == [
        "session_id",
        "user_agent",
        "client_ip",
        "user_id",
        "view_sequence",
        "event_sequence",
        "created_at",
        "last_modified",
        "expires_at",
    ]
    assert [f.name for f in dataclasses.fields(ReviveSession)] == [
        "session_id",
        "user_agent",
        "user_id",
        "client_ip",
    ]
    assert [f.name for f in dataclasses.fields(StoreState)] == [
        "url",
        "dialect",
        "table_name",
        "session_max_age",
        "clean_interval",
        "cleaner_running",
        "last_cleanup_at",
        "last_cleanup_deleted",
        "total_cleaned",
    ]


def test_sequence_type_is_a_str_enum() -> None:
    """SequenceType's members are the strings "view" and "event"."""
    assert issubclass(SequenceType, str)
    assert [member.value for member in SequenceType] == ["view", "event"]
    view: str = SequenceType.VIEW
    event: str = SequenceType.EVENT
    assert (view, event) == ("view", "event")
    assert SequenceType("event") is SequenceType.EVENT
    assert f"{SequenceType.VIEW}" == "view"
    assert json.dumps(SequenceType.VIEW) == '"view"'
