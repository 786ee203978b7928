"""The `trtflow` command line: `app` (trtflow/cli/app.py) and the command modules.

`main` imports the core's command modules, then every module registered under the
`trtflow.commands` entry point group (the commands that run Prefect flows live in
`flows/cli/` and register that way), so the core package imports no `flows`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

COMMAND_MODULES = (
    "trtflow.cli.project",   # prepare, inspect, init
    "trtflow.cli.stages",    # stage, publish, fetch
    "trtflow.cli.registry",  # promote, history
    "trtflow.cli.report",    # report
    "trtflow.cli.store",     # store verify, store gc, check-cache
    "trtflow.llm.cli",       # llm (compile + validate a decoder), generate
)
ENTRY_POINT_GROUP = "trtflow.commands"


def load_commands() -> None:
    """Register every command on the app (each module registers itself when imported)."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        entry.load()


def main() -> None:
    # `module:function` sources (model factories, data functions) import from the project
    # as they do under `python -m trtflow.cli`: the current directory is importable. It is
    # appended, so it never shadows an installed package.
    import os
    import sys

    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    # Prefect (and MLflow) send usage telemetry unless DO_NOT_TRACK is set, and Prefect
    # prints a banner about it on first use: trtflow opts out unless the user decided
    os.environ.setdefault("DO_NOT_TRACK", "1")
    load_commands()
    from trtflow.cli.app import main as run_app

    run_app()
