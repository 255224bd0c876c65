"""Run main.py's command line and send a real stop signal to this process's whole group as a chosen training step
begins (a test helper): as a terminal's Ctrl-C or a cluster's SIGTERM reaches the run and its loader workers.

    python tests/signal_at.py SIGNAL STEP [main.py arguments ...]     (SIGNAL: SIGINT or SIGTERM)

Under torchrun, with SIGNAL_AT_RANK=R in the environment, only rank R gets the signal, alone: the ranks must agree to
stop after the same step.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402
import training.loop  # noqa: E402


def signal_at(signum, step, rank=None):
    """Send `signum` to the process group as the `step`-th training step of this process begins; with `rank`, only to
    that torchrun rank."""
    original, calls = training.loop._step, []

    def stepping(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            if rank is None:  # from another process, as a terminal's or a scheduler's signal comes
                subprocess.run(["kill", f"-{signum.name.removeprefix('SIG')}", "--", f"-{os.getpgrp()}"])  # in it too
            elif int(os.environ["RANK"]) == rank:
                os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    training.loop._step = stepping


if __name__ == "__main__":
    rank = os.environ.get("SIGNAL_AT_RANK")
    signal_at(signal.Signals[sys.argv[1]], int(sys.argv[2]), None if rank is None else int(rank))
    sys.exit(main.cli(sys.argv[3:]))
