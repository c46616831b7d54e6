"""Every command's --help, as a user reads it: it prints and exits 0, with no formatting left over."""
import re

import pytest

from aimesh.__main__ import main


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_every_command_explains_itself(capsys):
    commands = re.search(r"\{([a-z,]+)\}", help_of(capsys)).group(1).split(",")
    assert "up" in commands and "test" in commands
    for command in commands:
        text = help_of(capsys, command)
        assert text.startswith("usage: aimesh"), command
        assert "%%" not in text and "%(" not in text, (command, text)
