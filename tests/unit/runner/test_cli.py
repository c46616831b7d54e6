"""The CLI as a user meets it without a mesh: every command's --help, and arguments refused."""
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


@pytest.mark.parametrize("trace", ["abc", "7d86f56435cdedf158db3c922ad838b", "not-a-trace-id-at-all-0123456789"])
def test_logs_refuses_what_is_not_a_trace_id(capsys, trace):
    assert main(["logs", "--trace", trace]) == 2
    assert "a trace id is 32 hex digits" in capsys.readouterr().err
