"""Settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from rotator.config import Settings


@pytest.mark.parametrize("folder", ["h?x", "h%41", "h#1", "plain", "sp ace"])
def test_the_default_store_is_the_file_in_the_home_whatever_its_path_holds(
    tmp_path: Path, folder: str
) -> None:
    home = tmp_path / folder
    settings = Settings.from_env({"ROTATOR_HOME": str(home)})
    url = make_url(settings.db_url)
    assert url.database == str(home / "rotator.db")
    assert not url.query
