import pytest
from faust.cli.base import LOGLEVELS

from streams.cli import with_log_level
from streams.settings import Settings


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING", "ERROR"])
def test_every_log_level_setting_is_one_faust_accepts(level: str) -> None:
    Settings(_env_file=None, log_level=level)  # a level the settings accept...
    argv = with_log_level(["atlas", "worker", "--web-port", "7000"], level)
    flag = argv[2].removeprefix("--loglevel=")
    assert flag.upper() in LOGLEVELS  # ...is one Faust's command line accepts
    assert argv[3:] == ["--web-port", "7000"]


def test_an_explicit_level_and_other_commands_are_left_alone() -> None:
    assert with_log_level(["atlas", "worker", "-l", "debug"], "INFO") == [
        "atlas",
        "worker",
        "-l",
        "debug",
    ]
    assert with_log_level(["atlas", "migrate"], "INFO") == ["atlas", "migrate"]
