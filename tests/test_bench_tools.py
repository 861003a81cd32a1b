"""The benchmark scripts' shared pieces: the load guard's verdict, paired ratios over rounds,
the runtime-result adapter, and the README tables being exactly what the committed JSON gives."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_rounds  # noqa: E402
import bench_worker  # noqa: E402
import engine_cache  # noqa: E402
import load_guard  # noqa: E402
import readme_tables  # noqa: E402


def test_readme_tables_match_the_committed_results():
    assert readme_tables.main(["--check"]) == 0


def _guard_with(monkeypatch, busy_delta: int, own_delta: int, wall: float) -> load_guard.LoadGuard:
    """One round in which the machine's busy jiffies grew by busy_delta and ours by own_delta."""
    clock = iter([0.0, wall])
    busy = iter([1000, 1000 + busy_delta])
    own = iter([500, 500 + own_delta])
    monkeypatch.setattr(load_guard.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(load_guard, "_busy_jiffies", lambda: next(busy))
    monkeypatch.setattr(load_guard, "_own_jiffies", lambda pids: next(own))
    monkeypatch.setattr(load_guard, "_HZ", 100)
    guard = load_guard.LoadGuard(max_foreign_cores=0.25)
    with guard.round([1234]):
        pass
    return guard


def test_own_cpu_time_is_not_counted_as_load(monkeypatch):
    # 10 s on 2 cores fully busy, all of it ours: quiet
    guard = _guard_with(monkeypatch, busy_delta=2000, own_delta=2000, wall=10.0)
    assert guard.rounds[0]["foreign_cores"] == 0.0
    assert not guard.noisy
    guard.check()


def test_a_busy_round_is_refused_unless_allowed(monkeypatch):
    # others took 600 jiffies in 10 s: 0.6 of a CPU on average
    guard = _guard_with(monkeypatch, busy_delta=2000, own_delta=1400, wall=10.0)
    assert guard.rounds[0]["foreign_cores"] == pytest.approx(0.6)
    assert guard.noisy_rounds == [0]
    with pytest.raises(load_guard.MachineBusy, match="round"):
        guard.check()
    assert "round(s) 0" in guard.refusal() and "\n" not in guard.refusal()
    guard.allow_noisy = True
    guard.check()
    assert guard.refusal() is None
    report = guard.stamp({"machine": {}, "versions": {}}, "scripts/x.py", [])
    assert report["noisy"] is True and report["load"]["noisy_rounds"] == [0]
    assert report["command"] == "python scripts/x.py"


def _contender(ttfts, decode_steps):
    c = bench_rounds.Contender("c", "ours", "none", None, {"new_tokens": 3})
    c.samples = [{"vision_s": t / 2, "prefill_s": t / 2, "decode_s": [d, d]} for t, d in zip(ttfts, decode_steps)]
    return c


def test_ratios_are_paired_within_rounds():
    a = _contender([1.0, 2.0, 3.0], [0.1, 0.1, 0.1])
    b = _contender([2.0, 8.0, 3.0], [0.2, 0.2, 0.1])
    r = bench_rounds.paired_ratio(a, b)
    assert r["ttft"] == {"median": 0.5, "min": 0.25, "max": 1.0}
    assert r["decode_tokens_per_s"]["median"] == pytest.approx(2.0)
    assert bench_rounds.stats([3.0, 1.0, 2.0])["median"] == 2.0


def test_runtime_timings_adapter_reads_dicts_and_typed_results():
    class Typed:
        vision_s, prefill_s, decode_s = 0.1, 0.2, (0.01, 0.02)

    class Gen:
        def __init__(self, timings):
            self.timings = timings

    want = {"vision_s": 0.1, "prefill_s": 0.2, "decode_s": [0.01, 0.02]}
    assert bench_worker.generation_timings(Gen(dict(want, ttft_s=0.3))) == want
    assert bench_worker.generation_timings(Gen(Typed())) == want


def test_cached_engines_are_rebuilt_when_the_exporter_changed(tmp_path, monkeypatch):
    """A benchmark's engine directory is reused only if the code that wrote it is this code."""
    for top in engine_cache.SOURCES:
        (tmp_path / top).mkdir(parents=True)
    (tmp_path / "exporter" / "graph.py").write_text("A = 1\n")
    first = engine_cache.source_fingerprint(tmp_path)
    assert engine_cache.source_fingerprint(tmp_path) == first
    (tmp_path / "exporter" / "graph.py").write_text("A = 2\n")
    assert engine_cache.source_fingerprint(tmp_path) != first

    code = iter(["v1", "v1", "v2"])
    monkeypatch.setattr(engine_cache, "source_fingerprint", lambda: next(code))
    builds = []

    def build():
        out.mkdir()
        (out / "config.json").write_text("{}")
        builds.append(1)

    out = tmp_path / "engines" / "tiny"
    out.parent.mkdir()
    for _ in range(3):  # built, reused, rebuilt after the code changed
        assert engine_cache.cached_build(out, build) == out
    assert len(builds) == 2 and (out.parent / "tiny.source").read_text() == "v2\n"


def test_profile_decoder_runs_an_inplace_engine_bound(engine, tmp_path):
    """The profiler drives the default (in-place cache) decoder as the runtime does: buffers bound,
    no TensorScatter copy; the KV groups are named, and concat-only variants are refused."""
    import json

    import profile_decoder

    out = tmp_path / "profile.json"
    assert profile_decoder.main([str(engine), "--prefill", "50", "--decode-at", "60", "--reps", "1",
                                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    groups = {g["group"] for g in report["profile"]["decode at 60"]["groups"]}
    assert "KV cache: TensorScatter write (in place)" in groups
    assert "KV cache: Slice of the first T positions (a copy)" in groups
    assert set(report["variants"]["decode at 60"]) == {"as built", "basic-opt", "no-spin"}
    assert profile_decoder.main([str(engine), "--variants", "no-identity", "--out", str(out)]) == 2
