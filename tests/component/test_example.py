"""examples/servicex.py runs and does what it says (tests/test_examples.py covers the other examples)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def test_servicex_example() -> None:
    out = subprocess.run([sys.executable, str(EXAMPLES / "servicex.py")], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "bob got from servicex.example.org: Your parcel is on its way." in out.stdout


def test_servicex_http_example() -> None:
    out = subprocess.run([sys.executable, str(EXAMPLES / "servicex_http.py")], capture_output=True, text=True,
                         timeout=60, check=True)
    for device in ("phone", "laptop"):
        assert f"bob/{device} got from servicex.example.org: Your parcel is on its way." in out.stdout, out
