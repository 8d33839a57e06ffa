"""``python -m featcheck``: the same command as the ``featcheck`` console script."""

from ._cli import main

raise SystemExit(main())
