"""Load the YAML baseline, merge typed `--config.a.b=value` overrides onto it, dump it canonically.

This is the only module that parses overrides. Values are typed as YAML reads them, with one fix: plain YAML 1.1
reads `1e-4` as a string, so the loader here also reads exponent floats without a dot, in files and overrides alike.
"""
import copy
import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from utils.errors import MissingKey, UserError

OVERRIDE_PREFIX = "--config."
PROJECT_CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # this checkout's configs: any config extends them
EXTENDS = "extends"  # the key of a variant config that names its base file


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` and `1E5` as floats (YAML 1.2 does; PyYAML's 1.1 rules need a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


MAX_CONFIG_BYTES = 1 << 20  # a config holds parameters: a larger file is a mistake (or data), refused unread
MAX_CONFIG_VALUES = 100_000  # values a config may expand to, aliases followed: an alias bomb is refused, not dumped


def parse_yaml_value(text):
    """The Python value YAML gives `text`: 5 -> int, 1e-4 -> float, true -> bool, null -> None, [1,2] -> list."""
    try:
        return bounded(yaml.load(text, Loader=_Loader), f"the value {text[:40]!r}")
    except yaml.YAMLError as e:
        raise UserError(f"cannot read {text!r} as a YAML value ({_first_line(e)})") from None


def bounded(value, what):
    """`value`, after checking that it expands to at most MAX_CONFIG_VALUES values: YAML aliases let a few hundred
    bytes stand for billions of values (or for a value that holds itself), which dumping or merging would expand."""
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise UserError(f"{what} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases repeating "
                            f"themselves?); a config holds parameters, write them out")
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return value


def load_config(path, _chain=(), _root=None):
    """The config dict of the YAML file at `path`, merged onto the file it `extends:` (a chain of them works).

    A variant holds only what it changes: `extends: config.yml` (a path relative to the variant's own folder) and the
    keys it sets; sections merge key by key, any other value replaces the base's. What a variant extends is a .yml or
    .yaml file in the configs of the file launched (see configs_root): the merged content is recorded with the run,
    so a chain must not pull in any other file the process can read.
    """
    path = Path(path)
    root = _root or configs_root(path)
    if _chain and (path.suffix.lower() not in (".yml", ".yaml")
                   or not any(path.resolve().is_relative_to(folder) for folder in (root, PROJECT_CONFIGS))):
        raise UserError(f"config file {_chain[-1]} extends {path}, which is not a .yml or .yaml file in {root} or "
                        f"{PROJECT_CONFIGS}; a config extends another config of the same project")
    if not path.is_file():
        if _chain:
            raise UserError(f"config file {_chain[-1]} extends {path}, which does not exist; fix its extends: line")
        raise UserError(f"config file {path} not found; pass an existing YAML file, e.g. --config=configs/config.yml")
    if path.resolve() in _chain:
        loop = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise UserError(f"config files extend each other in a loop ({loop}); one of them must stand alone")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is {path.stat().st_size:,} bytes; a config holds parameters (at most "
                        f"{MAX_CONFIG_BYTES:,} bytes), not data: point data.path at the data instead")
    try:
        config = bounded(yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader), f"config file {path}")
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {_first_line(e)}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise UserError(f"config file {path} cannot be read as text ({type(e).__name__}); pass a YAML file") from None
    if not isinstance(config, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (data:, model:, ...), "
                        f"not {type(config).__name__}")
    base = config.pop(EXTENDS, None)
    if base is None:
        return config
    if not isinstance(base, str):
        raise UserError(f"config file {path}: {EXTENDS}: names one YAML file, got {base!r}")
    return merge(load_config(path.parent / base, (*_chain, path.resolve()), root), config)


def configs_root(path):
    """The folder whose configs the config at `path` may extend: its nearest parent folder named configs (the
    project's configs/, whatever sub-folder it is in), else its own folder."""
    folder = Path(path).resolve().parent
    return next((parent for parent in (folder, *folder.parents) if parent.name == "configs"), folder)


def merge(base, changes):
    """A copy of `base` with `changes` applied: sections merge key by key, other values replace."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def without_keys(config, dotted_keys):
    """A copy of `config` without the keys named ('data.path'), without every key set to null (null is not set), and
    without the sections left empty by that."""
    def strip(section, prefix):
        kept = {}
        for name, value in section.items():
            if value is None or f"{prefix}{name}" in dotted_keys:
                continue
            if isinstance(value, dict):
                value = strip(value, f"{prefix}{name}.")
                if not value:
                    continue
            kept[name] = copy.deepcopy(value)
        return kept
    return strip(config, "")


def unset_implied(config, implied):
    """A copy of `config` with each dotted key of `implied` set to null where it has the implied value: runs recorded
    before the key existed had that value without saying so, and a null key is not part of a run's identity."""
    return with_changed_keys(config, implied, lambda key, value: None if value == implied[key] else value)


def with_renamed_keys(config, renamed):
    """A copy of `config` in which each dotted key of the (from, to) pairs `renamed` that it has, and whose new name it
    lacks, is moved to that name (in the same section or another)."""
    config = copy.deepcopy(config)
    for source, target in renamed:
        *sections, leaf = source.split(".")
        parent = config
        for section in sections:
            parent = parent.get(section) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or leaf not in parent:
            continue
        *target_sections, target_leaf = target.split(".")
        destination = config
        for section in target_sections:
            destination = destination.setdefault(section, {}) if isinstance(destination, dict) else None
        if isinstance(destination, dict) and target_leaf not in destination:
            destination[target_leaf] = parent.pop(leaf)
    return config


def with_changed_keys(config, dotted_keys, change):
    """A copy of `config` in which each of the `dotted_keys` it has holds `change(key, value)` instead of `value`."""
    config = copy.deepcopy(config)
    for key in dotted_keys:
        *sections, leaf = key.split(".")
        parent = config
        for section in sections:
            parent = parent.get(section) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and leaf in parent:
            parent[leaf] = change(key, parent[leaf])
    return config


def load_config_text(text):
    """The config dict of a recorded run: the exact inverse of dump_config (plain YAML 1.1 rules, as it was written).

    libyaml's loader, where PyYAML has it, reads the same values ten times faster (thousands of runs' configs).
    """
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def parse_override(arg):
    """(dotted key, value text) of one `--config.a.b=value` argument."""
    body = arg[len(OVERRIDE_PREFIX):]
    key, sep, text = body.partition("=")
    if not key:
        raise UserError(f"override {arg!r} names no key; write --config.SECTION.KEY=VALUE")
    if not sep:
        raise UserError(f"override {arg!r} has no value; write {arg}=VALUE")
    return key, text


def override_text(value):
    """The text of `--config.KEY=TEXT` that gives `value` back (a string key takes its text as typed)."""
    return value if isinstance(value, str) else _flow_text(value)


def _flow_text(value):
    """YAML flow text of `value`, lists written as they are typed: [16,32]."""
    if isinstance(value, list):
        return "[" + ",".join(_flow_text(item) for item in value) + "]"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def sweep_values(text):
    """The values of one `--sweep` override: `text` split at its top-level commas ('0.1,0.01' -> two values;
    '[16,32],[32,64]' -> two lists)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return values + [current]


@dataclass(frozen=True)
class Dimension:
    """One searched key: a choice among override texts, or a range of numbers (integers when both ends are)."""
    key: str
    choices: tuple = ()  # override texts, for a choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def text(self, value):
        """The override text of a value a sampler proposed for this dimension."""
        return value if self.choices else repr(int(value) if self.integer else float(value))


def search_dimension(key, text, current):
    """The Dimension `--search` reads in `--config.KEY=TEXT` (`a,b,c`, `LOW..HIGH`, `log:LOW..HIGH`), or None for a
    plain value (fixed). `current` is the key's value in the YAML: ranges are for numbers only."""
    is_range = ".." in text and not text.lstrip().startswith(("[", "{"))
    if not is_range:
        values = sweep_values(text)
        if len(values) == 1:
            return None
        for value in values:
            _typed_value(key, current, value)  # each choice must fit the key, as a plain override would
        return Dimension(key, choices=tuple(values))
    log = text.startswith("log:")
    ends = text[len("log:") if log else 0:].split("..")
    example = f"--config.{key}=0.001..0.1 or --config.{key}=log:1e-4..1e-2"
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise UserError(f"'{key}' holds {_type_name(current)} ({current!r}), which has no range; list the values "
                        f"to choose from instead (--config.{key}=A,B)")
    try:
        low, high = (parse_yaml_value(end.strip()) for end in ends) if len(ends) == 2 else (None, None)
    except UserError:
        low = high = None
    if any(isinstance(end, bool) or not isinstance(end, (int, float)) for end in (low, high)) or \
            low is None or high is None:
        raise UserError(f"cannot read {text!r} as a range for '{key}'; write {example}")
    if not low < high:
        raise UserError(f"the range {text!r} for '{key}' is empty: its low end must be below its high end")
    if log and low <= 0:
        raise UserError(f"the log range {text!r} for '{key}' must lie above 0")
    integer = isinstance(low, int) and isinstance(high, int) and isinstance(current, int)
    if isinstance(current, int) and not integer:
        raise UserError(f"'{key}' is an integer (the YAML has {current!r}): its range needs integer ends, got {text!r}")
    return Dimension(key, low=low, high=high, log=log, integer=integer)


def apply_overrides(config, overrides):
    """A copy of `config` with each (dotted key, value text) set, refusing unknown keys and values of the wrong type."""
    merged = copy.deepcopy(config)
    known = flatten(config)
    for key, text in overrides:
        if key not in known:
            raise UserError(f"unknown config key '{key}'{_suggestion(key, known)}; "
                            f"keys are checked against the YAML file, add it there first if it is new")
        parent = merged
        *sections, leaf = key.split(".")
        for section in sections:
            parent = parent[section]
        parent[leaf] = _typed_value(key, known[key], text)
    return merged


KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a text", list: "a list of integers",
         dict: "a section"}


def require(config, key, kind, low=None, high=None, below=None, optional=False):
    """The value of the dotted `key` of `config`, after refusing a missing key (unless `optional`: None then), a value
    of another kind (int, float, bool, str, list of ints, dict) and one outside [low, high] or not under `below`.

    What a module reads from the config it checks here first, so that a config of another shape is one line before
    the run is registered, never a KeyError or TypeError inside it.
    """
    value = config
    *sections, leaf = key.split(".")
    for depth, name in enumerate([*sections, leaf]):
        if not isinstance(value, dict):
            where = ".".join(sections[:depth])
            raise UserError(f"config key '{where}' must be a section, got {value!r}")
        if name not in value:
            if optional:
                return None
            raise MissingKey(key)
        value = value[name]
    if optional and value is None:
        return None
    if not _is_kind(value, kind) or (kind is list and not all(_is_kind(item, int) for item in value)):
        raise UserError(f"config key '{key}' must be {KINDS[kind]}, got {_type_name(value)} {value!r}")
    if kind in (int, float):
        if (low is not None and value < low) or (high is not None and value > high) or \
                (below is not None and not value < below) or value != value:
            bounds = [f">= {low}" if low is not None else "", f"<= {high}" if high is not None else "",
                      f"< {below}" if below is not None else ""]
            raise UserError(f"config key '{key}' must be {KINDS[kind]} {' and '.join(b for b in bounds if b)}, "
                            f"got {value!r}")
        if kind is float and value in (float("inf"), float("-inf")):
            raise UserError(f"config key '{key}' must be a finite number, got {value!r}")
    if kind is list and low is not None and (len(value) < 1 or any(item < low for item in value)):
        raise UserError(f"config key '{key}' must list integers >= {low} (at least one), got {value!r}")
    return value


def _is_kind(value, kind):
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def flatten(config, prefix=""):
    """{dotted key: value} of every leaf in `config`, sections included as keys of their own."""
    out = {}
    for name, value in config.items():
        key = f"{prefix}{name}"
        out[key] = value
        if isinstance(value, dict):
            out.update(flatten(value, prefix=f"{key}."))
    return out


def flatten_values(config):
    """{dotted key: value} of every value in `config` (sections themselves left out): what runs record as hparams."""
    return {key: value for key, value in flatten(config).items() if not isinstance(value, dict)}


def dump_config(config):
    """The canonical YAML text of `config`: sorted keys, so equal configs give equal text (and equal run identity)."""
    return yaml.safe_dump(config, sort_keys=True, default_flow_style=False)


def _typed_value(key, current, text):
    """`text` read as a value of the type of the YAML's `current` value, or a UserError if it does not fit."""
    if isinstance(current, dict):
        raise UserError(f"'{key}' is a section, not a value; override one of its keys: "
                        + ", ".join(f"{key}.{k}" for k in current))
    if isinstance(current, str):
        return text  # a string key takes the text as typed: 007 stays 007
    value = parse_yaml_value(text)
    if current is None or type(value) is type(current):
        if isinstance(current, list) and current and any(type(v) is not type(current[0]) for v in value):
            raise UserError(f"'{key}' expects a list like {current!r} (elements: {_type_name(current[0])}), "
                            f"got {value!r}")
        return value
    if isinstance(current, float) and type(value) is int:
        return float(value)
    hint = "; to run several values one after another, add --sweep" if "," in text else ""
    raise UserError(f"'{key}' expects {_type_name(current)} (the YAML has {current!r}), "
                    f"got {_type_name(value)} {value!r}{hint}")


def _type_name(value):
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a section", type(None): "null"}.get(type(value), type(value).__name__)


def _suggestion(key, known):
    close = difflib.get_close_matches(key, [k for k, v in known.items() if not isinstance(v, dict)], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _first_line(error):
    return str(error).strip().splitlines()[0]
