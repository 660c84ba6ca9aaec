"""Developer sessions: ``nox`` runs tests and lint; ``nox -s typecheck`` runs mypy.

Each session installs what it needs into its own virtualenv, using the Python that runs nox.
CI does not use nox: `.ci/run` runs the README's test command directly.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite; extra arguments go to pytest (``nox -s tests -- -k config -x``)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check over the whole tree."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict (settings in pyproject.toml); not yet part of the default sessions."""
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy", "meshxmpp", *session.posargs)
