"""``python -m sfu`` → the ``sfu`` command line."""

from sfu.cli import main

raise SystemExit(main())
