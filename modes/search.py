"""--search=N: a study of N trials over the space the overrides describe; Optuna proposes, the run table records.

Each trial is one recorded run (or, with --seeds=K, a group of K runs whose mean is the trial's value), with its
identity as any run has; its value is the validation metric the experiment declares it selects by (or --watch's), in
its declared direction, never a test result. The study lives beside the run table in Optuna's journal file
(`search.journal` in its folder), named from the experiment, the config, the space and the flags, so the same command
continues it until N trials are complete, and --search=20 after a finished
--search=10 adds ten. A proposal that already finished in the table is not trained again: its recorded value is told.
Identical commands (and --workers=N) share the study, asking for trials under a lock; with --prune, Optuna's median
pruner stops trials that fall behind, epoch by epoch.
"""
import fcntl
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from modes.launch import torchrun_world_size
from modes.run import claim_shared_run
from modes.sweep import POLL_S, seeds_of, start_workers, worker_output
from utils.config import flatten, override_text, search_dimension
from utils.errors import Pruned, UserError, disk_full, is_disk_full
from utils.runtable import liveness
from utils.runtable.identity import SEED_KEY
from utils.runtable.readers import read_run, run_owners, table_files
from utils.stats import summarise

STUDIES_FILE = "search.journal"
CRASHES_IN_A_ROW = 2  # trials whose code crashed one after another: the study stops, the code needs a fix
SHOWN = 5  # trials in the summary


def search(launch):
    """Exit code: 0 when the study has N complete trials, 130/143 when stopped."""
    count = launch.args.search
    if torchrun_world_size() > 1:
        raise UserError("--search runs its trials one after another in one process; launch it without torchrun")
    if count < 1:
        raise UserError(f"--search=N runs a study of N >= 1 trials, got {count}")
    fixed, dimensions = search_space(launch)
    launch.project.check_takes_flags(launch.description(fixed))
    check_edges(launch, fixed, dimensions)
    launch.warn_of_new_keys()
    if launch.args.workers is not None:
        return start_workers(launch)  # N copies of this command, sharing the study
    with worker_output():
        return run_study(launch, count, fixed, dimensions)


def run_study(launch, count, fixed, dimensions):
    """Exit code of this worker's part of the study: trials until `count` are complete, then the summary."""
    try:
        return _run_study(launch, count, fixed, dimensions)
    except OSError as e:  # Optuna's journal writer meets a full disk: one line, the journal stays readable
        if is_disk_full(e):
            raise disk_full(launch.project.table.files, "the search journal", None) from None
        raise


def _run_study(launch, count, fixed, dimensions):
    import optuna

    measures = launch.measures()  # the experiment's declared selection, or --watch's metric
    metric = measures.selected_result
    name = study_name(launch, fixed, dimensions)
    storage, lock = study_storage(launch.args.search_storage, launch.project.table.files)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if measures.higher_is_better(measures.select) else "minimize"
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, load_if_exists=True,
                                pruner=optuna.pruners.MedianPruner() if launch.args.prune else None)
    refuse_foreign_trials(study, launch.project.table.path, launch.args.search_storage
                          or launch.project.table.files / STUDIES_FILE)
    seed = launch.config(fixed).get(SEED_KEY, 0)
    distributions = {d.key: distribution(d) for d in dimensions}
    print(f"search: study {name}, {len(complete_trials(study))} of {count} trials complete; {metric} is "
          f"{'maximised' if direction == 'maximize' else 'minimised'}", flush=True)
    crashed, crashes = [], 0  # the trials that crashed since the last one that completed; all that crashed here
    while True:
        trial, others = next_trial(launch, study, count, distributions, lock, seed)
        if trial is None and not others:
            break
        if trial is None:  # the last trials run in other workers: wait, and take over one whose worker died
            time.sleep(POLL_S)
            continue
        combination = [*fixed, *((d.key, d.text(trial.params[d.key])) for d in dimensions)]
        label = " ".join(f"{d.key}={d.text(trial.params[d.key])}" for d in dimensions)
        print(f"[trial {trial.number}] {label}", flush=True)
        runs = [launch.description(combination, seed) for seed in seeds_of(launch, combination)]
        values, run_ids, owners, state = [], [], [], "complete"
        for number, description in enumerate(runs):
            texts = {"search": json.dumps({"study": name, "trial": trial.number, "params": trial.params})}
            judge = judge_of(trial) if launch.args.prune and number == 0 else None
            outcome = run_of_trial(launch, description, texts=texts, judge=judge)
            if outcome.state == "crashed" and outcome.ran:  # the sweeps' rule: once more, with the same code
                print(f"  run {outcome.run_id} crashed (its traceback is above): trying it once more", flush=True)
                run_ids.append(outcome.run_id)
                owners.append(launch.project.identity(description).owner)
                outcome = run_of_trial(launch, description, texts=texts, judge=judge)
            if outcome.state == "stopped":
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                print("the search stopped; the same command continues the study", file=sys.stderr)
                return outcome.code
            if outcome.run_id is not None:
                run_ids.append(outcome.run_id)
                owners.append(launch.project.identity(description).owner)
                trial.set_user_attr("runs", run_ids)
                trial.set_user_attr("owners", owners)  # whose they are: a journal copied elsewhere is told apart
            if outcome.results is None:
                state = outcome.state if outcome.state in ("pruned", "crashed") else "unfinished"
                break
            values.append(outcome.results[metric])
        if state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif state == "crashed":  # counts towards N: a study of code that always crashes still ends
            trial.set_user_attr("crashed", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            crashed.append(trial.number)
            crashes += 1
            print(f"[trial {trial.number}] crashed twice with this code: counted as a failed trial", flush=True)
            if len(crashed) >= CRASHES_IN_A_ROW:
                print(f"error: trials {', '.join(map(str, crashed))} crashed one after another (tracebacks above); "
                      f"fix the code, then the same command continues the study", file=sys.stderr)
                return 1
        elif len(values) < len(runs):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # run elsewhere and gone: it does not count
        elif any(value is None or math.isnan(value) for value in values):  # diverged: Optuna takes no NaN
            trial.set_user_attr("diverged", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            crashed.clear()
            print(f"[trial {trial.number}] {metric} is NaN (training diverged): counted as a failed trial", flush=True)
        else:
            crashed.clear()
            study.tell(trial, sum(values) / len(values))
            print(f"[trial {trial.number}] {metric} {sum(values) / len(values):.4f} "
                  f"(runs {', '.join(map(str, run_ids))})", flush=True)
    print_summary(launch, study, dimensions, fixed, measures, direction)
    return 1 if crashes else 0


def run_of_trial(launch, description, texts, judge=None):
    """The Outcome of one run of a trial, started as workers share runs: a finished identical run is not trained
    again (its recorded value stands), and its epochs are judged by `judge(epoch, value, last)` (see judge_of)."""
    outcome = claim_shared_run(launch.project, description, config_path=launch.args.config, texts=texts,
                        judge=judge)
    if not outcome.ran and outcome.state == "finished":
        print(f"  run {outcome.run_id} already finished with this config: its value is reused", flush=True)
    elif not outcome.ran:
        print(f"  run {outcome.run_id} of this config is {outcome.state}: the trial is {outcome.state}", flush=True)
    elif outcome.state == "pruned":
        print(f"  run {outcome.run_id} pruned: its validation was worse than the median of earlier trials", flush=True)
    return outcome


def search_space(launch):
    """(fixed overrides, [Dimension]) of the command: its overrides, and those of --search-space=FILE."""
    from utils.config import load_config

    current = flatten(load_config(launch.args.config))
    entries = list(launch.overrides)
    if launch.args.search_space is not None:
        entries += space_file_entries(launch.args.search_space)
    fixed, dimensions = [], []
    keys = [key for key, _ in entries]
    twice = next((key for key in keys if keys.count(key) > 1), None)
    if twice is not None:
        raise UserError(f"'{twice}' is given twice (in the overrides or the search space); give it once")
    for key, text in entries:
        if key not in current:
            launch.config([(key, text)])  # refused with the usual message (unknown key, did you mean ...)
        dimension = search_dimension(key, text, current[key])
        if dimension is None:
            fixed.append((key, text))
        else:
            dimensions.append(dimension)
    if not dimensions:
        raise UserError("--search needs a space: give a key a range or a choice, e.g. "
                        "--config.training.learning_rate=log:1e-4..1e-2 or --config.training.optimizer=sgd,adamw")
    return fixed, dimensions


def space_file_entries(path):
    """[(dotted key, override text)] of a YAML search space: `training.learning_rate: log:1e-4..1e-2`, a list for a
    choice."""
    try:
        with open(path, encoding="utf-8") as f:
            space = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"cannot read the search space {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"the search space {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(space, dict) or not space:
        raise UserError(f"the search space {path} must map dotted keys to ranges or lists, e.g. "
                        f"'training.learning_rate: log:1e-4..1e-2'")
    entries = []
    for key, value in space.items():
        if isinstance(value, list):
            text = ",".join(override_text(v) for v in value)
        else:
            text = str(value)
        entries.append((str(key), text))
    return entries


def check_edges(launch, fixed, dimensions):
    """Refuse, before anything is recorded, a space whose ends or choices a run would refuse."""
    middle = [(d.key, d.choices[0] if d.choices else d.text(d.low)) for d in dimensions]
    for index, dimension in enumerate(dimensions):
        for value in dimension.choices or (dimension.text(dimension.low), dimension.text(dimension.high)):
            edge = [*middle[:index], (dimension.key, value), *middle[index + 1:]]
            launch.project.check_config(launch.identity(overrides=[*fixed, *edge]))


def distribution(dimension):
    import optuna

    if dimension.choices:
        return optuna.distributions.CategoricalDistribution(dimension.choices)
    if dimension.integer:
        return optuna.distributions.IntDistribution(dimension.low, dimension.high, log=dimension.log)
    return optuna.distributions.FloatDistribution(dimension.low, dimension.high, log=dimension.log)


def study_name(launch, fixed, dimensions):
    """The experiment and a hash of what the study searches: config, space, result flags, comment, seeds."""
    from utils.config import dump_config

    described = [launch.args.experiment, dump_config(launch.config(fixed)), [repr(d) for d in dimensions],
                 sorted(launch.result_flags().items()), launch.args.comment, launch.args.seeds,
                 launch.measures().select, launch.args.prune]
    return f"{launch.args.experiment}-{hashlib.sha256(json.dumps(described).encode()).hexdigest()[:12]}"


def complete_trials(study):
    """The trials that count towards N: complete ones, pruned ones (they ended as the pruner decided), those whose
    code crashed twice (a study of failing code ends) and those whose training diverged (NaN); not those a killed
    worker left."""
    import optuna

    return [trial for trial in study.trials
            if trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            or trial.user_attrs.get("crashed") or trial.user_attrs.get("diverged")]


def foreign_trials(study, table_path):
    """{trial number: a run ID it names that the table at `table_path` lacks, or holds as another run}: the trials of
    a journal copied from another results folder. Trials recorded before runs' owners were kept are checked by ID."""
    named = [(trial.number, run_id, owner) for trial in study.trials
             for run_id, owner in zip(trial.user_attrs.get("runs", []),
                                      trial.user_attrs.get("owners") or [None] * len(trial.user_attrs.get("runs", [])))]
    in_table = run_owners(table_path, sorted({run_id for _, run_id, _ in named}))
    foreign = {}
    for number, run_id, owner in named:
        if in_table[run_id] is None or owner not in (None, in_table[run_id]):
            foreign.setdefault(number, run_id)
    return foreign


def refuse_foreign_trials(study, table_path, storage):
    """Refuse, in one line, a study whose trials name runs this table does not hold: they are another table's."""
    foreign = foreign_trials(study, table_path)
    if foreign:
        number, run_id = next(iter(foreign.items()))
        raise UserError(f"the study {study.study_name} in {storage} is not this table's: its trial {number} names run "
                        f"{run_id}, which {table_path} does not hold (a journal copied from another results folder); "
                        f"move it away, or search beside the table it came from")


def judge_of(trial):
    """judge(epoch, value, last) for a run of `trial`: reports each epoch's watched validation value to the study and
    raises Pruned when Optuna's pruner says the trial falls behind, before its last epoch (after it, the run is done
    and its results stand)."""
    def judge(epoch, value, last):
        trial.report(value, epoch)
        if not last and trial.should_prune():
            raise Pruned()
    return judge


def study_storage(url, files):
    """(Optuna storage, the lock its workers ask for trials under): the journal file in the table's folder of `files`
    and a file lock on one machine, or a PostgreSQL server (`url`) and its advisory lock across machines."""
    import optuna

    if url is None:
        files.mkdir(parents=True, exist_ok=True)
        with _file_locked(files / "search.lock"):  # no worker appends while the journal is checked
            repair_journal(files / STUDIES_FILE)
        backend = optuna.storages.journal.JournalFileBackend(str(files / STUDIES_FILE))
        return optuna.storages.JournalStorage(backend), lambda: _file_locked(files / "search.lock")
    if not url.startswith(("postgresql://", "postgresql+psycopg://")):
        raise UserError(f"--search-storage takes a PostgreSQL URL (postgresql://USER@HOST:PORT/DATABASE), got {url!r}")
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as e:  # a server that cannot be reached or refuses the login: say so in one line
        raise UserError(f"cannot open the study storage {url}: {str(e).strip().splitlines()[0]}") from None
    return storage, lambda: _advisory_locked(storage)


def whole_records(path):
    """(bytes of the journal's leading whole records, the line number of the first that is not one or None, how many
    lines it has): Optuna writes one JSON record a line, and a full disk or a kill can leave the last one cut short."""
    good, bad, lines = 0, None, path.read_bytes().splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except ValueError:
            bad = number
        if bad is None and not line.endswith(b"\n"):
            bad = number
        if bad is not None:
            break
        good += len(line)
    return good, bad, len(lines)


def repair_journal(path):
    """Cut the journal back to its whole records when only its last line is damaged (what a full disk or a kill while
    Optuna appends leaves), keeping the damaged file beside it; a damaged record before others is refused in one
    line, since cutting there would lose the records after it."""
    if not path.exists():
        return
    good, bad, lines = whole_records(path)
    if bad is None:
        return
    if bad < lines:
        raise UserError(f"{path} has a damaged record at line {bad} of {lines}; move it away to start the studies "
                        f"afresh (their runs stay in the table, and the finished ones are reused, not trained again)")
    kept = path.with_name(path.name + ".damaged")
    shutil.copyfile(path, kept)
    with open(path, "r+b") as journal:
        journal.truncate(good)
    print(f"note: the last line of {path} was not a whole record (a full disk or a kill while it was written): the "
          f"studies continue from the {bad - 1} whole records before it; the damaged file is kept as {kept.name}",
          file=sys.stderr)


def next_trial(launch, study, count, distributions, lock, seed):
    """(a new trial for this worker, or None; whether other workers still run trials), decided under a file lock so
    that the workers of one study together ask for exactly `count` trials that end complete or pruned."""
    import optuna

    with lock():
        fail_abandoned_trials(launch, study)
        running = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        if len(complete_trials(study)) + len(running) >= count:
            return None, bool(running)
        # Seeded from the config's seed and the trial's place in the study: one worker proposes the same trials in
        # the same order, and two workers never draw the same proposal.
        study.sampler = optuna.samplers.TPESampler(seed=_mixed(seed, len(study.trials)))
        trial = study.ask(distributions)
        process = liveness.this_process()
        trial.set_user_attr("worker", [process.host, process.pid, process.token])
        return trial, bool(running)


def fail_abandoned_trials(launch, study):
    """Mark failed the trials whose worker is gone (killed): the other workers then finish the study."""
    import optuna

    for trial in study.trials:
        if trial.state != optuna.trial.TrialState.RUNNING:
            continue
        host, pid, token = trial.user_attrs.get("worker", [None, None, None])
        runs = trial.user_attrs.get("runs", [])
        if not worker_is_gone(launch, host, pid, token, runs):
            continue
        value = finished_value(launch, runs)
        try:
            if value is not None:  # its runs finished, the journal lost what came after (a cut line): told
                study.tell(trial.number, value)
                print(f"trial {trial.number}: its runs finished but the study had not heard of it; their value is "
                      f"told", flush=True)
            else:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                print(f"trial {trial.number} was left running by a worker that is gone: marked failed", flush=True)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # its worker told it in the meantime: the trial is the worker's, as it should be


def worker_is_gone(launch, host, pid, token, runs):
    """Whether the worker of a running trial is gone: on this host, its process ended (or it is this very process,
    which runs no trial while it asks for one); on another, whose process cannot be asked, its runs stopped without
    finishing (the lease marked them failed). A worker alive between two seeds of its trial, or about to tell a value,
    has no run running and is not gone."""
    me = liveness.this_process()
    if host is None or (host, pid, token) == (me.host, me.pid, me.token):
        return True  # a worker asks for its next trial between two: a trial still its own was left (a lost record)
    if host == me.host:
        return liveness.is_gone(liveness.Process(host, pid, token))
    statuses = [launch.project.table.status(run_id) for run_id in runs]
    return bool(statuses) and "running" not in statuses and any(status != "finished" for status in statuses)


def finished_value(launch, runs):
    """The trial's value when every run it needs (one per seed) finished, as the table records them; else None."""
    wanted = launch.args.seeds or 1
    if len(runs) != wanted or any(launch.project.table.status(run_id) != "finished" for run_id in runs):
        return None
    metric = launch.measures().selected_result
    values = [read_run(launch.project.table.path, run_id).results.get(metric) for run_id in runs]
    if any(value is None or math.isnan(value) for value in values):
        return None
    return sum(values) / len(values)


@contextmanager
def _file_locked(path):
    """An exclusive lock on `path` between the processes of one machine."""
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


ADVISORY_KEY = 7_104_213  # the PostgreSQL advisory lock the template's searches take (any fixed number would do)


@contextmanager
def _advisory_locked(storage):
    """An exclusive lock between the workers of every machine that share the PostgreSQL server of `storage`."""
    from sqlalchemy import text

    with storage.engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_KEY})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})


def print_summary(launch, study, dimensions, fixed, measures, direction):
    """The top trials by validation, the held-out test value of the same metric for the best one, and the command to
    confirm it."""
    import optuna

    metric = measures.selected_result
    trials = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value,
                    reverse=direction == "maximize")
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    if not trials:
        print(f"\nno trial completed ({pruned} pruned); widen the space or search without --prune")
        return
    print(f"\ntop {min(SHOWN, len(trials))} of {len(trials)} complete trials by {metric} (validation)"
          + (f"; {pruned} pruned" if pruned else "") + ":")
    for trial in trials[:SHOWN]:
        runs = trial.user_attrs.get("runs", [])
        values = [read_run(launch.project.table.path, run_id).results[metric] for run_id in runs]
        summary = summarise(values)
        interval = (f" (95% CI {summary.ci95[0]:.4f} to {summary.ci95[1]:.4f})" if summary.ci95 else "")
        params = " ".join(f"{d.key}={d.text(trial.params[d.key])}" for d in dimensions)
        print(f"  trial {trial.number}: {metric} {trial.value:.4f}{interval}  {params}  runs "
              f"{', '.join(map(str, runs))}")
    best = trials[0]
    held_out = measures.held_out_result
    tests = [read_run(launch.project.table.path, run_id).results.get(held_out) for run_id in best.user_attrs["runs"]]
    if all(value is not None for value in tests):
        print(f"held-out {held_out} of the best trial (for reporting the choice, not for making it): "
              f"{sum(tests) / len(tests):.4f}")
    overrides = [*fixed, *((d.key, d.text(best.params[d.key])) for d in dimensions)]
    flags = [f"--{name}={value}" for name, value in launch.result_flags().items()]
    print("confirm it with more seeds against the baseline:\n  python main.py "
          f"--experiment={launch.args.experiment} --config={launch.args.config} "
          + " ".join([*flags, *(f"--config.{key}={value}" for key, value in overrides if key != SEED_KEY)])
          + " --seeds=5\n  python main.py --compare --experiment=" + launch.args.experiment)


def read_studies(table_path):
    """{study name: Study} of the searches recorded beside the run table at `table_path` ({} when none), loaded
    without writing; a study whose trials name runs the table does not hold (copied from elsewhere) is left out."""
    path = table_files(table_path) / STUDIES_FILE
    if not path.exists():
        return {}
    studies = {}
    for name, study in _journal_studies(path).items():
        foreign = foreign_trials(study, table_path)
        if foreign:
            number, run_id = next(iter(foreign.items()))
            print(f"note: the study {name} in {path} is not shown: its trial {number} names run {run_id}, which "
                  f"{table_path} does not hold (a journal copied from another results folder)", file=sys.stderr)
        else:
            studies[name] = study
    return studies


def _journal_studies(path):
    """{study name: Study} of the journal at `path`, up to its last whole record, read without writing."""
    import optuna

    good, bad, _ = whole_records(path)
    if bad is None:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        return {summary.study_name: optuna.load_study(study_name=summary.study_name, storage=storage)
                for summary in optuna.get_all_study_summaries(storage)}
    # Its whole records, read from a copy into memory: reading never changes the journal.
    print(f"note: {path} has a damaged record at line {bad}; showing the {bad - 1} whole records before it",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / STUDIES_FILE
        copy.write_bytes(path.read_bytes()[:good])
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(copy)))
        memory = optuna.storages.InMemoryStorage()
        for summary in optuna.get_all_study_summaries(storage):
            optuna.copy_study(from_study_name=summary.study_name, from_storage=storage, to_storage=memory)
    return {summary.study_name: optuna.load_study(study_name=summary.study_name, storage=memory)
            for summary in optuna.get_all_study_summaries(memory)}


def _mixed(seed, position):
    return int.from_bytes(hashlib.sha256(f"{seed}:{position}".encode()).digest()[:4], "big")
