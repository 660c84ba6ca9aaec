"""Load the meshxmpp pytest plugin for this directory, exactly once.

With the package installed (``pip install -e .``), the ``pytest11`` entry point has already registered the
plugin before this file is read; without it (a checkout on ``pythonpath``), this registers it. A
``pytest_plugins = [...]`` line is not an option here: pytest refuses it outside the rootdir's conftest.
"""

from __future__ import annotations

import pytest

import meshxmpp.testing.pytest_plugin as plugin


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(plugin):
        config.pluginmanager.register(plugin, plugin.__name__)
