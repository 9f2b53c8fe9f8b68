import tomllib
from pathlib import Path

from protocols.session import VERSION


def test_handshake_version_is_the_package_version():
    meta = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert meta["project"]["version"] == VERSION
