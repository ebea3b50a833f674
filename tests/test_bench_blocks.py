"""graphc.bench.time_in_blocks: both halves in opposite engine orders, and an idle pause before every block so
that the engine timed before does not leave its spinning threads on the next one's calls."""

from __future__ import annotations

import graphc.bench as gb


def test_every_block_starts_after_the_same_idle_pause(monkeypatch):
    events = []
    monkeypatch.setattr(gb.time, "sleep", lambda s: events.append(("sleep", s)))
    samples = gb.time_in_blocks([lambda: events.append("a"), lambda: events.append("b")], repeat=4, warmup=1,
                                settle=0.25)
    assert [len(s) for s in samples] == [4, 4]
    blocks = []
    for e in events:
        if isinstance(e, tuple):
            assert e == ("sleep", 0.25)
            blocks.append([])
        else:
            blocks[-1].append(e)
    # four blocks (a, b, then b, a), each of warmup + half the repeats, each after its own pause
    assert blocks == [["a"] * 3, ["b"] * 3, ["b"] * 3, ["a"] * 3]


def test_no_pause_when_settle_is_zero(monkeypatch):
    slept = []
    monkeypatch.setattr(gb.time, "sleep", slept.append)
    gb.time_in_blocks([lambda: None], repeat=2, warmup=0, settle=0)
    assert slept == []
    assert gb.SETTLE_SECONDS > 0.04  # longer than onnxruntime's ~40 ms of spinning after a run
