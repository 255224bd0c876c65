"""--sweep and --seeds: every combination of comma-separated override values, and every configuration with several
seeds, each a run of its own; any number of identical commands share the work as the workers of one sweep.

A worker claims, in one transaction of the run table, the next combination that is neither finished nor running in a
live process; it resumes a combination whose run was killed or stopped, retries one whose code crashed once (with
the same code), and waits for combinations that others run until none is left. The worker that ends last prints the
table of the whole sweep; running the command again after the sweep prints it too. `--workers=N` starts N local
workers and waits for them.
"""
import hashlib
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager

from modes.launch import command_of, torchrun_world_size
from modes.run import execute, format_value
from utils.config import OVERRIDE_PREFIX, sweep_values
from utils.errors import Terminated, UserError
from utils.provenance import git_commit, git_diff
from utils.runtable.identity import SEED_KEY
from utils.runtable.readers import read_run

POLL_S = 1.0  # how often a worker with nothing to claim looks again at the combinations others run


def sweep(launch):
    """Exit code of this worker: 0 when every combination finished, 1 when one crashed, 130/143 when stopped."""
    if torchrun_world_size() > 1:
        raise UserError("--sweep runs its combinations one after another in one process; launch it without torchrun")
    if launch.args.workers is not None:
        return start_workers(launch)
    launch.check_experiment_takes_flags()
    combinations = with_seeds(launch, sweep_combinations(launch.overrides, split=launch.args.sweep))
    identities = [launch.identity(overrides=combination) for combination in combinations]  # every value checked first
    for identity in identities:
        launch.check_config(identity)
    launch.warn_of_new_keys()
    worker = worker_name()
    with prefixed_output(worker):
        print(sweep_header(launch))
        code = work(launch, list(zip(combinations, identities)), worker)
    return code


def work(launch, items, worker):
    """Claim and run combinations until none is left to claim or to wait for; the last worker prints the table."""
    table, total = launch.table, len(items)
    key = sweep_key(items)
    commit, diff = git_commit(launch.code_dir), git_diff(launch.code_dir)
    table.join_sweep(key, worker)
    code, first_pass = 0, True
    while True:
        claimed, waiting = False, []
        for number, (combination, identity) in enumerate(items, start=1):
            label = combination_label(launch, combination)
            latest = table.latest_run(identity)
            if latest is not None and latest[1] == "finished":
                if first_pass:
                    print(f"[{number}/{total}] {label}: skipped, finished as run {latest[0]}")
                continue
            claim = table.claim(identity, config_path=launch.args.config, command=combination_command(launch, combination),
                                commit=commit, diff=diff)
            if claim.run is None:
                if claim.state == "running":
                    waiting.append(number)
                continue
            print(f"[{number}/{total}] {label}: run {claim.run.id}{', resumed' if claim.run.resumed else ''}",
                  flush=True)
            try:
                results, stopped = run_claimed(launch, claim, identity)
            except UserError:  # a mistake every combination would repeat (a full disk): this worker stops
                table.leave_sweep(key, worker)
                raise
            if results is None and not stopped:
                code = 1
            if stopped:
                table.leave_sweep(key, worker)
                print("the sweep stopped; the same command resumes it, skipping the finished combinations",
                      file=sys.stderr)
                return stopped
            claimed = True
        first_pass = False
        if not claimed and not waiting:
            break
        if not claimed:
            time.sleep(POLL_S)
            table.beat_in_sweep(key, worker)
    if table.leave_sweep(key, worker):
        rows = sweep_rows(launch, items)
        print_sweep_table(rows)
        if launch.args.seeds is not None:
            print("compare the groups of seeds with: python main.py --compare "
                  + " ".join(str(run_id) for _, run_id, status, _ in rows if status == "finished"))
        return 1 if any(status != "finished" for _, _, status, _ in rows) else code
    print("nothing left to claim; the last worker to end prints the sweep's table")
    return code


def run_claimed(launch, claim, identity, texts=None):
    """(results, or None if its code crashed; the exit code if it was stopped, else 0) of running a claimed run.

    A crash is shown and the run kept failed, so that the caller goes on with its next run; a user's mistake that
    every run would repeat (a full disk) propagates."""
    try:
        return execute(launch, claim.run, identity, launch.args.verbose, threads=claim.threads, texts=texts)
    except UserError:
        raise
    except Exception:
        traceback.print_exc()
        return None, 0


def sweep_rows(launch, items):
    """(label, run ID, status, results) of every combination, as the table holds it now."""
    rows = []
    for combination, identity in items:
        latest = launch.table.latest_run(identity)
        run_id, status = latest if latest else ("", "not run")
        results = read_run(launch.table.path, run_id).results if status == "finished" else {}
        rows.append((combination_label(launch, combination), run_id, status, results))
    return rows


def start_workers(launch):
    """Run the same command as `--workers` local worker processes, each on its share of the CPU cores (or its own
    GPU when there are as many), and wait for them; Ctrl-C or SIGTERM stops them all."""
    count = launch.args.workers
    if count < 1:
        raise UserError(f"--workers=N starts N >= 1 worker processes, got {count}")
    argv = [arg for arg in launch.argv if not arg.startswith("--workers")]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
    gpus = visible_gpus()
    print(f"workers: {count} processes, " + ("one GPU each" if len(gpus) >= count else
                                             f"{max(1, len(cores) // count)} CPU core(s) each"), flush=True)
    processes = []
    for index in range(count):
        environment = {**os.environ, "SWEEP_WORKER": f"w{index + 1}"}
        if len(gpus) >= count:
            environment["CUDA_VISIBLE_DEVICES"] = gpus[index]
        share = cores_of(cores, index, count)
        processes.append(subprocess.Popen(
            [sys.executable, str(launch.code_dir / "main.py"), *argv], env=environment, start_new_session=True,
            preexec_fn=(lambda share=share: os.sched_setaffinity(0, share)) if hasattr(os, "sched_setaffinity")
            else None))
    try:
        codes = [process.wait() for process in processes]
    except (KeyboardInterrupt, Terminated) as stop:
        sent = signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM
        for process in processes:  # their own sessions: one signal each, forwarded from here
            if process.poll() is None:
                process.send_signal(sent)
        for process in processes:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        print(f"stopped all {count} workers; their runs are failed and resumable: the same command continues the "
              f"sweep", file=sys.stderr)
        return 130 if sent == signal.SIGINT else 143
    return max(codes, key=lambda code: (code != 0, code))


def cores_of(cores, index, count):
    """The CPU cores worker `index` of `count` may use: an equal share, at least one."""
    share = max(1, len(cores) // count)
    start = (index * share) % len(cores)
    return set(cores[start:start + share]) or {cores[index % len(cores)]}


def visible_gpus():
    """The CUDA devices this process may hand out, as CUDA_VISIBLE_DEVICES entries (none without a GPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [entry for entry in visible.split(",") if entry.strip()]
    import torch

    return [str(index) for index in range(torch.cuda.device_count())]


def worker_name():
    """The prefix of this worker's lines: the name --workers gave it, its SLURM array task, or host and pid."""
    if os.environ.get("SWEEP_WORKER"):
        return os.environ["SWEEP_WORKER"]
    if os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"task{os.environ['SLURM_ARRAY_TASK_ID']}"
    return f"{socket.gethostname()}:{os.getpid()}"


def sweep_key(items):
    """What identifies one sweep among others in the table: the identities of its combinations."""
    keys = sorted(json.dumps(identity.key()) for _, identity in items)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


class _Prefixed(io.TextIOBase):
    """A text stream that starts every line written to `stream` with `prefix`."""

    def __init__(self, stream, prefix):
        self._stream, self._prefix, self._at_line_start = stream, prefix, True

    def write(self, text):
        out = []
        for piece in text.splitlines(keepends=True):
            if self._at_line_start:
                out.append(self._prefix)
            out.append(piece)
            self._at_line_start = piece.endswith(("\n", "\r"))
        self._stream.write("".join(out))
        return len(text)

    def flush(self):
        self._stream.flush()

    def isatty(self):
        return self._stream.isatty()

    def fileno(self):
        return self._stream.fileno()


@contextmanager
def prefixed_output(worker):
    """Every line this worker prints, on stdout and stderr, starts with its name."""
    previous = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Prefixed(sys.stdout, f"[{worker}] "), _Prefixed(sys.stderr, f"[{worker}] ")
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = previous


def sweep_combinations(overrides, split=True):
    """Every combination of the overrides' comma-separated values (`split`), or the overrides as they are: lists of
    (dotted key, value text)."""
    axes = [[(key, value) for value in (sweep_values(text) if split else [text])] for key, text in overrides]
    return [list(combination) for combination in itertools.product(*axes)]


def with_seeds(launch, combinations):
    """Each combination once per seed of --seeds: N seeds from the combination's own seed on, or the seeds listed."""
    text = launch.args.seeds
    if text is None:
        return combinations
    if any(key == SEED_KEY for key, _ in launch.overrides) and launch.args.sweep:
        raise UserError(f"--seeds runs several seeds of every combination; drop the --config.{SEED_KEY} values")
    values = sweep_values(text)
    if not all(value.strip().lstrip("-").isdigit() for value in values) or (len(values) == 1 and int(values[0]) < 1):
        raise UserError(f"--seeds takes a number of seeds (--seeds=5) or the seeds themselves (--seeds=0,3,7), "
                        f"got {text!r}")
    seeded = []
    for combination in combinations:
        if len(values) == 1:
            first = launch.config(combination).get(SEED_KEY, 0)
            seeds = range(first, first + int(values[0]))
        else:
            seeds = [int(value) for value in values]
        seeded += [[*[(k, v) for k, v in combination if k != SEED_KEY], (SEED_KEY, str(seed))] for seed in seeds]
    return seeded


def sweep_header(launch):
    """What the command runs: its combinations, and how many seeds of each."""
    combinations = sweep_combinations(launch.overrides, split=launch.args.sweep)
    seeds = with_seeds(launch, combinations[:1])
    each = f", each with {len(seeds)} seeds ({len(seeds) * len(combinations)} runs)" if launch.args.seeds else ""
    if not launch.args.sweep:
        return f"seeds: {len(seeds)} runs, seeds {', '.join(value for *_, (_, value) in seeds)}"
    keys = ", ".join(key for key, _ in launch.overrides)
    count = f"{len(combinations)} combination{'s' if len(combinations) > 1 else ''}"
    return (f"sweep: {count} of {keys}" if keys else f"sweep: {count}") + each


def combination_label(launch, combination):
    return " ".join(f"{key}={value}" for key, value in combination
                    if key not in launch.where_keys) or "(the config as it is)"


def combination_command(launch, combination):
    """The single command that runs one combination, as recorded with its run."""
    fixed = [arg for arg in launch.argv if arg not in ("--sweep",) and not arg.startswith(OVERRIDE_PREFIX)
             and not arg.startswith(("--seeds", "--workers"))]
    return command_of([*fixed, *(f"{OVERRIDE_PREFIX}{key}={value}" for key, value in combination)])


def print_sweep_table(rows):
    names = sorted({name for *_, results in rows for name in results})
    header = ["combination", "run", "status", *names]
    lines = [header] + [[label, str(run_id), status, *(format_value(results[n]) if n in results else "" for n in names)]
                        for label, run_id, status, results in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
