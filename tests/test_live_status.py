"""The terminal's live line: what it says while a round waits, and that it erases itself."""

from __future__ import annotations

import io

from flowerbed.server.live import LiveStatus
from flowerbed.server.records import RoundRecord


def record(round_: int) -> RoundRecord:
    return RoundRecord(
        round_, None, 3.0, 20.0, None, 0, 0.0, 0.0, 1.0, 4, 0, 0, 0, None, None, None
    )


def test_the_live_line_counts_answers_paces_the_run_and_erases_itself():
    out = io.StringIO()
    live = LiveStatus(rounds=6, stream=out)
    live.waiting(1, 4, 3.2)
    assert out.getvalue() == "\r  round 1/6: 1 of 4 answered, 3 s"  # no pace before a round ends
    live.on_round_trained(record(1))
    live.started -= 60  # round 1 took a minute
    live.waiting(2, 4, 10)
    assert "round 2/6: 2 of 4 answered, 10 s | run ends in ~5 min" in out.getvalue()
    live.clear()
    assert out.getvalue().endswith(
        "\r" + " " * len("  round 2/6: 2 of 4 answered, 10 s | run ends in ~5 min") + "\r"
    )
    live.on_round_trained(record(6))
    live.waiting(4, 4, 1)
    assert "final evaluation: 4 of 4 answered" in out.getvalue()


def test_no_live_line_off_a_terminal():
    assert LiveStatus.for_terminal(6, enabled=True) is None  # pytest's stdout is not a tty
    assert LiveStatus.for_terminal(6, enabled=False) is None
