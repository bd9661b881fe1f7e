"""The clip driver (esikit.simulate.distributed): fixed-duration clips, Dask connection."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from esikit.head.anatomy import load_default_anatomy
from esikit.io import load_mat_file
from esikit.simulate.distributed import connect_scheduler, make_spike_clips


def clip_fingerprints(nmm_dir) -> dict[str, str]:
    """``a{r}/nmm_{k}.mat`` -> sha256 (16 hex digits) of its ``data`` array (float32, 500 x R)."""
    out = {}
    for p in sorted(nmm_dir.glob("a*/nmm_*.mat")):
        data = np.ascontiguousarray(load_mat_file(p)["data"])
        assert data.dtype == np.float32 and data.shape[0] == 500
        out[f"{p.parent.name}/{p.name}"] = hashlib.sha256(data.tobytes()).hexdigest()[:16]
    return out


#: Recorded with the per-region driver esikit had before issue 11 (``make_spike_clips``
#: over ``make_region_clips``: one exact-mode simulation per (region, setting) seeded
#: ``[seed, region, setting]``, recording-wide rescaling). Region 48 has a clip in
#: setting 2 only, region 60 in all three (numbered across settings).
DURATION_CLIPS = {
    "a48/nmm_1.mat": "ffd87d9ef44790ac",
    "a60/nmm_1.mat": "fe67ff310f27fcfd", "a60/nmm_2.mat": "51786c78e109000b",
    "a60/nmm_3.mat": "09a414a61b00c659", "a60/nmm_4.mat": "cc13aef45ac25464",
    "a60/nmm_5.mat": "472d4a5bc96210ef",
}
DURATION_KW = dict(regions=[48, 60], duration_s=6.0, settings=(0, 1, 2), seed=3, n_workers=1,
                   progress=False)


def test_duration_clips_bit_identical_and_resumable(tmp_path):
    anat = load_default_anatomy()
    out = tmp_path / "nmm_spikes"
    res = make_spike_clips(anat, out, **DURATION_KW)
    assert clip_fingerprints(out) == DURATION_CLIPS
    assert [res[48].clips_per_setting, res[60].clips_per_setting] == [[0, 0, 1], [2, 1, 2]]
    assert [res[48].peaks_per_setting, res[60].peaks_per_setting] == [[0, 0, 1], [2, 1, 2]]
    assert res[60].alpha_per_setting[0] == pytest.approx(4.26198317107733, rel=1e-12)
    assert np.isnan(res[48].alpha_per_setting[0]) and res[48].simulated_s == 18.0
    assert not res[48].skipped and json.loads((out / "a48" / ".done").read_text())["n_clips"] == 1

    # a rerun skips the finished regions and touches no file
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("a*/*")}
    again = make_spike_clips(anat, out, **DURATION_KW)
    assert again[60].skipped and again[60].n_clips == 5
    assert again[60].clips_per_setting == [2, 1, 2]
    assert {p: p.stat().st_mtime_ns for p in out.glob("a*/*")} == mtimes
    assert not (out / ".harvest").exists()  # complete: the markers are the record

    # an interrupted region (no marker, a stale extra clip) is made again from scratch
    (out / "a48" / ".done").unlink()
    (out / "a48" / "nmm_9.mat").write_bytes(b"left by a killed run")
    redo = make_spike_clips(anat, out, **DURATION_KW)
    assert not redo[48].skipped and redo[60].skipped
    assert clip_fingerprints(out) == DURATION_CLIPS

    # a marker of other settings: the region is made again with these
    info = json.loads((out / "a60" / ".done").read_text())
    (out / "a60" / ".done").write_text(json.dumps({**info, "seed": 4}))
    again = make_spike_clips(anat, out, **{**DURATION_KW, "regions": [60]})
    assert not again[60].skipped and clip_fingerprints(out) == DURATION_CLIPS


def test_duration_clips_are_deepsif_rules_on_the_whole_recording(tmp_path):
    """The oracle: simulate_network's recording, find_spike_times + select_clips, one factor."""
    from esikit.simulate.nmm import simulate_network
    from esikit.simulate.spikes import (
        find_spike_times, rescale_spike_channel, select_clips, spike_alpha)

    anat = load_default_anatomy()
    region = 60
    res = make_spike_clips(anat, tmp_path, **{**DURATION_KW, "regions": [region]})[region]
    expected = []
    for setting in (0, 1, 2):
        raw = simulate_network(anat.weights, anat.tract_lengths, int(anat.node_of_region[region]),
                               6.0, setting=setting, seed=[3, region, setting], record_every=4,
                               dtype=np.float32)
        nmm = raw[250:][:, anat.node_of_region]
        times, regions = find_spike_times(nmm)
        spikes, starts = select_clips(times, regions, region, len(nmm))
        assert res.peaks_per_setting[setting] == int(np.sum(regions == region))
        alpha = spike_alpha(nmm, anat.fwd, region, spikes)
        assert res.alpha_per_setting[setting] == alpha
        scaled = rescale_spike_channel(nmm, region, spikes, alpha)
        expected += [scaled[s0:s0 + 500] for s0 in starts]
    files = [tmp_path / f"a{region}" / f"nmm_{k}.mat" for k in range(1, res.n_clips + 1)]
    assert len(files) == len(expected) == 5
    for f, clip in zip(files, expected):
        np.testing.assert_array_equal(load_mat_file(f)["data"], clip.astype(np.float32))


def test_duration_tasks_killed_resume(tmp_path, monkeypatch):
    """A run that dies part way leaves its finished chains; the rerun runs only the others."""
    import esikit.simulate.distributed as dist

    anat = load_default_anatomy()
    out = tmp_path / "nmm_spikes"
    real, calls = dist.run_chunk_task, []

    def task(spec):
        calls.append((spec["regions"], spec["setting"]))
        if (spec["regions"], spec["setting"]) == ([60], 1):
            raise RuntimeError("killed")
        return real(spec)

    monkeypatch.setattr(dist, "run_chunk_task", task)
    with pytest.raises(RuntimeError, match="killed"):
        make_spike_clips(anat, out, **DURATION_KW)
    assert not list(out.glob("a*/.done"))
    n_before = len(calls)
    monkeypatch.setattr(dist, "run_chunk_task", lambda spec: calls.append(spec["setting"]) or real(spec))
    make_spike_clips(anat, out, **DURATION_KW)
    assert calls[n_before:] == [1, 2]  # only (60, 1) and (60, 2) had not finished
    assert clip_fingerprints(out) == DURATION_CLIPS


@contextmanager
def _server(reply: bytes | None):
    """A TCP service on 127.0.0.1 that accepts and then says nothing (None) or ``reply``."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conns.append(conn)
            if reply is not None:
                try:
                    conn.sendall(reply)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        srv.close()
        for c in conns:
            c.close()


def _closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"tcp://127.0.0.1:{port}"


def test_closed_port_fails_at_once():
    import distributed  # noqa: F401  (imported before the clock starts: a loaded machine imports slowly)

    address = _closed_port()
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"Dask scheduler at '{address}': cannot connect"):
        connect_scheduler(address, timeout_s=10.0)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize("reply", [None, b"HTTP/1.1 200 OK\r\n\r\nnot dask" * 20, b"\x00" * 64],
                         ids=["silent", "http", "zeros"])
def test_service_that_is_not_dask_times_out_or_is_named(reply):
    with _server(reply) as address:
        t0 = time.perf_counter()
        with pytest.raises(ConnectionError, match=f"Dask scheduler at '{address}'") as info:
            connect_scheduler(address, timeout_s=1.0)
        assert time.perf_counter() - t0 < 5.0
    assert any(s in str(info.value) for s in ("no answer within 1 s", "does not speak Dask"))


def test_bad_address():
    with pytest.raises(ConnectionError, match="not an address"):
        connect_scheduler("nonsense://x", timeout_s=1.0)


def test_real_scheduler_connects():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        client = connect_scheduler(cluster.scheduler_address, timeout_s=10.0)
        try:
            assert client.submit(lambda x: x + 1, 1).result() == 2
        finally:
            client.close()


def test_cli_names_the_address(tmp_path, capsys):
    from esikit.commands.simulate import main

    with _server(None) as address:
        t0 = time.perf_counter()
        rc = main(["simulate", str(tmp_path / "ds"), "--regions", "3", "--settings", "0",
                   "--clips-per-region", "1", "--scheduler", address, "--scheduler-timeout", "1",
                   "--no-progress"])
        assert time.perf_counter() - t0 < 30.0
    out = capsys.readouterr().out
    assert rc == 2
    assert f"esikit simulate: error: Dask scheduler at '{address}': no answer within 1 s" in out
