"""A table of numbers in a CSV file, as a dataset by name (`data.name: csv`).

`data.path` is the file: a header row naming the columns, then one row per example, every value a number.
`data.target` names the column to predict (or a list of them); every other column is an input, or those
`data.inputs` lists. `data.test_size` rows, drawn by `data.split_seed`, are the test split; the validation rows are
drawn from the rest as for any dataset (`data.val_size`). The inputs are standardised with the mean and standard
deviation of the training rows (recorded with the run, so that an evaluation on another table uses the same ones).
The content of the file is what identifies the data.
"""
import csv
import io
import math
from pathlib import Path

from data.files import ReadOnce
from data.tensors import Tensors, with_tensor_info
from utils.errors import UserError


class CsvTable:
    """The dataset `data.name: csv`."""
    summary = "csv: a table of numbers in a CSV file (data.path), data.target the column(s) to predict"

    def __init__(self):
        self._files = ReadOnce("table", "a CSV table")
        self._read = {}  # (content's fingerprint, columns...): the Tensors parsed, so a launch parses the file once

    def fingerprint(self, cfg, cache_path=None):
        """The sha256 of the file's content, read afresh and kept for the run to train on."""
        return self._files.fingerprint(self.file(cfg))

    def describe(self, cfg, cache_dir=None):
        return self.load(cfg).info

    def load(self, cfg, cache_dir=None, world=None):
        path = self.file(cfg)
        content, fingerprint = self._files.read(path)
        targets, inputs = target_columns(cfg), input_columns(cfg)
        key = (fingerprint, targets, inputs, cfg.get("test_size"), cfg.get("split_seed"))
        if key not in self._read:
            self._read[key] = read_table(path, content, targets, inputs, check_test_size(cfg),
                                         cfg.get("split_seed", 0))
        return self._read[key]

    @staticmethod
    def file(cfg):
        path = Path(cfg["path"]).expanduser()
        if not path.is_file():
            raise UserError(f"data.path {cfg['path']!r} is not a file; data.name csv reads a CSV file: point "
                            f"data.path at it (--config.data.path=my_table.csv)")
        return path


def target_columns(cfg) -> tuple:
    target = cfg.get("target")
    names = [target] if isinstance(target, str) else target
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        raise UserError(f"data.target must name the column to predict (or list them), got {target!r}; e.g. "
                        f"--config.data.target=price")
    return tuple(names)


def input_columns(cfg) -> tuple | None:
    inputs = cfg.get("inputs")
    if inputs is None:
        return None
    if not isinstance(inputs, list) or not inputs or not all(isinstance(name, str) and name for name in inputs):
        raise UserError(f"data.inputs must list the input columns (or be null: every column but the targets), got "
                        f"{inputs!r}")
    return tuple(inputs)


def check_test_size(cfg) -> int:
    size = cfg.get("test_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UserError(f"data.test_size must be a number of rows >= 1 (held out for the test split), got {size!r}")
    return size


def read_table(path, content, targets, inputs, test_size, split_seed) -> Tensors:
    """The rows of the CSV file at `path` (its bytes `content`) as Tensors: `test_size` rows drawn by `split_seed` are
    the test split, the inputs standardised from the training rows. Refuses, in one line naming the row, what is not a
    number."""
    import torch

    try:
        with io.StringIO(content.decode("utf-8"), newline="") as file:
            rows = csv.reader(file)
            header = next(rows, None)
            if header is None:
                raise UserError(f"{path} is empty; a CSV table starts with a header row naming its columns")
            header = [name.strip() for name in header]
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise UserError(f"{path}: the header names column(s) {', '.join(map(repr, repeated))} more than once")
            missing = [name for name in (*targets, *(inputs or ())) if name not in header]
            if missing:
                raise UserError(f"{path} has no column {missing[0]!r}; its columns: {', '.join(header)[:300]}")
            chosen = list(inputs) if inputs is not None else [name for name in header if name not in targets]
            if not chosen:
                raise UserError(f"{path} has no column left to be an input once {', '.join(targets)} are the targets")
            where = [header.index(name) for name in (*chosen, *targets)]
            values = [_numbers(row, line, header, where, path) for line, row in enumerate(rows, start=2)
                      if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"cannot read {path} as a CSV file in UTF-8 ({type(error).__name__}: {error})") from None
    if len(values) <= test_size + 1:
        raise UserError(f"{path} has {len(values)} rows; data.test_size {test_size} must leave rows to train on")
    table = torch.tensor(values, dtype=torch.float64)
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(split_seed))
    test, train = table[order[:test_size]], table[order[test_size:]]
    features = len(chosen)
    mean = train[:, :features].mean(0)
    std = train[:, :features].std(0).nan_to_num(1.0)
    std[std == 0] = 1.0  # a constant column: centred, not scaled
    tensors = Tensors(train[:, :features].float(), train[:, features:].float(), test[:, :features].float(),
                      test[:, features:].float(), mean=tuple(mean.tolist()), std=tuple(std.tolist()),
                      inputs=tuple(chosen), targets=tuple(targets))
    return with_tensor_info(tensors, "csv")


def _numbers(row, line, header, where, path):
    if len(row) != len(header):
        raise UserError(f"{path}, row {line}: {len(row)} values, the header names {len(header)} columns")
    numbers = []
    for column in where:
        text = row[column].strip()
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{path}, row {line}, column {header[column]!r}: {text[:40]!r} is not a number; a CSV "
                            f"table here holds numbers only (encode or drop that column)") from None
        if not math.isfinite(value):
            raise UserError(f"{path}, row {line}, column {header[column]!r}: {text!r} is not a finite number; "
                            f"remove the row or fill the value")
        numbers.append(value)
    return numbers


CSV = CsvTable()
