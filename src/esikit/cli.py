"""The ``esikit`` command (also ``python -m esikit``).

Sub-commands:

- ``esikit check [KEY=VALUE ...]``: the data diagnostic (``test_metadata_loader.py``).
- ``esikit train [KEY=VALUE ...] [--resume [--force]]``: training then evaluation (``train.py``).
- ``esikit evaluate CHECKPOINT``: metrics and baselines for a trained model.
- ``esikit simulate OUT_DIR ...``: make a DeepSIF-style dataset without MATLAB.
- ``esikit forward OUT.mat --montage M ...``: a leadfield for any electrode cap.
- ``esikit localize RECORDING --checkpoint CKPT``: localize a recording's events.
- ``esikit noise-bank RECORDING OUT --forward FWD``: spike-free segments as DeepSIF's noise file.
- ``esikit template OUT --size tiny|small|full``: DeepSIF's template end to end.
- ``esikit demo``: make the built-in dataset when missing, check it, train, evaluate.

The code of each sub-command is in :mod:`esikit.commands`; this module only dispatches.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _run_check(args: argparse.Namespace) -> int:
    from .commands.check import main

    flags = [f for f, on in (("--verify-clips", args.verify_clips), ("--allow-missing-clips", args.allow_missing_clips))
             if on and f not in args.overrides]
    return main([*args.overrides, *flags])


def _run_train(args: argparse.Namespace) -> int:
    from .commands.train import main

    return main(args.overrides)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .commands.evaluate import main

    return main(args)


def _run_demo(args: argparse.Namespace) -> int:
    from .commands.demo import main

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esikit", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="check the configured data (same as test_metadata_loader.py)")
    # The flags are declared so they parse before the overrides too (REMAINDER takes them after).
    p.add_argument("--verify-clips", action="store_true", help="read every referenced clip and check the cache")
    p.add_argument("--allow-missing-clips", action="store_true",
                   help="do not fail on missing or unreadable clips (MISSING_CLIPS decides)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY=VALUE config overrides, --config PATH")
    p.set_defaults(func=_run_check)

    p = sub.add_parser("train", help="train the configured model, then evaluate it (same as train.py)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY=VALUE config overrides, --config PATH, --resume, --resume --force "
                   "(continue with a changed configuration)")
    p.set_defaults(func=_run_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on its test set against classical baselines")
    p.add_argument("checkpoint", help="checkpoint file (best.pt or last.pt)")
    p.add_argument("--max-samples", type=int, default=None, help="evaluate on at most N test samples")
    p.add_argument("--out", default=None, help="results folder (default: beside the checkpoint)")
    p.add_argument("--test-metadata", nargs="+", default=None,
                   help="other test metadata files (same anatomy), evaluated together (e.g. the one- and two-source files)")
    p.add_argument("--baselines", default=None,
                   help="comma-separated classical methods (default: the checkpoint's BASELINES): mne, dspm, sloreta, "
                        "eloreta, lcmv, champagne, flexchampagne or any invertmeeg solver name")
    p.add_argument("--oracle", action="store_true",
                   help="give the minimum-norm methods each sample's true SNR (default: MNE's lambda2 = 1/9)")
    p.add_argument("--depth", type=float, default=None, help="depth weighting exponent of the minimum-norm methods "
                                                             "(e.g. 0.8; default: none)")
    p.add_argument("--rule", choices=("deepsif", "normalized"), default="deepsif",
                   help="region rule for the network's output (default: DeepSIF's)")
    p.set_defaults(func=_run_evaluate)

    from .commands.simulate import add_parsers as add_simulate

    add_simulate(sub)

    from .commands.forward import add_parser as add_forward

    add_forward(sub)

    from .commands.localize import add_parsers as add_localization

    add_localization(sub)

    from .commands.template import add_parser as add_template

    add_template(sub)

    p = sub.add_parser("demo", help="make the built-in dataset if missing, then check, train and evaluate")
    p.add_argument("--data", default="data/default", help="dataset folder")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    p.set_defaults(func=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # Ctrl-C: every state on disk is written atomically, so there is nothing to undo
        print(f"esikit {args.command}: interrupted; what was finished is kept (the resumable commands, "
              "template, simulate and train --resume, go on from there when run again)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
