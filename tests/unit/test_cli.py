"""The CLI edge: building the parser loads no heavy library, and a broken command is an error."""
from __future__ import annotations

import subprocess
import sys

import pytest

from protoguard.cli import main as cli_main

HEAVY = ("torch", "sklearn", "matplotlib", "kafka", "redis")


def test_help_imports_none_of_the_heavy_libraries() -> None:
    probe = ("import sys; from protoguard.cli.main import build_parser; build_parser(); "
             f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "", f"building the parser imported {done.stdout.strip()}"


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli_main.build_parser()
    for name in ("demo", "stack", "config", "score", "replay", "labels", "trainer", "model", "train", "bench"):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([name, "--help"])
        assert exit_.value.code == 0
        assert f"usage: protoguard {name}" in capsys.readouterr().out


def test_a_command_module_that_does_not_import_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", (*cli_main.COMMAND_MODULES, "no_such_cmd"))
    with pytest.raises(ModuleNotFoundError, match="no_such_cmd"):
        cli_main.build_parser()
