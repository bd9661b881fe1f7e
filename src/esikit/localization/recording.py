"""Reading recordings and matching their channels to a network's montage.

One implementation of channel matching serves both :func:`esikit.localize` and
``esikit noise-bank``: names are compared case-insensitively after dropping the usual
decorations (``EEG Fp1-REF`` is ``Fp1``), with the classic 10-20 aliases (T3 = T7,
T4 = T8, T5 = P7, T6 = P8, A1 = M1, A2 = M2); a dual name such as ``T7/T3`` (tvb-data's
cap) matches either half. A few missing channels (the file lacks them
or marks them bad) are interpolated by MNE's spherical splines; more is an error that
lists them; channels the montage does not use are dropped and listed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import SFREQ_HZ

logger = logging.getLogger(__name__)

__all__ = [
    "ChannelMatch",
    "Montage",
    "canonical_channel_name",
    "match_channels",
    "montage_from_checkpoint",
    "montage_from_spec",
    "read_recording",
    "conform_channels",
    "standard_positions",
]

#: Old 10-20 names and their 10-10 equivalents (both directions are accepted).
CHANNEL_ALIASES: dict[str, str] = {"t3": "t7", "t4": "t8", "t5": "p7", "t6": "p8", "a1": "m1", "a2": "m2"}

#: Default share of montage channels that may be missing and interpolated.
MAX_MISSING = 0.10

_PREFIX = re.compile(r"^(eeg)[\s:_-]*", re.IGNORECASE)
_SUFFIX = re.compile(r"[\s_-]+(ref|le|ar|avg|average|a1a2|m1m2|a1|a2|m1|m2|cz)$", re.IGNORECASE)


def canonical_channel_name(name: str) -> str:
    """The name used to compare channels: lower case, decorations removed, aliases resolved.

    Examples
    --------
    >>> canonical_channel_name("EEG T3-REF")
    't7'
    >>> canonical_channel_name("FP1")
    'fp1'
    """
    n = str(name).strip()
    n = _PREFIX.sub("", n) if len(_PREFIX.sub("", n)) else n
    n = _SUFFIX.sub("", n) if len(_SUFFIX.sub("", n)) else n
    n = n.strip().lower()
    return CHANNEL_ALIASES.get(n, n)


def _name_keys(name: str) -> list[str]:
    """Canonical forms a name matches: the whole name, then each half of a dual name ("T7/T3")."""
    keys = [canonical_channel_name(name)]
    parts = [p for p in str(name).split("/") if p.strip()]
    if len(parts) > 1:
        keys += [k for k in (canonical_channel_name(p) for p in parts) if k not in keys]
    return keys


def _standard_montage():
    import mne

    # MNE 1.13 renamed standard_1005 (Colin27 positions) to colin27_1005.
    names = mne.channels.get_builtin_montages()
    return mne.channels.make_standard_montage("colin27_1005" if "colin27_1005" in names else "standard_1005")


def standard_positions(names: Sequence[str], montage: Any = None) -> np.ndarray:
    """Positions of channels in a standard MNE montage, NaN where the name is unknown.

    Parameters
    ----------
    names : sequence of str
        Channel names (compared with :func:`canonical_channel_name`).
    montage : str | mne.channels.DigMontage | None
        A built-in montage name or a montage; default MNE's 10-05 montage.

    Returns
    -------
    pos : ndarray, shape (n_channels, 3)
        Head coordinates in metres.
    """
    import mne

    if montage is None:
        montage = _standard_montage()
    elif isinstance(montage, str):
        montage = mne.channels.make_standard_montage(montage)
    ch_pos = montage.get_positions()["ch_pos"]
    lookup = {canonical_channel_name(k): np.asarray(v, dtype=float) for k, v in ch_pos.items()}
    out = np.full((len(names), 3), np.nan)
    for i, n in enumerate(names):
        p = lookup.get(canonical_channel_name(n))
        if p is not None:
            out[i] = p
    return out


@dataclass
class Montage:
    """The channels a network expects, in its input order.

    Parameters
    ----------
    ch_names : list of str, length C
        Channel names in the order of the leadfield's rows (the network's inputs).
    ch_pos : ndarray, shape (C, 3) | None
        Positions in metres (head coordinates); needed only to interpolate missing
        channels. ``None``: taken from MNE's standard 10-05 montage when needed.
    sfreq : float
        Sampling rate of the training data in Hz.
    source : str
        Where the montage came from (for messages).
    """

    ch_names: list[str]
    ch_pos: np.ndarray | None = None
    sfreq: float = SFREQ_HZ
    source: str = "montage"

    def __post_init__(self) -> None:
        self.ch_names = [str(c) for c in self.ch_names]
        if self.ch_pos is not None:
            pos = np.asarray(self.ch_pos, dtype=float)
            if pos.shape != (len(self.ch_names), 3):
                raise ValueError(f"{self.source}: field 'ch_pos' has shape {pos.shape}, expected "
                                 f"({len(self.ch_names)}, 3) (one position per channel name, metres)")
            self.ch_pos = pos
        self.sfreq = float(self.sfreq)
        if not self.sfreq > 0:
            raise ValueError(f"{self.source}: field 'sfreq' is {self.sfreq}, expected a positive rate in Hz")

    def positions(self) -> np.ndarray:
        """Channel positions in metres, from ``ch_pos`` or MNE's standard montage (NaN if unknown)."""
        if self.ch_pos is not None and np.isfinite(self.ch_pos).all():
            return self.ch_pos
        std = standard_positions(self.ch_names)
        if self.ch_pos is not None:  # fill only the unknown rows
            std = np.where(np.isfinite(self.ch_pos), self.ch_pos, std)
        return std


_MONTAGE_HELP = ("attach one with --montage LEADFIELD (a leadfield file that stores 'ch_names') or "
                 "--montage NAME:CH1,CH2,... (an MNE montage name such as standard_1020 and the channel "
                 "names in the leadfield's row order; NAME:FILE.txt reads one name per line); in Python "
                 "pass montage=Montage(ch_names, ch_pos, sfreq) or montage='standard_1020:Fp1,...'")


def montage_from_spec(spec: Any, n_channels: int | None = None, sfreq: float = SFREQ_HZ) -> Montage:
    """A :class:`Montage` from a user's ``--montage`` value.

    Parameters
    ----------
    spec : Montage | str | PathLike | sequence of str
        A :class:`Montage`; a leadfield file with channel names (read by
        :func:`esikit.io.forward_model.load_forward_model`); ``"NAME:CH1,CH2,..."`` or
        ``"NAME:names.txt"`` (an MNE montage name for the positions and the channel
        names in input order); or a list of channel names (positions from MNE's 10-05
        montage).
    n_channels : int, optional
        The network's input channels; a montage of another size is an error.
    sfreq : float
        Sampling rate of the training data (Hz) when the spec does not give one.

    Returns
    -------
    Montage
    """
    import mne

    if isinstance(spec, Montage):
        mont = spec
    elif isinstance(spec, (list, tuple)):
        mont = Montage(list(spec), None, sfreq, source="channel list")
    else:
        text = str(spec)
        path = Path(text)
        if path.is_file():
            from ..io.forward_model import load_forward_model

            fm = load_forward_model(path)
            if not getattr(fm, "ch_names", None):
                raise ValueError(f"{path}: the leadfield file has no channel names (field 'ch_names'); "
                                 f"{_MONTAGE_HELP}")
            mont = Montage(list(fm.ch_names), getattr(fm, "ch_pos", None), sfreq, source=str(path))
        elif ":" in text:
            name, chans = text.split(":", 1)
            try:
                std = mne.channels.make_standard_montage(name)
            except ValueError as exc:
                raise ValueError(f"Invalid value for 'montage': {name!r} is not an MNE montage name "
                                 f"(expected one of {', '.join(mne.channels.get_builtin_montages())})") from exc
            chan_path = Path(chans)
            if chan_path.is_file():
                names = [ln.strip() for ln in chan_path.read_text().splitlines() if ln.strip()]
            else:
                names = [c.strip() for c in chans.split(",") if c.strip()]
            pos = standard_positions(names, std)
            unknown = [n for n, p in zip(names, pos) if not np.isfinite(p).all()]
            if unknown:
                logger.warning("montage %s has no position for %s; interpolation will not use them",
                               name, unknown)
            mont = Montage(names, pos, sfreq, source=f"montage {name}")
        else:
            raise ValueError(f"Invalid value for 'montage': {text!r} is neither a file nor NAME:CHANNELS; "
                             f"{_MONTAGE_HELP}")
    if n_channels is not None and len(mont.ch_names) != n_channels:
        raise ValueError(f"{mont.source}: {len(mont.ch_names)} channel names, but the network takes "
                         f"{n_channels} input channels")
    return mont


def montage_from_checkpoint(state: dict[str, Any], path: str | PathLike = "checkpoint",
                            override: Any = None, n_channels: int | None = None) -> Montage:
    """The montage a checkpoint was trained with (``state["montage"]``), or ``override``.

    Raises
    ------
    ValueError
        When the checkpoint records no channel names and no override is given; the
        message says how to attach one.
    """
    info = state.get("montage") or {}
    sfreq = float(info.get("sfreq") or SFREQ_HZ)
    if override is not None:
        return montage_from_spec(override, n_channels, sfreq)
    names = info.get("ch_names")
    if not names:
        raise ValueError(f"{path}: the checkpoint has no channel montage (state['montage']['ch_names'] "
                         f"is missing), so recorded channels cannot be matched to the network's inputs; "
                         f"{_MONTAGE_HELP}")
    pos = info.get("ch_pos")
    mont = Montage(list(names), None if pos is None else np.asarray(pos, dtype=float), sfreq, source=str(path))
    if n_channels is not None and len(mont.ch_names) != n_channels:
        raise ValueError(f"{path}: montage has {len(mont.ch_names)} channel names, but the network takes "
                         f"{n_channels} input channels")
    return mont


@dataclass
class ChannelMatch:
    """How a recording's channels map onto a montage.

    Attributes
    ----------
    target_names : list of str
        The montage's channels, in input order.
    source_of : dict
        ``target name -> recording name`` for every montage channel found (and not bad).
    missing : list of str
        Montage channels the recording lacks or marks bad (to interpolate).
    bad : list of str
        The subset of ``missing`` that the recording has but marks bad.
    extra : list of str
        Recording channels the montage does not use (dropped).
    """

    target_names: list[str]
    source_of: dict[str, str]
    missing: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def renamed(self) -> dict[str, str]:
        """``recording name -> montage name`` where the two differ."""
        return {s: t for t, s in self.source_of.items() if s != t}


def match_channels(rec_names: Sequence[str], target_names: Sequence[str], *, bads: Sequence[str] = (),
                   max_missing: float = MAX_MISSING, source: str = "recording",
                   target_source: str = "montage") -> ChannelMatch:
    """Match a recording's channel names to a montage's.

    Parameters
    ----------
    rec_names : sequence of str
        The recording's channel names.
    target_names : sequence of str
        The montage's names (the network's input order).
    bads : sequence of str
        Recording channels marked bad: treated as missing.
    max_missing : float
        Largest share of montage channels that may be missing (0.1 = 10 %).
    source, target_source : str
        Names for messages (file paths).

    Returns
    -------
    ChannelMatch

    Raises
    ------
    ValueError
        No channel in common (the message lists both sets), or more than ``max_missing``
        missing (the message lists them).
    """
    rec_names = [str(n) for n in rec_names]
    bad_set = {str(b) for b in bads}
    by_canon: dict[str, list[str]] = {}
    for n in rec_names:
        for key in _name_keys(n):
            by_canon.setdefault(key, []).append(n)
    source_of: dict[str, str] = {}
    missing: list[str] = []
    bad: list[str] = []
    used: set[str] = set()
    for t in target_names:
        keys = _name_keys(t)
        cands = list(dict.fromkeys(c for k in keys for c in by_canon.get(k, []) if c not in used))
        # prefer a good channel over a bad one, the literal name (case-insensitive) over an
        # alias, a whole name over one half of a dual name such as "T7/T3"
        cands.sort(key=lambda c: (c in bad_set, c.lower() != str(t).lower(),
                                  canonical_channel_name(c) != keys[0]))
        if not cands:
            missing.append(str(t))
            continue
        used.add(cands[0])
        if cands[0] in bad_set:
            bad.append(str(t))
            missing.append(str(t))
        else:
            source_of[str(t)] = cands[0]
    extra = [n for n in rec_names if n not in used]
    if not source_of and not bad:
        raise ValueError(f"{source}: no channel name matches the {target_source}'s channels.\n"
                         f"  recording ({len(rec_names)}): {', '.join(rec_names)}\n"
                         f"  {target_source} ({len(target_names)}): {', '.join(map(str, target_names))}")
    n = len(target_names)
    limit = int(np.floor(max_missing * n + 1e-9))
    if len(missing) > limit:
        bad_note = f" (of which marked bad in the file: {', '.join(bad)})" if bad else ""
        raise ValueError(f"{source}: {len(missing)} of the {target_source}'s {n} channels are missing or bad, "
                         f"more than the {max_missing:.0%} ({limit}) that may be interpolated: "
                         f"{', '.join(missing)}{bad_note}. Recording channels: {', '.join(rec_names)}")
    return ChannelMatch(list(map(str, target_names)), source_of, missing, bad, extra)


def conform_channels(inst: Any, montage: Montage, *, max_missing: float = MAX_MISSING,
                     source: str = "recording") -> tuple[Any, ChannelMatch]:
    """Pick, rename and reorder an MNE object's channels to the montage; interpolate missing ones.

    Parameters
    ----------
    inst : mne.io.Raw | mne.Epochs | mne.Evoked
        Preloaded; modified in place (pass a copy to keep the original).
    montage : Montage
        Target channels.
    max_missing : float
        See :func:`match_channels`.

    Returns
    -------
    inst : same type
        Exactly ``montage.ch_names`` in order, all of type EEG, no bad channels.
    match : ChannelMatch
    """
    import mne

    match = match_channels(inst.ch_names, montage.ch_names, bads=inst.info["bads"], max_missing=max_missing,
                           source=source, target_source=montage.source)
    if match.extra:
        logger.warning("%s: dropping %d channels the network does not use: %s", source, len(match.extra),
                       ", ".join(match.extra))
    keep = list(match.source_of.values())
    inst.info["bads"] = []
    inst.pick(keep)
    inst.rename_channels({s: t for s, t in match.renamed.items()})
    inst.set_channel_types({t: "eeg" for t in inst.ch_names}, on_unit_change="ignore")
    if match.missing:
        pos = montage.positions()
        no_pos = [n for n, p in zip(montage.ch_names, pos) if not np.isfinite(p).all()]
        if no_pos:
            raise ValueError(f"{source}: cannot interpolate {', '.join(match.missing)}: no position for "
                             f"{', '.join(no_pos)} (neither in the montage nor in MNE's 10-05 montage); "
                             "pass a montage with positions")
        logger.warning("%s: interpolating %d missing or bad channels by spherical splines: %s", source,
                       len(match.missing), ", ".join(match.missing))
        info = mne.create_info(match.missing, inst.info["sfreq"], "eeg")
        shape = inst.get_data().shape if not isinstance(inst, mne.io.BaseRaw) else (len(inst.times),)
        with info._unlock():
            info["meas_date"] = inst.info["meas_date"]
        if isinstance(inst, mne.io.BaseRaw):
            zeros = mne.io.RawArray(np.zeros((len(match.missing), shape[0])), info,
                                    first_samp=inst.first_samp, verbose="error")
        elif isinstance(inst, mne.Evoked):
            zeros = mne.EvokedArray(np.zeros((len(match.missing), shape[-1])), info, tmin=inst.times[0],
                                    nave=inst.nave, verbose="error")
        else:
            zeros = mne.EpochsArray(np.zeros((shape[0], len(match.missing), shape[-1])), info,
                                    events=inst.events, tmin=inst.times[0], event_id=inst.event_id,
                                    verbose="error")
        inst.add_channels([zeros], force_update_info=True)
    inst.reorder_channels(montage.ch_names)
    pos = montage.positions()
    if np.isfinite(pos).all():
        dig = mne.channels.make_dig_montage(ch_pos=dict(zip(montage.ch_names, pos)), coord_frame="head")
        inst.set_montage(dig, on_missing="ignore")
    if match.missing:
        inst.info["bads"] = list(match.missing)
        inst.interpolate_bads(reset_bads=True, mode="accurate", origin="auto", verbose="error")
    return inst, match


def _read_mat_windows(path: Path, montage: Montage | None) -> Any:
    """DeepSIF's ``data*.mat``: field ``data``, T x C (or K x T x C), channels in leadfield order."""
    import mne

    from ..io import load_mat_file

    d = load_mat_file(path)
    if "data" not in d:
        raise ValueError(f"{path}: no field 'data' (expected DeepSIF's window layout, T x C or K x T x C); "
                         f"fields are {sorted(k for k in d if not k.startswith('__'))}")
    data = np.asarray(d["data"], dtype=np.float64)
    if data.ndim == 2:
        data = data[None]
    if montage is None:
        raise ValueError(f"{path}: a .mat window file has no channel names; it needs the checkpoint's montage")
    n_ch = len(montage.ch_names)
    if data.ndim != 3 or data.shape[2] != n_ch:
        raise ValueError(f"{path}: field 'data' has shape {np.asarray(d['data']).shape}, expected (T, C) or "
                         f"(K, T, C) with C={n_ch} channels in the leadfield's order")
    info = mne.create_info(montage.ch_names, montage.sfreq, "eeg")
    n_times = data.shape[1]
    events = np.column_stack([np.arange(len(data)) * n_times, np.zeros(len(data), int), np.ones(len(data), int)])
    # centre t = 0 in the window so "the window around t = 0" is the whole window
    return mne.EpochsArray(data.transpose(0, 2, 1), info, events=events, tmin=-(n_times // 2) / montage.sfreq,
                           verbose="error")


def read_recording(path: str | PathLike, montage: Montage | None = None) -> Any:
    """Read a recording: anything MNE reads, or DeepSIF's ``data*.mat`` windows.

    Parameters
    ----------
    path : str | PathLike
        EDF/BDF, BrainVision (``.vhdr``), EEGLAB (``.set``), FIF (raw, ``-epo.fif``
        epochs, ``-ave.fif`` evoked), ... or a ``.mat`` file with field ``data``
        (T x C or K x T x C, channels in the montage's order, at its rate).
    montage : Montage, optional
        Needed for ``.mat`` windows (channel names and rate).

    Returns
    -------
    mne.io.Raw | mne.Epochs | mne.Evoked
        Preloaded.
    """
    import mne

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such recording")
    name = path.name.lower()
    if name.endswith(".mat"):
        return _read_mat_windows(path, montage)
    if name.endswith(("-epo.fif", "_epo.fif", "-epo.fif.gz")):
        return mne.read_epochs(path, preload=True, verbose="error")
    if name.endswith(("-ave.fif", "_ave.fif", "-ave.fif.gz")):
        return mne.read_evokeds(path, condition=0, verbose="error")
    try:
        return mne.io.read_raw(path, preload=True, verbose="error")
    except Exception as exc:  # noqa: BLE001 - say which file and what MNE said
        raise ValueError(f"{path}: MNE could not read it as a recording ({type(exc).__name__}: {exc})") from exc
