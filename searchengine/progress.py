"""Progress bars for long work: shown on a terminal, with the rate and the time left.

The library only draws a bar when its caller asks (`progress=True`); the CLI asks when stderr is
a terminal and the output is not `--json` (`searchengine.cli.options.show_progress`), so scripts
and pipes get the one-line summary alone.
"""

from __future__ import annotations

import logging
import os
import sys

FALLBACK_SIZE = (80, 24)
"""Columns and rows assumed on a terminal that reports a size of 0 (a fresh pty that nobody sized,
as under `script` or a test harness): tqdm would take that size and draw nothing at all."""


def progress_bar(total: int, *, desc: str, unit: str, enabled: bool, initial: int = 0):
    """A `tqdm` bar on stderr over `total` units (disabled, drawing nothing, unless `enabled`).

    The bar follows the terminal's width; on a terminal that reports 0 columns or rows it assumes
    FALLBACK_SIZE, where tqdm's own size probe would hide the bar.
    """
    from tqdm import tqdm

    stream = sys.stderr
    sized = min(terminal_size(stream)) > 0
    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, file=stream,
        dynamic_ncols=sized, ncols=None if sized else FALLBACK_SIZE[0],
        nrows=None if sized else FALLBACK_SIZE[1], mininterval=0.2,
    )


def terminal_size(stream) -> tuple[int, int]:
    """(columns, rows) of the terminal behind `stream`; 0 where it reports none or is none."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 0, 0
    return size.columns, size.lines


class LogAboveBars(logging.StreamHandler):
    """A stderr log handler that prints each line above the progress bars on screen (tqdm's
    `write`: clear the bars, print, redraw them) instead of through the middle of a bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_module = sys.modules.get("tqdm")
        if tqdm_module is None:  # no bar can be on screen yet
            super().emit(record)
            return
        try:
            tqdm_module.tqdm.write(self.format(record), file=self.stream)
        except (OSError, ValueError):  # a closed or broken stream, as StreamHandler tolerates
            self.handleError(record)
