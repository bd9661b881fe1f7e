"""Train the configured model (configs/config.py), then evaluate it on the test set.

    python train.py [KEY=VALUE ...] [--config PATH] [--resume [--force]]

--resume continues checkpoints/<RUN_NAME>/ and refuses a changed configuration unless
--force (see configs/config.py).
"""

import sys
from pathlib import Path

from esikit.commands.train import main

if __name__ == "__main__":
    # The config beside this script, wherever it is run from; --config overrides it.
    sys.exit(main(sys.argv[1:], default_config=Path(__file__).with_name("configs") / "config.py"))
