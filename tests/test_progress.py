"""What lte-sr upscale shows while it works (lte_cuda.progress), driven as the pipeline does."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from lte_cuda import progress as progress_module
from lte_cuda.precision import Precision
from lte_cuda.progress import RunProgress

BF16 = Precision("bf16", None, "auto: this CPU computes bf16 natively (AVX512-BF16)")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_one_file(stream: io.StringIO, *, quiet: bool = False, files: int = 1) -> None:
    """A 100x50 -> 400x200 file decoded in ten chunks of 20 output rows."""
    run = RunProgress(files, quiet=quiet, stream=stream)
    shown = run.file(Path("in.png"), Path("out.png"), (100, 50), (400, 200), BF16)
    for chunk in range(1, 11):
        shown.update(chunk * 20 * 400, 200 * 400)
    shown.done()
    run.close()


def test_a_terminal_gets_a_bar_with_rows_and_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "BAR_DELAY_S", 0.0)
    monkeypatch.setattr(progress_module, "BAR_REFRESH_S", 0.0)
    stream = Terminal()
    run_one_file(stream)
    text = stream.getvalue()
    assert "in.png bf16 (auto: this CPU computes bf16 natively (AVX512-BF16))" in text
    assert "200/200" in text and "row/s" in text
    assert "[00:00<00:00" in text  # elapsed from the file's start, on tqdm's clock
    assert text.rstrip().endswith("in.png -> out.png: 100x50 -> 400x200 in 0.0 s, " + str(BF16))


def test_a_quick_file_shows_no_bar() -> None:
    stream = Terminal()
    run_one_file(stream)  # far below the bar's delay of a few seconds
    assert "row/s" not in stream.getvalue()
    assert stream.getvalue().count("\n") == 1


def test_a_log_gets_occasional_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "PLAIN_INTERVAL_S", 0.0)
    stream = io.StringIO()
    run_one_file(stream, files=3)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("lte-sr: [1/3] in.png: 10% (20/200 output rows), ")
    assert "s left, bf16 (auto:" in lines[0]
    assert len(lines) == 10  # nine partial lines (not at 100%) and the file's line
    assert "\r" not in stream.getvalue()


def test_quiet_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "PLAIN_INTERVAL_S", 0.0)
    for stream in (Terminal(), io.StringIO()):
        run_one_file(stream, quiet=True, files=2)
        assert stream.getvalue() == ""
