"""A first end-to-end check on every backend."""

from sauce_sql import Store


def test_counts_views(store: Store) -> None:
    """A new session counts its views from 1."""
    session = store.new_session(user_agent="ua")
    assert store.inc_sequence(session.session_id, "view") == 1
    assert store.inc_sequence(session.session_id, "view") == 2
