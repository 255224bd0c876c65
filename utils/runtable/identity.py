"""A run's identity: what makes two launches the same run, so that the second one is refused."""
import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunIdentity:
    """What makes two runs the same: experiment, merged config, and the flags that change results."""
    experiment: str
    config_text: str  # canonical dump of the merged config (overrides applied)
    flags: dict = field(default_factory=dict)  # result-changing flags that differ from their defaults
    comment: str = ""

    @property
    def config_hash(self):
        return hashlib.sha256(self.config_text.encode()).hexdigest()

    @property
    def cli(self):
        return " ".join(f"{name}={value}" for name, value in sorted(self.flags.items()))

    def key(self):
        """The values of deepboard's unique columns (experiment, config_hash, cli, comment) for this identity."""
        return self.experiment, self.config_hash, self.cli, self.comment
