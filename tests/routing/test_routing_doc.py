"""docs/routing.md can never drift from the code: its generated blocks must equal a fresh render."""

from __future__ import annotations

import re

import pytest
from routing_renderer import load

R = load()


def test_committed_doc_matches_the_code() -> None:
    text = R.DOC.read_text(encoding="utf-8")
    fresh = R.update(text)
    if fresh != text:
        pytest.fail("docs/routing.md differs from the policy code: run python scripts/render_routing_table.py "
                    "and commit the result")


def test_check_mode_reports_a_stale_doc(tmp_path: object) -> None:
    stale = tmp_path / "routing.md"  # type: ignore[operator]
    text = R.DOC.read_text(encoding="utf-8")
    stale.write_text(text.replace("| m-bare-chat-all |", "| m-bare-chat-all-edited |", 1), encoding="utf-8")
    assert R.main(["--check", "--doc", str(stale)]) == 1
    assert R.main(["--doc", str(stale)]) == 0  # rewrites it
    assert R.main(["--check", "--doc", str(stale)]) == 0


def test_every_documented_row_is_a_scenario() -> None:
    text = R.DOC.read_text(encoding="utf-8")
    documented = re.findall(r"^\| ([mpi]-[\w+-]+) \|", text, re.M)
    scenarios = [row.id for rows in R.SECTIONS.values() for row in rows]
    assert documented == scenarios


def test_every_rule_is_documented() -> None:
    text = R.DOC.read_text(encoding="utf-8")
    for rule in R.p.RULES:
        assert f"| `{rule.name}` |" in text


def test_missing_block_is_an_error() -> None:
    with pytest.raises(KeyError):
        R.update("no generated blocks here")
