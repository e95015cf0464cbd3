"""Where the repository is, derived from this file (never from the current directory)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
