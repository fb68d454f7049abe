"""``python -m sauce_sql``: the same as the ``sauce-sql`` command."""

from sauce_sql.cli import main

raise SystemExit(main())
