"""``python -m dhaka``: see :mod:`dhaka.cli`."""
from __future__ import annotations

import sys

from dhaka.cli import main

if __name__ == "__main__":
    sys.exit(main())
