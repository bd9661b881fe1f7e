"""Tests of adaptive clip harvesting (esikit.simulate.harvest, .distributed, .plan)."""

from __future__ import annotations

import re
import json

import numpy as np
import pytest

from esikit.head.anatomy import load_default_anatomy
from esikit.simulate.distributed import harvest_clips
from esikit.simulate.spikes import ClipStream, find_spike_times, select_clips
from tests.simulate.test_distributed import clip_fingerprints

REGIONS = [0, 1, 3, 48]
KW = dict(clips_per_region=2, regions=REGIONS, settings=(0,), chunk_s=2.0, max_simulated_s=8.0,
          progress=False, processes=False)


def _clips(nmm_dir):
    out = {}
    from esikit.io import load_mat_file

    for r in REGIONS:
        files = sorted((nmm_dir / f"a{r}").glob("nmm_*.mat"), key=lambda p: int(p.stem[4:]))
        out[r] = [np.asarray(load_mat_file(p)["data"]) for p in files]
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "nmm_spikes"
    report = harvest_clips(load_default_anatomy(), out, n_workers=1, batch_size=1, **KW)
    return out, report


def _same(a_dir, a_rep, b_dir, b_rep):
    for key in ("clips_per_region", "simulated_s_per_region", "capped_variants", "n_clips"):
        assert a_rep[key] == b_rep[key], key
    ca, cb = _clips(a_dir), _clips(b_dir)
    for r in REGIONS:
        assert len(ca[r]) == len(cb[r])
        for x, y in zip(ca[r], cb[r]):
            np.testing.assert_array_equal(x, y)


def test_harvest_report_and_files(reference_run):
    out, rep = reference_run
    assert rep["complete"] and rep["n_clips"] >= 1
    clips = {int(r): n for r, n in rep["clips_per_region"].items()}
    assert set(clips) == set(REGIONS) and all(n <= 2 for n in clips.values())
    for r, n in clips.items():
        # a region stops at its share, or simulated the whole cap
        assert n == 2 or rep["simulated_s_per_region"][str(r)] == 8.0
        assert [r, 0] in rep["capped_variants"] or n == 2
    assert rep["regions_below_target"] == [r for r in REGIONS if clips[r] < 2]
    assert rep["bytes_on_disk"] == sum(p.stat().st_size for p in out.glob("a*/nmm_*.mat"))
    assert (out.parent / "clips_per_region.png").stat().st_size > 0
    assert json.loads((out.parent / "harvest_report.json").read_text())["n_clips"] == rep["n_clips"]
    first = next(iter(c for cs in _clips(out).values() for c in cs))
    assert first.shape == (500, 76) and first.dtype == np.float32
    # a rerun finds everything done and simulates nothing
    again = harvest_clips(load_default_anatomy(), out, n_workers=1, batch_size=1, **KW)
    assert again["tasks"] == 0 and again["clips_per_region"] == rep["clips_per_region"]
    with pytest.raises(ValueError, match="another configuration"):
        harvest_clips(load_default_anatomy(), out, **{**KW, "clips_per_region": 3})


def test_two_workers_and_batches_give_same_output(reference_run, tmp_path):
    ref_dir, ref = reference_run
    out = tmp_path / "nmm_spikes"
    rep = harvest_clips(load_default_anatomy(), out, n_workers=2, batch_size=3, **KW)
    _same(ref_dir, ref, out, rep)


def _fail_after(monkeypatch, batch, setting, chunk):
    """Make task (batch, setting, chunk) die after writing its outputs (as if killed)."""
    import esikit.simulate.distributed as dist

    real = dist.run_chunk_task

    def task(spec):
        res = real(spec)
        if (spec["batch"], spec["setting"], spec["chunk"]) == (batch, setting, chunk):
            raise RuntimeError("killed after writing")
        return res

    monkeypatch.setattr(dist, "run_chunk_task", task)


def test_crash_resumes_to_same_output(reference_run, tmp_path, monkeypatch):
    ref_dir, ref = reference_run
    out = tmp_path / "nmm_spikes"
    # a task dies after writing its clips and checkpoint, before reporting back (its retry too)
    _fail_after(monkeypatch, 0, 0, 1)
    with pytest.raises(RuntimeError, match="killed after writing"):
        harvest_clips(load_default_anatomy(), out, n_workers=2, batch_size=2, **KW)
    monkeypatch.undo()
    rep = harvest_clips(load_default_anatomy(), out, n_workers=2, batch_size=2, **KW)
    assert rep["complete"]
    _same(ref_dir, ref, out, rep)


# region 3 stops at chunk 3 (its clip found), region 48 runs on to chunk 5
KILL_KW = dict(clips_per_region=1, regions=[3, 48], settings=(2,), seed=5, chunk_s=2.0,
               max_simulated_s=12.0, batch_size=2, n_workers=1, progress=False, processes=False)


def test_first_rerun_after_kill_completes(tmp_path, monkeypatch):
    """Issue 10 case 14: variants that stopped before a kill count in the first rerun."""
    anat = load_default_anatomy()
    ref = harvest_clips(anat, tmp_path / "ref" / "nmm_spikes", **KILL_KW)
    assert ref["complete"] and ref["capped_variants"] == []
    # recorded before issue 11 (one driver): the K-clip harvest's clips do not change
    assert clip_fingerprints(tmp_path / "ref" / "nmm_spikes") == {
        "a3/nmm_1.mat": "fc49425083118ac2", "a48/nmm_1.mat": "7a0b9e6ad88ac448"}
    out = tmp_path / "run" / "nmm_spikes"
    _fail_after(monkeypatch, 0, 2, 4)
    with pytest.raises(RuntimeError, match="killed after writing"):
        harvest_clips(anat, out, **KILL_KW)
    monkeypatch.undo()
    chain = out / ".harvest" / "chains" / "b00000_s2"
    # the state a kill leaves: region 3 finished in an earlier chunk, the chain is not done
    assert json.loads((chain / "finished_000003.json").read_text()) != {}
    assert not (chain / "done.json").exists()
    rep = harvest_clips(anat, out, **KILL_KW)
    assert rep["complete"] and rep["tasks"] == 1
    assert rep["clips_per_region"] == ref["clips_per_region"] == {"3": 1, "48": 1}
    for r in (3, 48):
        from esikit.io import load_mat_file

        np.testing.assert_array_equal(load_mat_file(out / f"a{r}" / "nmm_1.mat")["data"],
                                      load_mat_file(tmp_path / "ref" / "nmm_spikes" / f"a{r}" / "nmm_1.mat")["data"])
    assert not list(chain.glob("chunk_*"))  # a finished chain keeps no checkpoint


def test_sigkill_then_one_rerun_completes(tmp_path):
    """A harvest process killed (SIGKILL) mid-chain: the first rerun finishes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "nmm_spikes"
    code = ("from esikit.head.anatomy import load_default_anatomy\n"
            "from esikit.simulate.distributed import harvest_clips\n"
            f"harvest_clips(load_default_anatomy(), {str(out)!r}, **{KILL_KW!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    chain = out / ".harvest" / "chains" / "b00000_s2"
    try:
        deadline = time.monotonic() + 120
        while not (chain / "finished_000003.json").exists():  # region 3 has stopped
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    rep = harvest_clips(load_default_anatomy(), out, **KILL_KW)
    assert rep["complete"] and rep["clips_per_region"] == {"3": 1, "48": 1}


class _Payload:
    """Unpickling this creates a marker file: stands for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_crafted_checkpoints_run_no_code_and_are_recomputed(tmp_path, caplog):
    """Issue 10 case 2: files planted in the checkpoint folder are never unpickled."""
    import pickle

    anat = load_default_anatomy()
    ref = harvest_clips(anat, tmp_path / "ref" / "nmm_spikes", **KILL_KW)
    out = tmp_path / "run" / "nmm_spikes"
    chain = out / ".harvest" / "chains" / "b00000_s2"
    chain.mkdir(parents=True)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    (chain / "chunk_000001.pkl").write_bytes(payload)       # the old format: ignored
    (chain / "chunk_000002.npz").write_bytes(payload)       # a pickle under the new name
    with caplog.at_level("WARNING", logger="esikit.simulate.distributed"):
        rep = harvest_clips(anat, out, **KILL_KW)
    assert not marker.exists()
    assert "chunk_000002.npz: not a readable checkpoint" in caplog.text
    assert "recomputing chain" in caplog.text
    assert rep["complete"] and rep["clips_per_region"] == ref["clips_per_region"]


def test_checkpoint_roundtrip_and_checks(tmp_path):
    from esikit.simulate.harvest import CheckpointError, read_checkpoint, write_checkpoint

    rng = np.random.default_rng(0)
    stream = ClipStream(region=3)
    stream.feed(rng.normal(1.0, 1.0, (700, 5)))
    state = {"y": rng.normal(size=(6, 7, 1)), "ring": rng.normal(size=(7, 4, 1)),
             "A": np.full((7, 1), 3.25), "step": 40}
    path = write_checkpoint(tmp_path / "chunk_000001.npz", [3], [stream], [2], state)
    assert [p.name for p in tmp_path.iterdir()] == ["chunk_000001.npz"]
    regions, streams, found, got = read_checkpoint(path, 7, 4, 5, 40, [1, 3])
    assert regions == [3] and found == [2] and got["step"] == 40
    np.testing.assert_array_equal(got["ring"], state["ring"])
    for k in ("buf", "peak_t", "peak_r", "buf_start", "scanned_to", "last_candidate", "pending",
              "n_peaks"):
        np.testing.assert_array_equal(getattr(streams[0], k), getattr(stream, k))
    # every problem named at once, with the file
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path, 8, 4, 6, 80, [1, 2])
    msg = str(info.value)
    assert msg.startswith(str(path))
    for part in ("field 'regions' is [3]", "field 'y' has shape (6, 7, 1), expected (6, 8, 1)",
                 "field 'step' is 40, expected 80", "field 's0_buf' has shape"):
        assert part in msg, part
    # object arrays need pickle: refused
    np.savez(tmp_path / "obj.npz", format=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "obj.npz", 7, 4, 5, 40, [3])
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cut.npz: not a readable checkpoint"):
        read_checkpoint(tmp_path / "cut.npz", 7, 4, 5, 40, [3])


def test_plan_extrapolates(tmp_path):
    from esikit.simulate.plan import format_plan, plan_harvest

    plan = plan_harvest(load_default_anatomy(), 10, regions=range(20), settings=(0, 1),
                        max_simulated_s=100.0, pilot_regions=2, pilot_s=2.0, n_cores=2)
    assert plan["pilot_regions"] == [0, 19]
    assert plan["expected_simulated_s"] <= 20 * 2 * 100.0
    assert plan["expected_wall_s"] == pytest.approx(
        plan["expected_simulated_s"] * plan["wall_s_per_network_s"] / 2)
    assert plan["raw_bytes_if_kept"] == pytest.approx(plan["expected_simulated_s"] * 2000 * 76 * 4)
    assert plan["bytes_per_clip"] > 1000
    lo, hi = plan["expected_wall_s_range"]
    assert lo <= plan["expected_wall_s"] <= hi and lo < hi
    assert plan["chunk_s"] == 5.0
    assert any("wall time on 2 cores" in line and "80 % interval" in line for line in format_plan(plan))


def test_cli_clips_per_region_makes_dataset(tmp_path, capsys):
    from esikit.commands.simulate import main

    out = tmp_path / "ds"
    rc = main(["simulate", str(out), "--regions", "3,48", "--settings", "0", "--clips-per-region", "1",
               "--max-simulated-s", "8", "--chunk-s", "2", "--workers", "1", "--n-train", "20",
               "--n-test", "5", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["config"]["harvest"] == {"clips_per_region": 1, "max_simulated_s": 8.0, "chunk_s": 2.0}
    assert (out / "source" / "train_sample_source1.mat").exists()
    assert (out / "clips_per_region.png").exists() and (out / "harvest_report.json").exists()
    assert "regions below 1 clips" in text and re.search(r"[\d.]+ (kB|MB|GB) of clips", text)
    # the same command again reuses the finished dataset
    assert main(["simulate", str(out), "--regions", "3,48", "--settings", "0", "--clips-per-region", "1",
                 "--max-simulated-s", "8", "--chunk-s", "2", "--workers", "1", "--n-train", "20",
                 "--n-test", "5", "--no-progress"]) == 0


def test_harvested_clips_are_those_of_the_whole_recording(tmp_path):
    """Rebuild one variant's recording from its seeds: the clips are DeepSIF's clips of it."""
    from esikit.io import load_mat_file
    from esikit.simulate.nmm import (
        BatchIntegrator, draw_initial_history, draw_noise, excited_A, network_structure)
    from esikit.simulate.harvest import variant_seed
    from esikit.simulate.nmm import JansenRitParams

    anat = load_default_anatomy()
    region, setting, seed = 48, 2, 5
    rep = harvest_clips(anat, tmp_path / "nmm_spikes", 1000, regions=[region], settings=(setting,),
                        seed=seed, chunk_s=2.0, max_simulated_s=12.0, n_workers=1,
                        processes=False, progress=False)
    assert rep["capped_variants"] == [[region, setting]]
    p = JansenRitParams().with_setting(setting)
    st = network_structure(anat.weights, anat.tract_lengths, p)
    hist = draw_initial_history(np.random.default_rng(variant_seed(seed, region, setting, -1)),
                                st.horizon, st.n_nodes)[None]
    integ = BatchIntegrator(st, excited_A(st.n_nodes, [anat.node_of_region[region]], p), p, hist)
    rec = []
    for chunk in range(6):
        rng = [np.random.default_rng(variant_seed(seed, region, setting, chunk))]
        for _ in range(8):
            rec.append(integ.advance(draw_noise(rng, 500, st.n_nodes), record_every=4)[0])
    nmm = np.concatenate(rec)[250:][:, anat.node_of_region]
    times, regions = find_spike_times(nmm)
    _, starts = select_clips(times, regions, region, len(nmm))
    files = sorted((tmp_path / "nmm_spikes" / f"a{region}").glob("nmm_*.mat"), key=lambda f: int(f.stem[4:]))
    assert len(files) == len(starts) >= 1
    others = np.arange(76) != region
    for f, s0 in zip(files, starts):
        clip = np.asarray(load_mat_file(f)["data"])
        # other regions untouched; the excited region rescaled around its spike only
        np.testing.assert_array_equal(clip[:, others], nmm[s0:s0 + 500, others])
        assert np.corrcoef(clip[:, region], nmm[s0:s0 + 500, region])[0, 1] > 0.5


#: sha256 (16 hex digits) of every array of the chain checkpoints (chunks 2 and 3) of
#: (regions [3, 48], setting 2, seed 5), recorded before issue 11: a harvest started with
#: the code of that time resumes from its checkpoints with this code to the same clips.
CHECKPOINTS = {
    "chunk_000002.npz": {
        "A": "b9dcdfad4b9ddeb7", "format": "d20cf7210800e218", "found": "374708fff7719dd5",
        "regions": "9e16d07585a491a6", "ring": "b6e5413a53e8a3a7", "s0_buf": "1edc2eafcdb1d3a1",
        "s0_ints": "1154633d721f84ec", "s0_peak_r": "35be322d094f9d15", "s0_peak_t": "8cafaef4f372c4af",
        "s0_pending": "8cafaef4f372c4af", "s1_buf": "52b843fff75533b7", "s1_ints": "e6805ea185c39c5f",
        "s1_peak_r": "e3b0c44298fc1c14", "s1_peak_t": "e3b0c44298fc1c14", "s1_pending": "e3b0c44298fc1c14",
        "step": "09e971d8fb56c004", "y": "5be7781dc0dac4d6"},
    "chunk_000003.npz": {
        "A": "d8ea8e51a6009ff5", "format": "d20cf7210800e218", "found": "af5570f5a1810b7a",
        "regions": "4779cee98e83f1a1", "ring": "7dfe0684af18ffda", "s0_buf": "c13c41f7347b2081",
        "s0_ints": "0f02778b6c8fe80f", "s0_peak_r": "e3b0c44298fc1c14", "s0_peak_t": "e3b0c44298fc1c14",
        "s0_pending": "e3b0c44298fc1c14", "step": "738bef8fedbaa70e", "y": "bcaad26d2c1d6475"},
}


def test_chunk_tasks_and_checkpoints_bit_identical(tmp_path):
    """The task function with the spec today's running harvests send: same files, same bytes."""
    import dataclasses
    import hashlib

    from esikit.io import load_mat_file
    from esikit.simulate.harvest import run_chunk_task
    from esikit.simulate.nmm import JansenRitParams

    def sha(a):
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]

    work = tmp_path / ".harvest"
    work.mkdir()
    load_default_anatomy().save(work / "anatomy.npz")
    # exactly the keys distributed.harvest_clips sent before issue 11
    spec = dict(work_dir=str(work), anatomy=str(work / "anatomy.npz"), batch=0, regions=[3, 48],
                setting=2, seed=5, params=dataclasses.asdict(JansenRitParams()), chunk_s=2.0, share=1,
                max_chunks=6, backend="numba", block=16, dt_ms=0.5, target_snr_db=15.0)
    results = [run_chunk_task(dict(spec, chunk=c)) for c in range(4)]
    assert [r["new_clips"] for r in results] == [0, 0, 0, 1]
    assert results[3]["finished"] == {3: {"clips": 1, "simulated_s": 8.0, "capped": False}}
    chain = work / "chains" / "b00000_s2"
    got = {}
    for p in sorted(chain.glob("chunk_*.npz")):
        with np.load(p, allow_pickle=False) as z:
            got[p.name] = {k: sha(z[k]) for k in sorted(z.files)}
    assert got == CHECKPOINTS
    assert [json.loads((chain / f"finished_{c:06d}.json").read_text()) for c in range(4)] == [
        {}, {}, {}, {"3": {"clips": 1, "simulated_s": 8.0, "capped": False}}]
    staged = sorted((work / "clips").rglob("*.mat"))
    assert [str(p.relative_to(work / "clips")) for p in staged] == ["a3/s2_c000003_000.mat"]
    assert sha(load_mat_file(staged[0])["data"]) == "fc49425083118ac2"
