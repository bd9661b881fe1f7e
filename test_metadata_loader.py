"""Check that everything configs/config.py points at can be trained from.

    python test_metadata_loader.py [KEY=VALUE ...] [--config PATH] [--verify-clips] [--allow-missing-clips]

Exits non-zero, with what to fix, when anything is wrong (referenced clips that are missing
or unreadable included, unless --allow-missing-clips).
"""

import sys
from pathlib import Path

from esikit.commands.check import main

if __name__ == "__main__":
    # The config beside this script, wherever it is run from; --config overrides it.
    sys.exit(main(sys.argv[1:], default_config=Path(__file__).with_name("configs") / "config.py"))
