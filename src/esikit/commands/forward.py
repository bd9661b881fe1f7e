"""``esikit forward``: a leadfield for any electrode cap, or a montage attached to a file.

``esikit forward OUT.mat --anatomy default|DIR --montage M [--channels A,B,...]`` computes
the region leadfield of the anatomy for the montage (:mod:`esikit.head.forward`) and
writes ``fwd`` with ``ch_names`` and ``ch_pos``.

``esikit forward OUT --montage M [--channels ...] --attach FILE`` writes FILE's leadfield
(a plain DeepSIF ``fwd`` file) or checkpoint (``.pt``) again with the montage's channel
names and positions, the rows taken to be the montage's channels in order.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _channel_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.replace(";", ",").split(",") if c.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--channels: expected comma-separated channel names")
    return names


def add_parser(sub) -> None:
    """Add the ``forward`` sub-command to an ``argparse`` sub-parser set."""
    p = sub.add_parser("forward", help="leadfield for an electrode cap (MNE forward model), or attach a montage",
                       description="Compute a region leadfield for an electrode cap with MNE-Python, or "
                                   "attach a montage's channel names and positions to a leadfield or checkpoint.")
    p.add_argument("out", help="leadfield file to write (.mat, or .npz); with --attach a .pt for a checkpoint")
    p.add_argument("--montage", required=True,
                   help="a montage MNE ships (standard_1020, biosemi64, GSN-HydroCel-128, ...), a montage file "
                        "MNE reads, an EEGLAB channel struct (.mat) or a recording with channel positions")
    p.add_argument("--channels", type=_channel_list, default=None,
                   help="comma-separated subset of the montage's channels, in this order")
    p.add_argument("--anatomy", default="default",
                   help="'default' (tvb-data) or a DeepSIF anatomy folder (fsaverage5 template)")
    p.add_argument("--head-model", choices=("bem", "sphere"), default="bem",
                   help="three-layer boundary-element model (default) or MNE's fitted three-shell sphere")
    p.add_argument("--ico", type=int, default=4, choices=(2, 3, 4, 5),
                   help="icosahedral subdivision of the BEM layers (4: 2562 vertices each; 3 is 10x faster)")
    p.add_argument("--attach", default=None, metavar="FILE",
                   help="instead of computing: write FILE's leadfield or checkpoint to OUT with the montage's "
                        "channel names and positions")
    p.set_defaults(func=run_forward)


def _attach(args: argparse.Namespace, names: list[str], pos) -> int:
    from ..io.forward_model import ForwardModel, load_forward_model, montage_dict, save_forward_model

    src = Path(args.attach)
    if src.suffix == ".pt":
        from ..constants import SFREQ_HZ
        from ..train.checkpoint import load_checkpoint, save_checkpoint

        state = load_checkpoint(src)
        n_ch = (state.get("data") or {}).get("n_channels") or (state.get("model_config") or {}).get("n_channels")
        if n_ch is not None and int(n_ch) != len(names):
            raise SystemExit(f"error: {src}: the network takes {n_ch} channels but the montage gives {len(names)}; "
                             "pick its channels in training order with --channels")
        old = state.get("montage") or {}
        state["montage"] = {**montage_dict(names, pos), "sfreq": float(old.get("sfreq") or SFREQ_HZ)}
        save_checkpoint(state, args.out)
        print(f"wrote {args.out}: checkpoint with montage of {len(names)} channels")
        return 0
    model = load_forward_model(src)
    if model.n_channels != len(names) and model.n_regions == len(names) and model.ch_names is None:
        # A plain file with more channels than regions: the montage says which side is which.
        model = load_forward_model(src, n_regions=model.n_channels)
    if model.n_channels != len(names):
        raise SystemExit(f"error: {src}: the leadfield has {model.n_channels} rows but the montage gives "
                         f"{len(names)} channels; pick them in row order with --channels")
    save_forward_model(args.out, ForwardModel(model.fwd, names, pos))
    print(f"wrote {args.out}: fwd {model.n_channels} x {model.n_regions} with channel names and positions")
    return 0


def run_forward(args: argparse.Namespace) -> int:
    """Run ``esikit forward`` (see the module docstring)."""
    from ..head import load_anatomy
    from ..head.forward import make_forward_model, read_montage
    from ..io.forward_model import save_forward_model

    try:
        if args.attach is not None:
            names, pos = read_montage(args.montage, args.channels)
            return _attach(args, names, pos)
        anatomy = load_anatomy(args.anatomy)
        model, info = make_forward_model(anatomy, args.montage, args.channels, head_model=args.head_model,
                                         grade=args.ico)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    save_forward_model(args.out, model)
    fit = (f"fitted by {info['n_shared']} shared names (rms {info['fit_rms_mm']:.1f} mm)"
           if info["method"] == "names" else "placed by the head -> MRI transform")
    print(f"wrote {args.out}: fwd {model.n_channels} x {model.n_regions} ({anatomy.name}, {info['head']} head, "
          f"{info['head_model']}), electrodes {fit}; {info['n_sources']} sources"
          + (f", {info['n_dropped']} dropped" if info["n_dropped"] else ""))
    print(f"use it with FWD_MATRIX_PATH = {str(Path(args.out))!r}")
    return 0
