"""--compare: groups of runs that differ only in their seed, their means with 95% intervals, and whether each group
really differs from a reference group (a paired t-test over shared seeds, Welch's otherwise).

    python main.py --compare [RUNID ...] [--experiment=NAME] [--config=FILE [overrides]] [--against=RUNID]
                   [--format=table|markdown|json]
"""
import json
import math
import sys
import warnings
from pathlib import Path

from utils.config import flatten_values, load_config_text, without_keys
from utils.errors import UserError, one_line
from utils.runtable.identity import SEED_KEY
from utils.runtable.readers import (config_texts, evaluations, finished_runs, pruned_runs, recorded_commands,
                                    recorded_config_paths)
from utils.stats import compare, summarise
from utils.tables import table_lines

BASELINE_CONFIG = "configs/config.yml"  # the reference group: this config of the same experiment, as it is
SIGNIFICANCE = 0.05


def compare_mode(launch):
    """Print the comparison in the chosen format; exit code 0 (a comparison is a reading, never a verdict)."""
    groups = compared_groups(launch)
    fmt = launch.args.format
    print(json.dumps(groups, indent=2) if fmt == "json" else printable(render(groups, markdown=fmt == "markdown")))
    pruned = pruned_runs(launch.project.table.path)
    if pruned:
        print(f"note: run{'s' if len(pruned) > 1 else ''} {', '.join(map(str, pruned))} pruned by a search: stopped "
              f"early without results, not compared", file=sys.stderr)
    return 0


def compared_groups(launch):
    """The groups the command selects, as the JSON format lists them: the references first, then the others."""
    path = launch.project.table.path
    if not path.exists():
        raise UserError(f"there is no run table at {path}, so no run to compare")
    project = launch.project
    groups, left_out = grouped_runs(path, project.rules.where_keys)
    chosen = choose_groups(launch, groups, left_out)
    if left_out:
        print(f"note: {left_out_note(left_out)}", file=sys.stderr)
    against = launch.args.against
    return comparison(path, groups, chosen, project.code_dir, project.rules.where_keys, against, project.rules.implied,
                      project.rules.old_names)


def grouped_runs(path, where_keys=()):
    """({group key: [FinishedRun, ...]} of every finished run in the table, in order of the groups' first runs; the
    IDs of the finished runs left out, whose config is not YAML: runs another program wrote into the table)."""
    groups = {}
    runs, left_out = finished_runs(path, where_keys)
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    if not groups:
        raise UserError(f"{path} holds no finished run to compare" + (f" ({runs_named(left_out)} "
                        f"{'has' if len(left_out) == 1 else 'have'} no YAML config: another program wrote "
                        f"{'it' if len(left_out) == 1 else 'them'})" if left_out else ""))
    return groups, left_out


def left_out_note(run_ids):
    return (f"{runs_named(run_ids)} left out: no config, record or results that can be read (written into the "
            f"table by another program, or damaged)")


def runs_named(run_ids):
    return f"run{'s' if len(run_ids) > 1 else ''} {', '.join(map(str, run_ids))}"


def comparison(path, groups, chosen=None, code_dir=None, where_keys=(), against=None, implied=None, old_names=()):
    """The `chosen` groups (default: all) described, each against its experiment's reference group.

    A group's reference is the group of run `against`, else the group of its own config file as it is (no overrides,
    flags or comment), else that of `code_dir`/configs/config.yml, else its experiment's first group (with a note on
    stderr). References come first.
    """
    chosen = list(groups) if chosen is None else chosen
    sources = recorded_config_paths(path, [groups[key][0].run_id for key in chosen])
    references, noted = {}, set()
    for key in chosen:
        experiment = groups[key][0].experiment
        own = sources.get(groups[key][0].run_id)
        references[key] = reference_group(groups, experiment, [own, BASELINE_CONFIG], code_dir, where_keys, against,
                                          implied or {}, old_names)
        if references[key] is None:  # no run of its config as it is: the experiment's first group stands in
            references[key] = next(k for k, members in groups.items() if members[0].experiment == experiment)
            if (experiment, own) not in noted:
                noted.add((experiment, own))
                print(f"note: no finished run of {experiment} with {own or BASELINE_CONFIG} as it is; the reference "
                      f"is the group of run {groups[references[key]][0].run_id} (name another with --against=RUNID)",
                      file=sys.stderr)
    shown = list(dict.fromkeys([*references.values(), *chosen]))
    for key in shown:
        references.setdefault(key, key)
    texts = config_texts(path, [groups[key][0].run_id for key in shown])
    settings = {run_id: flatten_values(without_keys(load_config_text(text), {SEED_KEY, *where_keys}))
                for run_id, text in texts.items()}  # what a group shares: its config, without seed and where-keys
    commands = recorded_commands(path, [groups[key][0].run_id for key in shown])
    described = [describe_group(groups[key], groups[references[key]], references[key] == key, settings, commands)
                 for key in shown]
    scored = evaluations(path, of={run for group in described for run in group["runs"]})
    for group in described:  # an evaluation is shown with the run it scored, never as a run of the group
        group["evaluations"] = [{"run": found.run_id, "evaluates": found.evaluates, "data": found.data,
                                 "results": found.results} for found in scored if found.evaluates in group["runs"]]
    return described


def choose_groups(launch, groups, left_out=()):
    """The group keys that the command's filters select, in order of their first run."""
    args = launch.args
    if args.compare:
        wanted = set(args.compare)
        found = {run.run_id for members in groups.values() for run in members}
        missing = sorted(wanted - found)
        if missing and missing[0] in left_out:
            raise UserError(f"run {missing[0]} cannot be compared: it has no YAML config to group by (another program "
                            f"wrote it into the table)")
        if missing:
            raise UserError(f"run {missing[0]} is not a finished, visible run of {launch.project.table.path}; "
                            f"--compare groups finished runs only")
        return [key for key, members in groups.items() if wanted & {run.run_id for run in members}]
    if args.config is not None:
        if args.experiment is None:
            raise UserError("--compare with --config needs --experiment=NAME too (a group is one experiment's)")
        wanted = launch.project.identity(launch.description(), with_data=False).group_hash  # no data is read
        chosen = [key for key in groups if key[0] == wanted]
        if not chosen:
            raise UserError(f"no finished run of {args.experiment} with {args.config} and these overrides and flags; "
                            f"run some with --seeds=N")
        return chosen
    return [key for key, members in groups.items() if args.experiment in (None, members[0].experiment)]


def reference_group(groups, experiment, config_paths, code_dir, where_keys, against, implied, old_names=()):
    """The key of the reference group for a group of `experiment`: --against's, or the group of the first of
    `config_paths` (as recorded: relative to the launch folder or the checkout) that has runs as it is; or None."""
    if against is not None:
        for key, members in groups.items():
            if against in {run.run_id for run in members}:
                return key
        raise UserError(f"--against={against} is not a finished, visible run; name one of --compare's")
    from utils.config import dump_config, load_config, unset_implied
    from utils.runtable.identity import RunIdentity

    for config_path in filter(None, config_paths):
        found = [Path(config_path), *([Path(code_dir) / config_path] if code_dir is not None else [])]
        file = next((candidate for candidate in found if candidate.is_file()), None)
        if file is None:
            continue
        try:
            config = unset_implied(load_config(file), implied)
        except UserError:  # the file changed shape since: it names no group
            continue
        wanted = RunIdentity(experiment, dump_config(config), where_keys=where_keys, old_names=old_names).group_hash
        key = next((key for key in groups if key[0] == wanted and groups[key][0].experiment == experiment), None)
        if key is not None:
            return key
    return None


def describe_group(runs, reference, is_reference, settings, commands=None):
    """One group as the JSON format gives it: runs, seeds, differing config, metric summaries, test vs reference.

    `settings` maps the first run ID of each group to its flattened config, `commands` to its recorded command.
    """
    config, reference_config = settings[runs[0].run_id], settings[reference[0].run_id]
    differing = {key: value for key, value in config.items() if reference_config.get(key) != value}
    differing.update({key: None for key in reference_config if key not in config})
    group = {"runs": [run.run_id for run in runs], "seeds": [run.seed for run in runs],
             "experiment": runs[0].experiment, "flags": runs[0].cli, "comment": runs[0].comment,
             "config": differing, "reference": is_reference, "metrics": {}}
    names = [name for name in runs[0].results if all(_is_number(run.results.get(name)) for run in runs)]
    measures = runs[0].measures
    for name in names:
        summary = summarise([run.results[name] for run in runs])
        group["metrics"][name] = {"n": summary.n, "mean": summary.mean, "std": summary.std,
                                  "ci95": list(summary.ci95) if summary.ci95 else None, "role": role_of(name),
                                  "better": measures.direction_of(name)}
    group["selects"] = measures.selected_result
    if not is_reference:
        short = runs if len(runs) < 2 else reference if len(reference) < 2 else None
        if short is not None:  # which group lacks seeds for a test, and the command that adds them
            group["needs_seeds"] = {"group": "this group" if short is runs else "the reference",
                                    "runs": [run.run_id for run in short],
                                    "command": (commands or {}).get(short[0].run_id)}
        group["vs_reference"] = {}
        for name in names:
            if not all(_is_number(run.results.get(name)) for run in reference):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy warns on identical values; its NaN p is handled
                difference = compare({run.seed: run.results[name] for run in runs},
                                     {run.seed: run.results[name] for run in reference})
            group["vs_reference"][name] = None if difference is None else {
                "diff": difference.diff, "ci95": list(difference.ci95) if difference.ci95 else None,
                "p_value": difference.p_value, "test": difference.test, "n": difference.n,
                "no_test": difference.no_test}
    return group


def role_of(metric):
    """'validation' for the metrics a choice is made by, 'held out' for the test set's (reported, never chosen by)."""
    return "validation" if metric.startswith("best_val_") else "held out" if metric.startswith("test_") else "other"


def sentence(name, n_runs, comparison, needs_seeds=None, better=None):
    """What a comparison means, in plain words; `better` ("higher", "lower" or None) is the way the runs recorded
    that this result is better."""
    if comparison is None:
        short = needs_seeds or {"group": "a group", "runs": [], "command": None}
        runs = ", ".join(map(str, short["runs"]))
        add = (f"python {short['command']} --seeds=3" if short["command"] else "its command with --seeds=3")
        return (f"{name}: too few runs to test a difference: {short['group']} has {len(short['runs'])} "
                f"(run{'s' if len(short['runs']) != 1 else ''} {runs}) and each group needs 2; add seeds with {add}")
    diff, p = comparison["diff"], comparison["p_value"]
    if p is None:
        over = "seeds" if comparison["test"] == "paired t" else "runs"
        return (f"{name}: {diff:+.3g}, no test possible ({comparison['no_test']}; "
                f"{comparison['test']} over {comparison['n']} {over})")
    low, high = comparison["ci95"]
    numbers = (f"95% CI {low:+.3g} to {high:+.3g}, p={p:.2g}, {comparison['test']} over "
               f"{comparison['n']} {'seeds' if comparison['test'] == 'paired t' else 'runs'}")
    if p >= SIGNIFICANCE:
        return (f"{name}: no detectable difference with {n_runs} seed{'s' if n_runs != 1 else ''} "
                f"({diff:+.3g}, {numbers})")
    if better is not None:
        word = "better" if (diff > 0) == (better == "higher") else "worse"
    else:
        word = "higher" if diff > 0 else "lower"
    return f"{name}: {word} by {abs(diff):.3g} ({numbers})"


def printable(text):
    """`text` with what a table holds that a terminal would act on (escape sequences in a comment or a command)
    written as escapes, line by line."""
    return "\n".join(one_line(line) for line in text.split("\n"))


def render(groups, markdown=False):
    """The groups as readable text (or Markdown tables to paste into a lab book)."""
    out = []
    for group in groups:
        title = _title(group)
        out.append(f"### {title}" if markdown else title)
        header = ["metric", "n", "mean", "std", "95% CI"]
        versus = group.get("vs_reference")
        if versus is not None:
            header += ["vs reference", "95% CI", "p", "test"]
        rows = []
        for name, metric in group["metrics"].items():
            row = [name, str(metric["n"]), _num(metric["mean"]), _num(metric["std"]), _interval(metric["ci95"])]
            if versus is not None:
                comparison = versus.get(name)
                row += (["", "", "", "too few runs"] if comparison is None else
                        [f"{comparison['diff']:+.5g}",
                         "none" if comparison["ci95"] is None else _interval(comparison["ci95"]),
                         "none" if comparison["p_value"] is None else f"{comparison['p_value']:.2g}",
                         comparison["test"]])
            rows.append(row)
        out += table_lines([header, *rows], indent="  ", markdown=markdown)
        if versus is not None:  # the validation metric decides; the test set's results are reported, held out
            n_runs = len(group["runs"])
            judged = [name for role in ("validation", "held out") for name in group["metrics"]
                      if role_of(name) == role and name in versus]
            out += [("- " if markdown else "  ") + sentence(name, n_runs, versus.get(name), group.get("needs_seeds"),
                                                            group["metrics"][name].get("better"))
                    + (" [held out: report it, do not choose by it]" if role_of(name) == "held out" else "")
                    for name in judged]
        for found in group.get("evaluations", []):
            results = ", ".join(f"{name} {_num(found['results'][name])}" for name in found["results"])
            out.append(f"{'- ' if markdown else '  '}run {found['run']} evaluated run {found['evaluates']} on data "
                       f"{(found['data'] or 'none')[:12]}: {results}")
        out.append("")
    return "\n".join(out).rstrip()


def _title(group):
    seeds = ", ".join(str(seed) for seed in group["seeds"])
    settings = " ".join(f"{key}={value}" for key, value in group["config"].items())
    what = " ".join(filter(None, [group["experiment"], settings, group["flags"],
                                  group["comment"] and repr(group["comment"])]))
    role = " (reference)" if group["reference"] else ""
    runs = ", ".join(str(run) for run in group["runs"])
    return f"{what}{role}: {len(group['runs'])} run{'s' if len(group['runs']) > 1 else ''} ({runs}), seeds {seeds}"


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _num(value):
    return "" if value is None else f"{value:.5g}"


def _interval(interval):
    return "no interval (1 run)" if interval is None else f"{interval[0]:.5g} to {interval[1]:.5g}"
