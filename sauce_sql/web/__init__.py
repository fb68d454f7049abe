"""The web layer's framework-neutral parts; the adapters are ``sauce_sql.asgi`` and
``sauce_sql.wsgi``.

``core`` is the visit step (cookie, classification, ``Set-Cookie``), ``options`` its
validated options, ``stats`` the counts of what was tracked and skipped, ``rules`` what is
a page view and why other requests are skipped, ``bots`` the crawler list, ``cookie``
the signed cookie, ``clientip`` the client's address, ``plans`` what a visit asks of
the store and the runners that fail open. None of them does I/O of its own.
"""
