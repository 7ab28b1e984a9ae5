"""The dashboard's last-rotation outcome shows a failed rotation's error text only to those
who may read rotations, as the API does (the text names target URLs and raw connector
errors); everyone who may read the credential still sees that it failed."""

from __future__ import annotations

from pathlib import Path

from tests.support.dashboard import FAILING, OPTIONS, seed, settings

from rotator.domain.principal import Role
from rotator.service import BlockingService
from rotator.service import dashboard as dash


def test_a_failed_rotations_error_text_is_shown_only_to_rotation_readers(
    tmp_path: Path, db_url: str
) -> None:
    home = tmp_path / "home"
    svc, _ = BlockingService.init(settings(home, db_url), options=OPTIONS)
    try:
        seeded = seed(svc, home, db_url)
        svc.add_principal("rita", Role.READER, scope="*", kind="person")
        tokens = {"reader": svc.create_token("rita")[1], "admin": seeded.tokens["admin"]}
        seen = {}
        for who, token in tokens.items():
            principal = svc.authenticate(token)
            overview = svc.run(dash.credential_overview(svc.service, principal=principal))
            outcome = dict((c.name, o) for c, o in overview)[FAILING]
            cred = svc.show(FAILING)
            single = svc.run(dash.last_outcome(svc.service, cred, principal=principal))
            assert outcome is not None
            assert single == outcome
            seen[who] = outcome
    finally:
        svc.close()
    assert not seen["admin"].ok
    assert seen["admin"].error is not None
    assert "127.0.0.1:9" in seen["admin"].error
    assert not seen["reader"].ok  # the status colour stays: the API's view shows no error
    assert seen["reader"].error is None
