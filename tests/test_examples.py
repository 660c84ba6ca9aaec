"""Every file in examples/ runs and does what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_in_process_chat_example() -> None:
    out = subprocess.run([sys.executable, str(EXAMPLES / "in_process_chat.py")], capture_output=True,
                         text=True, timeout=60, check=True)
    assert "bob got from alice@example.org/laptop: Hi Bob, this went through a real node." in out.stdout
