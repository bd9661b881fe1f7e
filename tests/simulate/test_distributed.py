"""Connecting to a Dask scheduler (esikit.simulate.distributed.connect_scheduler)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest

from esikit.simulate.distributed import connect_scheduler


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
