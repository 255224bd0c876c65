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
from contextlib import contextmanager, nullcontext

from modes.launch import torchrun_world_size
from modes.run import claim_shared_run, format_value
from utils.config import sweep_values
from utils.errors import Terminated, UserError
from utils.runtable.identity import SEED_KEY
from utils.runtable.readers import read_run
from utils.stopping import exit_code
from utils.tables import table_lines

POLL_S = 1.0  # how often a worker with nothing to claim looks again at the combinations others run


def sweep(launch):
    """Exit code of this worker: 0 when every combination finished, 1 when one crashed, 130/143 when stopped."""
    if torchrun_world_size() > 1:
        raise UserError("--sweep runs its combinations one after another in one process; launch it without torchrun")
    if launch.args.workers is not None:
        return start_workers(launch)
    project = launch.project
    runs = sweep_runs(launch)
    project.check_takes_flags(runs[0][1])
    identities = [project.identity(description) for _, description in runs]  # every value checked first
    for identity in identities:
        project.check_config(identity)
    launch.warn_of_new_keys()
    with worker_output():
        print(sweep_header(launch))
        code = work(launch, runs, sweep_key(identities), worker_name())
    return code


def work(launch, runs, key, worker):
    """Claim and run the sweep's runs until none is left to claim or to wait for; the last worker prints the table."""
    table, total = launch.project.table, len(runs)
    table.join_sweep(key, worker)
    code, first_pass = 0, True
    while True:
        claimed, waiting = False, []
        for number, (label, description) in enumerate(runs, start=1):
            try:
                outcome = claim_shared_run(launch.project, description, config_path=launch.args.config,
                                    heading=f"[{number}/{total}] {label}")
            except UserError:  # a mistake every run would repeat (a full disk): this worker stops
                table.leave_sweep(key, worker)
                raise
            if not outcome.ran:
                if outcome.state == "finished" and first_pass:
                    print(f"[{number}/{total}] {label}: skipped, finished as run {outcome.run_id}")
                elif outcome.state == "running":
                    waiting.append(number)
                continue
            if outcome.state == "stopped":
                table.leave_sweep(key, worker)
                print("the sweep stopped; the same command resumes it, skipping the finished combinations",
                      file=sys.stderr)
                return outcome.code
            if outcome.state == "crashed":
                code = 1
            claimed = True
        first_pass = False
        if not claimed and not waiting:
            break
        if not claimed:
            time.sleep(POLL_S)
            table.beat_in_sweep(key, worker)
    if table.leave_sweep(key, worker):
        rows = sweep_rows(launch.project, runs)
        print_sweep_table(rows, launch.measures())
        if launch.args.seeds is not None:
            print("compare the groups of seeds with: python main.py --compare "
                  + " ".join(str(run_id) for _, run_id, status, _ in rows if status == "finished"))
        return 1 if any(status != "finished" for _, _, status, _ in rows) else code
    print("nothing left to claim; the last worker to end prints the sweep's table")
    return code


def sweep_rows(project, runs):
    """(label, run ID, status, results) of every run of the sweep, as the table holds it now."""
    rows = []
    for label, description in runs:
        latest = project.table.latest_run(project.identity(description))
        run_id, status = latest if latest else ("", "not run")
        results = read_run(project.table.path, run_id).results if status == "finished" else {}
        rows.append((label, run_id, status, results))
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
            [sys.executable, str(launch.project.code_dir / "main.py"), *argv], env=environment, start_new_session=True,
            preexec_fn=(lambda share=share: os.sched_setaffinity(0, share)) if hasattr(os, "sched_setaffinity")
            else None))
    try:
        # Each is collected as it ends, whatever the order: a worker killed while another waits for its run is then
        # gone, not a zombie that looks alive, and the others take its run over.
        ended = []
        while len(ended) < len(processes):
            ended += [process for process in processes if process not in ended and process.poll() is not None]
            time.sleep(POLL_S / 10)
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
        return exit_code(stop)
    # The worker that ended last judged the whole sweep (it printed the table: 1 if a run is not finished); one that
    # a signal killed before it (its run taken over) does not fail a sweep that ended whole.
    return ended[-1].returncode if ended[-1].returncode >= 0 else 128 - ended[-1].returncode


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


def sweep_key(identities):
    """What identifies one sweep among others in the table: the identities of its runs."""
    keys = sorted(json.dumps(identity.key()) for identity in identities)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


class _Prefixed(io.TextIOBase):
    """A text stream that starts every line written to `stream` with `prefix`, and passes on whole lines only, in one
    write: the workers share one output, unbuffered where PYTHONUNBUFFERED is set, and print() writes a line's text
    and its end separately, so another worker's line could land in between."""

    def __init__(self, stream, prefix):
        self._stream, self._prefix, self._pending = stream, prefix, ""

    def write(self, text):
        *ended, self._pending = (self._pending + text).split("\n")
        if ended:
            self._stream.write("".join(f"{self._prefix}{line}\n" for line in ended))
        return len(text)

    def flush(self):
        self._stream.flush()

    def close_line(self):
        """Pass on what is left of a line that never ended."""
        if self._pending:
            self._stream.write(f"{self._prefix}{self._pending}\n")
            self._pending = ""
        self._stream.flush()

    def isatty(self):
        return self._stream.isatty()

    def fileno(self):
        return self._stream.fileno()


def worker_output():
    """Where this worker prints: its lines start with its name when the workers of --workers share one output."""
    return prefixed_output(worker_name()) if os.environ.get("SWEEP_WORKER") else nullcontext()


@contextmanager
def prefixed_output(worker):
    """Every line this worker prints, on stdout and stderr, starts with its name."""
    previous = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Prefixed(sys.stdout, f"[{worker}] "), _Prefixed(sys.stderr, f"[{worker}] ")
    prefixed = sys.stdout, sys.stderr
    try:
        yield
    finally:
        for stream in prefixed:
            stream.close_line()
        sys.stdout, sys.stderr = previous


def sweep_combinations(overrides, split=True):
    """Every combination of the overrides' comma-separated values (`split`), or the overrides as they are: lists of
    (dotted key, value text)."""
    axes = [[(key, value) for value in (sweep_values(text) if split else [text])] for key, text in overrides]
    return [list(combination) for combination in itertools.product(*axes)]


def sweep_runs(launch):
    """(label, RunDescription) of every run the command asks for: each combination, once per seed of --seeds."""
    return [(combination_label(launch, combination, seed), launch.description(combination, seed))
            for combination in sweep_combinations(launch.overrides, split=launch.args.sweep)
            for seed in seeds_of(launch, combination)]


def seeds_of(launch, combination):
    """The seeds --seeds asks for a combination: N seeds from the combination's own seed on, or the seeds listed;
    [None] (the config's seed) without --seeds."""
    text = launch.args.seeds
    if text is None:
        return [None]
    if any(key == SEED_KEY for key, _ in launch.overrides) and launch.args.sweep:
        raise UserError(f"--seeds runs several seeds of every combination; drop the --config.{SEED_KEY} values")
    values = sweep_values(text)
    if not all(value.strip().lstrip("-").isdigit() for value in values) or (len(values) == 1 and int(values[0]) < 1):
        raise UserError(f"--seeds takes a number of seeds (--seeds=5) or the seeds themselves (--seeds=0,3,7), "
                        f"got {text!r}")
    if len(values) > 1:
        return [int(value) for value in values]
    first = launch.config(combination).get(SEED_KEY, 0)
    return list(range(first, first + int(values[0])))


def sweep_header(launch):
    """What the command runs: its combinations, and how many seeds of each."""
    combinations = sweep_combinations(launch.overrides, split=launch.args.sweep)
    seeds = seeds_of(launch, combinations[0])
    each = f", each with {len(seeds)} seeds ({len(seeds) * len(combinations)} runs)" if launch.args.seeds else ""
    if not launch.args.sweep:
        return f"seeds: {len(seeds)} runs, seeds {', '.join(map(str, seeds))}"
    keys = ", ".join(key for key, text in launch.overrides if len(sweep_values(text)) > 1)  # those that vary
    count = f"{len(combinations)} combination{'s' if len(combinations) > 1 else ''}"
    return (f"sweep: {count} of {keys}" if keys else f"sweep: {count}") + each


def combination_label(launch, combination, seed=None):
    """What tells a run of the sweep from the others: its overrides (where-keys left out) and its seed."""
    shown = [f"{key}={value}" for key, value in combination
             if key not in launch.project.rules.where_keys and not (seed is not None and key == SEED_KEY)]
    if seed is not None:
        shown.append(f"{SEED_KEY}={seed}")
    return " ".join(shown) or "(the config as it is)"


def print_sweep_table(rows, measures):
    """Every combination of the sweep with its run ID, status and results (in the order `measures` declares)."""
    names = measures.ordered({name for *_, results in rows for name in results})
    header = ["combination", "run", "status", *names]
    lines = [header] + [[label, run_id, status, *(format_value(results[n]) if n in results else "" for n in names)]
                        for label, run_id, status, results in rows]
    print("\n".join(table_lines(lines)))
