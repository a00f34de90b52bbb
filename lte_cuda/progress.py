"""What ``lte-sr upscale`` tells the user while it works.

- A file that takes more than :data:`BAR_DELAY_S` seconds gets a progress bar on a terminal
  (output rows done, rate, time left, and the precision chosen with its reason); on a
  non-terminal stderr (a log file, a pipe) a plain line every :data:`PLAIN_INTERVAL_S` seconds.
- A folder gets an overall bar (files done) above the file's bar, or ``[i/n]`` in each line.
- Every file ends with one line: its sizes, its time and its precision.
- ``quiet`` silences all of it (errors are the command's, printed elsewhere).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from .precision import Precision

PROG = "lte-sr"
BAR_DELAY_S = 2.0
BAR_REFRESH_S = 0.5
PLAIN_INTERVAL_S = 30.0


class RunProgress:
    """Progress of one ``lte-sr upscale`` run over ``files`` files, written to ``stream``."""

    def __init__(self, files: int, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.files = files
        self.quiet = quiet
        self.stream = sys.stderr if stream is None else stream
        self.terminal = self.stream.isatty()
        self.started = 0
        self._overall = None
        if files > 1 and self.terminal and not quiet:
            self._overall = tqdm(total=files, desc="files", unit="file", file=self.stream)

    def file(
        self,
        source: Path,
        target: Path,
        in_size: tuple[int, int],
        out_size: tuple[int, int],
        precision: Precision,
    ) -> FileProgress:
        """Start the progress of one file: ``in_size`` and ``out_size`` are (width, height)."""
        self.started += 1
        index = f"[{self.started}/{self.files}] " if self.files > 1 else ""
        return FileProgress(self, index, source, target, in_size, out_size, precision)

    def say(self, line: str) -> None:
        """Print ``line`` (unless quiet) without breaking the bars."""
        if not self.quiet:
            tqdm.write(f"{PROG}: {line}", file=self.stream)

    def file_done(self) -> None:
        if self._overall is not None:
            self._overall.update(1)

    def close(self) -> None:
        if self._overall is not None:
            self._overall.close()


class FileProgress:
    """One file's progress; :meth:`update` is the pipeline's ``progress(done, total)`` callback
    in output pixels, :meth:`done` prints the file's closing line."""

    def __init__(
        self,
        run: RunProgress,
        index: str,
        source: Path,
        target: Path,
        in_size: tuple[int, int],
        out_size: tuple[int, int],
        precision: Precision,
    ) -> None:
        self.run, self.index, self.source, self.target = run, index, source, target
        self.in_size, self.out_size, self.precision = in_size, out_size, precision
        self.start = time.perf_counter()
        self._last_line = self.start
        self._bar = None
        self._width = out_size[0]

    def update(self, done: int, total: int) -> None:
        """``done`` of ``total`` output pixels (all frames and passes) are decoded."""
        if self.run.quiet:
            return
        if self.run.terminal:
            self._update_bar(done, total)
        else:
            self._maybe_plain_line(done, total)

    def _update_bar(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = tqdm(
                total=total // self._width,
                desc=f"{self.index}{self.source.name} {self.precision}",
                unit="row",
                delay=BAR_DELAY_S,
                mininterval=BAR_REFRESH_S,
                leave=False,
                file=self.run.stream,
            )
            # tqdm's delay and rate count from its creation (on its own clock, time.time):
            # start them from the file's start.
            self._bar.start_t = time.time() - (time.perf_counter() - self.start)
        self._bar.update(done // self._width - self._bar.n)

    def _maybe_plain_line(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self._last_line < PLAIN_INTERVAL_S or done >= total:
            return
        self._last_line = now
        elapsed = now - self.start
        left = elapsed * (total - done) / max(done, 1)
        self.run.say(
            f"{self.index}{self.source}: {100 * done / total:.0f}% "
            f"({done // self._width}/{total // self._width} output rows), "
            f"{elapsed:.0f} s so far, ~{left:.0f} s left, {self.precision}"
        )

    def done(self) -> None:
        """Close the bar and print the file's line: sizes, time, precision."""
        if self._bar is not None:
            self._bar.close()
        (w, h), (out_w, out_h) = self.in_size, self.out_size
        seconds = time.perf_counter() - self.start
        self.run.say(
            f"{self.index}{self.source} -> {self.target}: {w}x{h} -> {out_w}x{out_h} in "
            f"{seconds:.1f} s, {self.precision}"
        )
        self.run.file_done()
