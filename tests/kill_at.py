"""Run main.py's command line and SIGKILL this very process at one chosen instant of a run (a test helper).

    python tests/kill_at.py INSTANT [main.py arguments ...]

The instants lie between the writes of an epoch's end and of a run's end, where a power cut or the out-of-memory
killer could land, or at the start of a chosen training step (step-N); the kill is real (SIGKILL: no handler, no
cleanup), only its timing is chosen.
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402
import utils.checkpoint  # noqa: E402
import utils.epochs  # noqa: E402
import utils.runtable.run  # noqa: E402


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def after_calls(function, count, before=False):
    """`function` wrapped to die just before (or just after) its `count`-th call."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if before and len(calls) == count:
            die()
        result = function(*args, **kwargs)
        if not before and len(calls) == count:
            die()
        return result
    return wrapped


def half_written(path, mode):
    """open() for a checkpoint's temporary file that writes half of it and dies, as a kill mid-write would."""
    target = open(path, mode)

    class Half:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            target.close()

        def write(self, data):
            target.write(bytes(data[:len(data) // 2]))
            target.flush()
            die()
    return Half()


INSTANTS = {
    # points of epoch 2 written mid-epoch (a small flush size), checkpoints still those of epoch 1
    "mid-epoch-flush": lambda: (setattr(utils.runtable.run, "FLUSH_EVERY", 2),
                                setattr(utils.runtable.run.Run, "flush",
                                        after_calls(utils.runtable.run.Run.flush, 8))),
    # epoch 1's points written, no checkpoint yet
    "points-written": lambda: setattr(utils.epochs, "save_checkpoint",
                                      after_calls(utils.epochs.save_checkpoint, 1, before=True)),
    # epoch 1's best.pt written, its last.pt not
    "best-written": lambda: setattr(utils.epochs, "save_training_state",
                                    after_calls(utils.epochs.save_training_state, 1, before=True)),
    # epoch 2's last.pt half written to its temporary file
    "mid-checkpoint": lambda: setattr(utils.checkpoint, "open", after_open(2)),
    # epoch 1 closed: points, best.pt and last.pt all written
    "epoch-closed": lambda: setattr(utils.epochs.Epochs, "end", after_calls(utils.epochs.Epochs.end, 1)),
    # every epoch done and the test set evaluated, the results not yet written
    "before-results": lambda: setattr(utils.runtable.run.Run, "finish",
                                      after_calls(utils.runtable.run.Run.finish, 1, before=True)),
}


def after_open(count):
    """open() that is itself on its `count`-th call for a last.tmp file half_written."""
    calls = []

    def chosen_open(path, mode="r", *args, **kwargs):
        if Path(path).name == "last.tmp":
            calls.append(1)
            if len(calls) == count:
                return half_written(path, mode)
        return open(path, mode, *args, **kwargs)
    return chosen_open


def at_step(step):
    """die as the `step`-th training step of this process begins (a step-N instant)"""
    import training.loop
    training.loop._step = after_calls(training.loop._step, step, before=True)


if __name__ == "__main__":
    instant = sys.argv[1]
    if instant.startswith("step-"):
        at_step(int(instant.removeprefix("step-")))
    else:
        INSTANTS[instant]()
    sys.exit(main.cli(sys.argv[2:]))
