"""user-svc's signing keys in its Postgres: instances share them, so any instance signs with the
same key and a rotation made on one shows on every other (against the mesh's real Postgres, on a
schema of the test's own, on a clock the test moves)."""
import uuid

import pytest

from services.kit import database
from services.user.store import MIGRATIONS
from services.user.tokens import KeyRing, KeyStore, RotationPending
from tests.unit.user.test_key_ring import PUBLISH_S, TTL_S, Clock, signed_kid


async def test_instances_share_the_keys_and_see_each_others_rotation(mesh):
    schema = f"keys_test_{uuid.uuid4().hex[:8]}"
    pool = await database.connect(mesh.postgres_dsn(), schema, MIGRATIONS)
    clock = Clock()

    def instance() -> KeyStore:
        return KeyStore(pool, KeyRing(publish_s=PUBLISH_S, token_ttl_s=TTL_S, clock=clock))
    try:
        one, two = instance(), instance()
        await one.open()
        await two.open()   # the second finds the first's key and makes none
        assert [k.kid for k in two.ring.keys()] == [k.kid for k in one.ring.keys()]
        assert signed_kid(one.ring) == signed_kid(two.ring)

        clock.now += 1
        new = (await one.rotate()).kid
        with pytest.raises(RotationPending):   # one rotation at a time, whichever instance asks
            await two.rotate()
        await two.reload()
        assert two.ring.jwks() == one.ring.jwks() and len(two.ring.jwks()["keys"]) == 2
        clock.now += PUBLISH_S
        assert signed_kid(one.ring) == signed_kid(two.ring) == new

        restarted = instance()
        await restarted.open()
        assert restarted.ring.jwks() == one.ring.jwks()
    finally:
        await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await pool.close()
