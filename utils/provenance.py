"""What re-creating a run needs to know about the code that ran it."""
import shlex
import subprocess


def git_commit(code_dir):
    """The commit checked out in `code_dir`, or None outside a git repository."""
    return _git(code_dir, "rev-parse", "HEAD")


def git_diff(code_dir):
    """Uncommitted changes to tracked files in `code_dir` (`git diff HEAD`), or None outside a git repository."""
    return _git(code_dir, "diff", "HEAD")


def command_line(argv):
    """`argv` as one shell-quoted line, as the user could paste it again."""
    return " ".join(shlex.quote(arg) for arg in argv)


def _git(code_dir, *args):
    try:
        done = subprocess.run(["git", "-C", str(code_dir), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
