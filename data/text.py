"""Text corpora read character by character (Tiny Shakespeare), found or downloaded, split as nanoGPT splits them.

The file is read from `<data.path>/<FOLDER>/<FILE>`; a missing one is downloaded (md5-checked) only when
`data.download` is true, and a file already there is read as it is. Its characters are the tokens and its sorted
distinct characters the vocabulary. The last 10% of the text is the test split (the characters nanoGPT validates on);
the validation split is the last `data.val_size` characters of the first 90%, and training gets the rest.

Nothing here imports torch until the tokens are loaded, so that a refused launch answers at once.
"""
from dataclasses import dataclass
from pathlib import Path

from data.files import ReadOnce, download
from utils.errors import UserError

FIRST_FRACTION = 0.9  # nanoGPT's split: int(n * 0.9) characters train, the last 10% validate


@dataclass(frozen=True)
class TextInfo:
    """What the model and the loaders need to know of a corpus: its vocabulary and the size of each split."""
    vocab: tuple  # the distinct characters, sorted: token i is vocab[i]
    num_train: int  # characters in each split
    num_val: int
    num_test: int

    @property
    def vocab_size(self):
        return len(self.vocab)

    def decode(self, tokens) -> str:
        """The text that a sequence of token IDs spells."""
        return "".join(self.vocab[int(token)] for token in tokens)


@dataclass(frozen=True)
class Tokens:
    """A corpus loaded: each split as int64 token IDs (CPU tensors), and its TextInfo."""
    train: object
    val: object
    test: object
    info: TextInfo


class TextCorpus:
    """One text file, known by name, its download address and md5."""

    def __init__(self, title, folder, filename, urls, md5):
        self.title, self.folder, self.filename, self.urls, self.md5 = title, folder, filename, urls, md5
        self.summary = f"{title}: text, one token per character (DATA/{folder}/{filename})"
        self._files = ReadOnce("text", f"the original {title} file")
        self._texts = {}  # fingerprint -> the text decoded

    def find_file(self, cfg):
        """The path of the corpus under data.path, downloaded first if missing and data.download is true."""
        folder = Path(cfg["path"]).expanduser() / self.folder
        path = folder / self.filename
        if path.is_file():
            return path
        if not cfg["download"]:
            raise UserError(self._missing_message(folder, "and data.download is false"))
        return download(folder, self.filename, self.urls, self.md5,
                        lambda reason: self._missing_message(folder, reason))

    def fingerprint(self, cfg, cache_path=None):
        """The sha256 of the file's content, read afresh and kept for the run to train on (a file replaced after is
        not what it trains on): the same text anywhere is the same run, one changed character is not."""
        return self._files.fingerprint(self.find_file(cfg))

    def describe(self, cfg, cache_dir=None):
        """The TextInfo of the corpus, after refusing a validation split the text cannot give."""
        text = self.text(cfg)
        train, val, test = split_lengths(len(text), cfg["val_size"])
        return TextInfo(tuple(sorted(set(text))), train, val, test)

    def load(self, cfg, cache_dir=None, world=None, vocab=None):
        """The corpus as Tokens (every rank holds the whole text: it is small; each reads its share of a batch),
        its characters numbered by their place in `vocab` (a trained model's), by default in its own."""
        import torch

        text = self.text(cfg)
        info = self.describe(cfg)
        if vocab is not None:  # a trained model's (data.registry.check_fits refused a character outside it)
            info = TextInfo(tuple(vocab), info.num_train, info.num_val, info.num_test)
        index = {char: number for number, char in enumerate(info.vocab)}
        tokens = torch.tensor([index[char] for char in text], dtype=torch.int64)
        train, val = info.num_train, info.num_train + info.num_val
        return Tokens(tokens[:train], tokens[train:val], tokens[val:], info)

    def text(self, cfg):
        path = self.find_file(cfg)
        content, fingerprint = self._files.read(path)
        if fingerprint not in self._texts:
            try:
                self._texts[fingerprint] = content.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"cannot read {path} as UTF-8 text ({type(e).__name__}); replace it with the "
                                f"original {self.title} file") from None
        return self._texts[fingerprint]

    def _missing_message(self, folder, reason):
        return (f"{self.title} file {self.filename} missing in {folder} {reason}; put it there or set "
                f"--config.data.path to the folder that holds {self.folder}/{self.filename}")


def split_lengths(length, val_size):
    """(train, validation, test) characters of a text of `length`: test the last 10%, validation the end of the
    rest."""
    first = int(length * FIRST_FRACTION)  # nanoGPT: data[:int(n*0.9)] trains, data[int(n*0.9):] validates
    if not 0 < val_size < first - 1:
        raise UserError(f"data.val_size must be between 1 and {first - 2} characters (the first 90% of the text, "
                        f"less one), got {val_size}")
    return first - val_size, val_size, length - first


SHAKESPEARE_CHAR = TextCorpus(
    "Tiny Shakespeare", "tinyshakespeare", "input.txt",
    ["https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"],
    "6fb458f1232090904fb40fe944165e91")
