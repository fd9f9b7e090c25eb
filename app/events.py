"""What a command tells its user while it runs: text lines and a progress bar on a terminal, or,
with ``--log-format json``, one JSON object per event on stderr for log collectors."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
import time
from typing import Any

import click

log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per event on stderr.",
)
PROGRESS_EVERY_S = 10.0
_WRITING = threading.Lock()


class Events:
    def __init__(self, log_format: str = "text", quiet: bool = False, command: str = "cxr"):
        self.json = log_format == "json"
        self.quiet = quiet
        self.command = command
        self._bar = None
        self._last_progress = 0.0
        self._done = 0

    def emit(
        self, event: str, message: str, *, always: bool = False, err: bool = False, **fields: Any
    ) -> None:
        """One event: a JSON object on stderr, or a line of text: results (``always``) on stdout
        and problems (``err``) on stderr even when quiet, chatter on stderr unless quiet."""
        if self.json:
            record = {
                "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                "command": self.command,
                "event": event,
                "message": message,
                **fields,
            }
            with _WRITING:  # whole lines, also when the relay thread of native stderr writes
                click.echo(json.dumps(record, default=str), err=True)
        elif err:
            click.echo(message, err=True)
        elif always:
            click.echo(message)
        elif not self.quiet:
            click.echo(message, err=True)

    def progress(self, n: int, total: int) -> None:
        """A progress callback: a tqdm bar on a terminal (text), periodic 'progress' events (json)."""
        self._done += n
        if self.json:
            now = time.monotonic()
            if now - self._last_progress >= PROGRESS_EVERY_S or self._done >= total:
                self._last_progress = now
                self.emit("progress", f"{self._done}/{total} files", done=self._done, total=total)
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                unit="img",
                dynamic_ncols=True,
                file=sys.stderr,
                disable=self.quiet or not sys.stderr.isatty(),
            )
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def native_stderr_as_json(self, source: str) -> None:
        """With --log-format json, lines that native code writes straight to stderr (Ray's C++ core
        worker) become JSON events too, for the rest of the process: file descriptor 2 is turned
        into a pipe that a thread reads, and Python's stderr writes to the real stderr."""
        if not self.json or getattr(self, "_native", False):
            return
        self._native = True
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        sys.stderr = os.fdopen(os.dup(real), "w", buffering=1, encoding="utf-8", errors="replace")
        threading.Thread(target=self._relay, args=(read_end, source), daemon=True).start()

    def _relay(self, read_end: int, source: str) -> None:
        with os.fdopen(read_end, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                if line.strip():
                    self.emit(f"{source}_log", line.strip())
