"""``python -m kbrefresh``: the same as the ``kbrefresh`` command."""

from __future__ import annotations

from kbrefresh.cli import main

if __name__ == "__main__":
    main()
