"""A run's own output, kept in its results folder: everything it prints on stdout and stderr (the epoch lines,
warnings, the line that says how it ended, a traceback) is also appended to `results/RUNID/output.log`, across
resumes. A cluster job's console is often lost; this file is not.

The file gets what the console finally shows, line by line: a progress bar redrawn in place (a carriage return) is
left out, and each line is written with one system call as it ends, so a SIGKILL loses at most the line it cut.
"""
import os
import socket
import sys
import traceback
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from utils.errors import UserError, one_line
from utils.stopping import output_closed, stop_behind

OUTPUT_LOG = "output.log"  # in the run's folder


class _Lines:
    """The log file, fed text as a console gets it; it writes the lines a console would be left showing."""

    def __init__(self, path):
        self.descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.pending = ""

    def add(self, text):
        *ended, self.pending = (self.pending + text.replace("\r\n", "\n")).split("\n")
        for line in ended:  # a line redrawn in place keeps what follows its last carriage return
            self.write(line[line.rfind("\r") + 1:] + "\n")
        self.pending = self.pending[self.pending.rfind("\r") + 1:]

    def write(self, line):
        if not line.strip():
            return
        try:
            os.write(self.descriptor, line.encode("utf-8", "backslashreplace"))
        except OSError:  # a full disk: the run itself says so; its log never stops it
            pass

    def close(self):
        self.write(self.pending + "\n" if self.pending.strip() else "")
        os.close(self.descriptor)


class _Tee:
    """A text stream that writes to `stream` and to the log. Once `stream`'s reader has left (`| head`), the log
    alone gets the text, and the run stops as after Ctrl-C (resumable, exit code 141)."""

    def __init__(self, stream, lines):
        self._stream, self._lines = stream, lines

    def write(self, text):
        self._lines.add(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_left()
        return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_left()

    def _reader_left(self):
        try:  # what the stream still buffers goes nowhere, instead of failing again at every flush and at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        output_closed()

    def __getattr__(self, name):  # flush, fileno, isatty, encoding...: the console's own
        return getattr(self._stream, name)


@contextmanager
def kept_output(folder, heading):
    """Within it, stdout and stderr are also appended to `folder`/output.log, after a line holding `heading` and the
    time; an exception that leaves the block is written there as main.py reports it (one line for a user's mistake,
    the traceback of a crash)."""
    lines = _Lines(Path(folder) / OUTPUT_LOG)
    lines.write(f"--- {heading}, {datetime.now().isoformat(sep=' ', timespec='seconds')} on "
                f"{socket.gethostname()} (pid {os.getpid()}) ---\n")
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, lines), _Tee(sys.stderr, lines)
    try:
        yield
    except UserError as error:
        lines.add(f"error: {one_line(str(error))}\n")
        raise
    except BaseException as error:
        if stop_behind(error) is None:
            lines.add("".join(traceback.format_exception(error)))
        raise
    finally:
        sys.stdout, sys.stderr = streams
        lines.close()
