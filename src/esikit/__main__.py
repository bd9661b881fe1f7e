"""``python -m esikit``: see :mod:`esikit.cli`."""

import sys

from .cli import main

sys.exit(main())
