"""The plugin is registered exactly once however it arrives: the ``pytest11`` entry point (an installed
package), ``-p meshxmpp.testing.pytest_plugin``, a rootdir conftest's ``pytest_plugins``, this directory's
conftest, or several of them at once. The entry point is simulated with a throwaway ``.dist-info`` on
PYTHONPATH, so this works whether or not the checkout was installed with ``pip install -e .``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import meshxmpp.testing

pytestmark = pytest.mark.timeout(180)

PLUGIN = "meshxmpp.testing.pytest_plugin"
SOURCE_ROOT = Path(meshxmpp.testing.__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

USER_TEST = '''
import pytest

@pytest.mark.trio
async def test_node(meshxmpp_node):
    await meshxmpp_node.add_user("alice")
    client = await meshxmpp_node.client("alice", resource="r")
    await client.ping()
    await client.aclose()

def test_registered_once(request):
    names = [n for n, p in request.config.pluginmanager.list_name_plugin() if p is not None
             and getattr(p, "__name__", "") == "meshxmpp.testing.pytest_plugin"]
    assert names == ["meshxmpp.testing.pytest_plugin"], names
'''


def fake_entry_point(tmp: Path) -> Path:
    site = tmp / "site"
    info = site / "meshxmpp_plugin_probe-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: meshxmpp-plugin-probe\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[pytest11]\n{PLUGIN} = {PLUGIN}\n")
    return site


def run_pytest(args: list[str], cwd: Path, extra_path: list[Path]) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(str(p) for p in [*extra_path, SOURCE_ROOT])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=150)


def entry_points_seen(extra_path: list[Path]) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in [*extra_path, SOURCE_ROOT])}
    code = "import importlib.metadata as m; print(sorted(e.name for e in m.entry_points(group='pytest11')))"
    return eval(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,  # noqa: S307
                               check=True).stdout)


@pytest.mark.parametrize(("entry_point", "dash_p", "conftest"), [
    (True, False, False),  # installed: the entry point alone
    (True, True, True),  # installed, and named again by -p and by a rootdir conftest
    (False, True, False),  # a checkout: -p alone
])
def test_user_project_registers_once(tmp_path: Path, entry_point: bool, dash_p: bool, conftest: bool) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_user.py").write_text(USER_TEST)
    if conftest:
        (project / "conftest.py").write_text(f"pytest_plugins = [{PLUGIN!r}]\n")
    extra = [fake_entry_point(tmp_path)] if entry_point else []
    if entry_point:
        assert PLUGIN in entry_points_seen(extra)
    result = run_pytest(["-p", PLUGIN] if dash_p else [], project, extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout


def test_this_directory_with_the_entry_point(tmp_path: Path) -> None:
    """Its conftest registers the plugin only when no entry point did (without one: every normal run)."""
    extra = [fake_entry_point(tmp_path)]
    result = run_pytest([str(HERE / "test_harness_plugin.py"), "-k", "defaults or marker or sim_fixture"],
                        SOURCE_ROOT, extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 passed" in result.stdout, result.stdout[-2000:]
