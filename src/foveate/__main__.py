"""``python -m foveate`` is the ``foveate`` command."""

from .cli import main

raise SystemExit(main())
