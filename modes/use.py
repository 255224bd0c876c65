"""A recorded run as a model you can use: load it (load_run in main.py), score it on other data (--evaluate), sample
from it (--sample), hand it to a colleague (--export).

Every one of them goes through what the run's experiment declares (its model, its data description, its evaluation,
its sampler: experiments/__init__.py) and through the run's own checkpoint, read with the safe loader and checked to
be the run's. None of them writes to a run's rows: an evaluation is a run of its own, linked to the run it scored.
"""
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from data.registry import check_fits, description_from_json, description_json
from modes.launch import command_of
from modes.run import DATA_TEXT, format_value
from utils.config import dump_config, flatten_values, load_config_text, without_keys
from utils.errors import UserError
from utils.measures import Measures
from utils.provenance import git_commit, git_diff
from utils.runtable.identity import EVALUATES, RunIdentity
from utils.runtable.readers import finished_runs, read_run, recorded_commands, run_text
from utils.stats import summarise
from utils.stopping import stops_held

EXPORT_FILES = ("model.safetensors", "config.yml", "data.json", "run.json", "README.md")


@dataclass
class LoadedRun:
    """A recorded run (or an export of one) as a model: what load_run returns."""
    run_id: int  # the run's ID in the table it was recorded in (an export keeps it)
    experiment: str
    config: dict  # its merged config, as its experiment got it
    measures: Measures  # what it measured and which way is better
    data: object  # what its model knows of the data (DataInfo, TextInfo)
    model: object  # its model (torch.nn.Module) with the weights of `epoch`, in eval mode, on the device asked for
    epoch: int | None  # the epoch whose weights the model holds
    results: dict  # its recorded results
    source: Path  # the checkpoint or the export folder it was read from


def load(project, run, last=False, device="cpu") -> LoadedRun:
    """The LoadedRun of `run`: a run ID of the project's table, or a folder --export wrote (see main.load_run)."""
    if isinstance(run, (str, Path)) and not str(run).lstrip("-").isdigit():
        return load_export(project, Path(run), device)
    run_id = int(run)
    table = project.table.path
    if not table.exists():
        raise UserError(f"there is no run table at {table}, so no run {run_id} to load")
    recorded = read_run(table, run_id)
    identity = recorded.identity
    if identity.flags.get(EVALUATES) is not None:
        raise UserError(f"run {run_id} is an evaluation of run {identity.flags[EVALUATES]}, not a trained model; load "
                        f"run {identity.flags[EVALUATES]}")
    experiment = registered(project, identity.experiment, f"run {run_id}")
    config = project.runnable(load_config_text(identity.config_text))
    described = run_text(table, run_id, DATA_TEXT)
    data = description_from_json(described) if described else experiment.describe_data(config)  # recorded before
    name = "last.pt" if last else "best.pt"
    path = project.table.folder(run_id) / name
    if not path.is_file():
        advice = (f"resume it first (python main.py --resume={run_id})" if recorded.status == "failed" else
                  f"it is {recorded.status}" if recorded.status == "running" else "its folder lost the file")
        raise UserError(f"run {run_id} has no {name} in {path.parent}: it never finished an epoch, or {advice}")
    import torch

    from utils.checkpoint import check_owner, read_checkpoint
    from utils.distributed import unwrap

    device = torch.device(device)
    model = experiment.model(config, data, device)
    state = read_checkpoint(path, device)
    check_owner(path, identity.owner, state)
    try:
        unwrap(model).load_state_dict(state["model"])
    except RuntimeError as error:
        raise UserError(f"run {run_id}'s {name} does not fit the model {identity.experiment} builds now "
                        f"({str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else error}): its "
                        f"code changed shape since the run; check out the commit it ran "
                        f"({(recorded.commit or 'unknown')[:12]}) to load it") from None
    model.eval()
    return LoadedRun(run_id, identity.experiment, config, identity.measures, data, model, state.get("epoch"),
                     recorded.results, path)


def registered(project, name, what):
    """The registered Experiment `name` that can build the model of `what`, or a UserError saying why not."""
    if name not in project.experiments:
        raise UserError(f"{what} was recorded by experiment {name!r}, which main.py no longer registers "
                        f"(registered: {', '.join(project.experiments)}); register it again to use the run")
    experiment = project.experiments[name]
    if experiment.model is None:
        raise UserError(f"experiment {name} declares no model, so {what} cannot be built again; declare model= and "
                        f"describe_data= in its @declare(...) (see experiments/experiment1.py)")
    return experiment


# ---- --export=RUNID --to=DIR, and loading an export ----

def export_mode(launch):
    """Exit code of writing run `--export`'s best model, config, data description and model card to `--to`."""
    if launch.args.to is None:
        raise UserError(f"--export={launch.args.export} needs --to=DIR, the folder to write the export into")
    project, run_id, folder = launch.project, launch.args.export, Path(launch.args.to)
    loaded = load(project, run_id)
    files = export_files(project, loaded)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        if folder.is_dir() and same_files(folder, files):
            print(f"{folder} already holds this export of run {run_id}")
            return 0
        raise UserError(f"{folder} exists and holds something other than this export of run {run_id}; choose a new "
                        f"or empty folder, nothing was written")
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    print(f"exported run {run_id} ({loaded.experiment}, epoch {loaded.epoch}) to {folder}: {', '.join(files)}")
    print(f"load it with: from main import load_run; run = load_run({str(folder)!r})")
    return 0


def export_files(project, loaded):
    """{file name: bytes} of the export of `loaded` (the same bytes for the same run)."""
    from safetensors.torch import save_model

    from utils.distributed import unwrap

    table = project.table.path
    recorded = read_run(table, loaded.run_id)
    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        weights = Path(scratch) / "model.safetensors"
        # save_model keeps one copy of tied weights (charlm's embedding and output layer share one)
        save_model(unwrap(loaded.model), str(weights), metadata={"experiment": loaded.experiment,
                                                                 "run_id": str(loaded.run_id)})
        model_bytes = weights.read_bytes()
    group = group_summary(table, loaded.run_id)
    about = {"format": 1, "experiment": loaded.experiment, "run_id": loaded.run_id, "epoch": loaded.epoch,
             "measures": json.loads(loaded.measures.to_json()), "results": loaded.results,
             "data_fingerprint": recorded.identity.data, "commit": recorded.commit,
             "uncommitted_changes": bool(recorded.diff), "command": recorded_command(table, loaded.run_id),
             "group": group}
    return {"model.safetensors": model_bytes, "config.yml": recorded.identity.config_text.encode(),
            "data.json": description_json(loaded.data).encode(),
            "run.json": json.dumps(about, indent=2, sort_keys=True).encode(),
            "README.md": model_card(about).encode()}


def same_files(folder, files):
    """Whether `folder` holds exactly `files`: the same text files, byte for byte, and the same weights (safetensors
    writes its header's metadata in no fixed order)."""
    present = sorted(path.name for path in folder.iterdir())
    if present != sorted(files):
        return False
    if any((folder / name).read_bytes() != content for name, content in files.items() if name != "model.safetensors"):
        return False
    return same_weights((folder / "model.safetensors").read_bytes(), files["model.safetensors"])


def same_weights(first, second):
    """Whether two safetensors files hold the same tensors and metadata."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    def header(content):
        size = int.from_bytes(content[:8], "little")
        return json.loads(content[8:8 + size]).get("__metadata__", {})

    try:
        a, b = load(first), load(second)
        return header(first) == header(second) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    except (SafetensorError, ValueError):
        return False


def recorded_command(table, run_id):
    return recorded_commands(table, [run_id]).get(run_id)


def group_summary(table, run_id):
    """{result: [n, mean, low, high]} of the 95% intervals of the run's group of seeds (the runs that differ only in
    their seed), or None when the run is alone in it."""
    runs, _ = finished_runs(table)
    own = next((run for run in runs if run.run_id == run_id), None)
    members = [run for run in runs if own is not None and run.group == own.group]
    if len(members) < 2:
        return None
    summary = {}
    for name in own.results:
        values = [run.results.get(name) for run in members]
        if all(isinstance(value, (int, float)) for value in values):
            found = summarise(values)
            summary[name] = [found.n, found.mean, *(found.ci95 or (None, None))]
    return {"runs": [run.run_id for run in members], "results": summary}


def model_card(about):
    """The README.md of an export: what the model is, how it did, how to make it again and how to load it."""
    measures = Measures.from_json(json.dumps(about["measures"]))
    lines = [f"# {about['experiment']}, run {about['run_id']}", "",
             f"The model of run {about['run_id']} of the experiment `{about['experiment']}`, with the weights of its "
             f"epoch {about['epoch']}, the one its validation {measures.select} ({measures.better[measures.select]} "
             f"is better) selected.", "",
             "| | |", "|---|---|",
             f"| experiment | `{about['experiment']}` |",
             f"| data fingerprint | `{about['data_fingerprint'] or 'none recorded'}` |",
             f"| code | commit `{about['commit'] or 'none (not a git checkout)'}`"
             f"{', with uncommitted changes (the run table holds them)' if about['uncommitted_changes'] else ''} |",
             "", "## Results", ""]
    group = about["group"]
    header = "| result | this run |" + (f" its group of {len(group['runs'])} seeds: mean (95% interval) |"
                                       if group else "")
    lines += [header, "|---|---|" + ("---|" if group else "")]
    for name in measures.ordered(about["results"]):
        value = about["results"][name]
        row = f"| {name} | {format_value(value)} |"
        if group and name in group["results"]:
            n, mean, low, high = group["results"][name]
            row += f" {mean:.4f} ({low:.4f} to {high:.4f}) |" if low is not None else f" {mean:.4f} |"
        elif group:
            row += " |"
        lines.append(row)
    if group:
        lines += ["", f"The group: runs {', '.join(map(str, group['runs']))}."]
    lines += ["", "## Make it again", "", "In the template's checkout, at the commit above:", "", "```",
              f"python {about['command']}" if about["command"] else "(no command was recorded)", "```", "",
              "## Load it", "", "From the template's checkout (the experiment's code builds the model; this folder "
              "holds its weights as safetensors, its config and its data description):", "", "```python",
              "from main import load_run", "", "run = load_run(\"PATH/TO/THIS/FOLDER\")",
              "run.model  # in eval mode, on the CPU (device=\"cuda\" for a GPU)", "```", ""]
    return "\n".join(lines)


def load_export(project, folder, device="cpu") -> LoadedRun:
    """The LoadedRun of a folder --export wrote."""
    if not folder.is_dir() or not (folder / "run.json").is_file():
        raise UserError(f"{folder} is not a run ID nor a folder --export wrote (it has no run.json); pass a run ID "
                        f"or an export's folder")
    missing = [name for name in EXPORT_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(f"the export {folder} lacks {', '.join(missing)}; export the run again")
    try:
        about = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        config_text = (folder / "config.yml").read_text(encoding="utf-8")
        data = description_from_json((folder / "data.json").read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"the export {folder} is damaged ({type(error).__name__}); export the run again") from None
    experiment = registered(project, about["experiment"], f"the export {folder}")
    config = project.runnable(load_config_text(config_text))
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from utils.distributed import unwrap

    device = torch.device(device)
    model = experiment.model(config, data, device)
    try:
        load_model(unwrap(model), str(folder / "model.safetensors"), strict=True, device=str(device))
    except (RuntimeError, SafetensorError) as error:
        raise UserError(f"the weights of {folder} do not fit the model {about['experiment']} builds now "
                        f"({str(error).splitlines()[0][:200]}); check out the commit the run ran "
                        f"({(about.get('commit') or 'unknown')[:12]}) to load it") from None
    model.eval()
    return LoadedRun(about["run_id"], about["experiment"], config, Measures.from_json(json.dumps(about["measures"])),
                     data, model, about.get("epoch"), about["results"], folder)


# ---- --sample=RUNID ----

def sample_mode(launch):
    """Exit code of printing the text run `--sample`'s model writes after --prompt."""
    args, project = launch.args, launch.project
    if args.length < 1:
        raise UserError(f"--length=N writes N >= 1 characters, got {args.length}")
    if not args.temperature > 0:
        raise UserError(f"--temperature=T takes T > 0 (lower: surer, higher: more varied), got {args.temperature}")
    loaded = load(project, args.sample)
    experiment = project.experiments[loaded.experiment]
    if experiment.sample is None:
        raise UserError(f"run {args.sample} is a run of {loaded.experiment}, which declares no sampler: --sample "
                        f"writes text from language models (charlm, or an experiment that declares sample=)")
    use_recorded_threads(project, args.sample)
    seed = args.seed if args.seed is not None else loaded.config.get("seed", 0)
    text = experiment.sample(loaded.model, loaded.data, args.prompt, args.length, args.temperature, seed)
    print(args.prompt + text)
    return 0


def use_recorded_threads(project, run_id):
    """Compute with the CPU threads run `run_id` computed with: other counts sum in another order."""
    from utils.device import set_threads

    threads = read_run(project.table.path, run_id).threads
    if threads:
        set_threads(int(threads))


# ---- --evaluate=RUNID ----

def evaluate_mode(launch):
    """Exit code of scoring run `--evaluate`'s best model on the data the data.* overrides name, recorded as a run of
    its own (identified by the run and the data's content)."""
    args, project = launch.args, launch.project
    run_id = args.evaluate
    table = project.table
    if not table.path.exists():
        raise UserError(f"there is no run table at {table.path}, so no run {run_id} to evaluate")
    recorded = read_run(table.path, run_id)
    if recorded.identity.flags.get(EVALUATES) is not None:
        raise UserError(f"run {run_id} is an evaluation; evaluate the run it scored "
                        f"(--evaluate={recorded.identity.flags[EVALUATES]})")
    experiment = registered(project, recorded.identity.experiment, f"run {run_id}")
    if experiment.evaluate is None:
        raise UserError(f"experiment {recorded.identity.experiment} declares no evaluate=, so its runs cannot be "
                        f"scored on other data; declare one (see experiments/experiment1.py)")
    others = [key for key, _ in launch.overrides if not key.startswith("data.")]
    if others:
        raise UserError(f"--evaluate scores the run's own model: only data keys may change (--config.data.KEY=VALUE), "
                        f"drop --config.{others[0]}")
    config = launch.overridden(load_config_text(recorded.identity.config_text), launch.overrides)
    identity = RunIdentity(recorded.identity.experiment, dump_config(config), {EVALUATES: run_id}, "",
                           project.rules.where_keys, project.data_fingerprint(recorded.identity.experiment, config),
                           measures=recorded.identity.measures, old_names=project.rules.old_names)
    found = None if args.debug else table.find_run(identity)  # before any data or model is loaded
    if found is not None:
        raise UserError(f"run {run_id} was evaluated on this data already: run {found.run_id} ({found.status}); to "
                        f"evaluate it again use --debug (recorded as run -1, replaced by the next debug run)")
    runnable = project.runnable(config)
    described = run_text(table.path, run_id, DATA_TEXT)
    if described:  # data the model cannot take is refused before anything is recorded
        check_fits(experiment.describe_data(runnable), description_from_json(described))
    with stops_held():  # torch loads whole (a stop in the middle of its import can abort the interpreter)
        from utils.device import pick_device
        from utils.seed import seed_everything

        device = pick_device(force_cpu=recorded.identity.flags.get("cpu", False))
        loaded = load(project, run_id, device=device)  # a checkpoint it cannot load is refused before a row exists
    run = table.start_run(identity, config_path=f"(run {run_id})", command=command_of(launch.argv),
                          commit=git_commit(project.code_dir), diff=git_diff(project.code_dir), debug=args.debug)
    with run:
        training = runnable.get("training", {})
        seed_everything(runnable.get("seed", 0), deterministic=training.get("deterministic", True))
        use_recorded_threads(project, run_id)
        run.log_hparams({EVALUATES: run_id, **flatten_values(without_keys(config, set()))})
        run.log_text(DATA_TEXT, description_json(experiment.describe_data(runnable)))  # what it scored on
        metrics = experiment.evaluate(runnable, loaded.model, loaded.data, device)
        results = {f"test_{name}": value for name, value in metrics.items()}
        run.finish(results)
    print(f"run {run.id}: the evaluation of run {run_id} ({recorded.identity.experiment}, epoch {loaded.epoch}) on "
          f"data {(identity.data or 'none')[:12]}: " + ", ".join(f"{k} {format_value(v)}" for k, v in results.items()))
    return 0
