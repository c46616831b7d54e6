"""user-svc's key ring on a clock the test moves: publish first, sign later, retire after the
token lifetime."""
import jwt
import pytest

from services.user.tokens import Issuer, KeyRing

PUBLISH_S, TTL_S = 10, 100


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ring(clock):
    ring = KeyRing(publish_s=PUBLISH_S, token_ttl_s=TTL_S, clock=clock)
    ring.add()
    return ring


def kids(ring) -> list[str]:
    return [key["kid"] for key in ring.jwks()["keys"]]


def signed_kid(ring) -> str:
    token, _ = Issuer(ring, "aimesh-user", "aimesh", TTL_S).issue("u1", "free", "user")
    return jwt.get_unverified_header(token)["kid"]


def test_a_fresh_ring_signs_with_its_only_key_at_once(ring):
    assert kids(ring) == [signed_kid(ring)]


def test_a_rotated_key_is_published_at_once_but_signs_only_after_the_publish_time(ring, clock):
    old = ring.signing().kid
    clock.now += 1
    new = ring.rotate().kid
    assert kids(ring) == [old, new]
    assert signed_kid(ring) == old
    clock.now += PUBLISH_S - 1
    assert signed_kid(ring) == old
    clock.now += 1
    assert signed_kid(ring) == new
    assert kids(ring) == [old, new]       # tokens signed with old still verify


def test_the_old_key_leaves_the_jwks_a_token_lifetime_after_the_new_one_signs(ring, clock):
    old = ring.signing().kid
    clock.now += 1
    new = ring.rotate().kid
    clock.now += PUBLISH_S + TTL_S - 1
    assert kids(ring) == [old, new]
    clock.now += 1
    assert kids(ring) == [new]
    assert old in [k.kid for k in ring.keys()]   # stored keys go at the next rotation
    clock.now += 1
    newest = ring.rotate().kid
    assert old not in [k.kid for k in ring.keys()]
    assert kids(ring) == [new, newest]


def test_a_second_rotation_waits_until_the_first_key_signs(ring, clock):
    from services.user.tokens import RotationPending
    clock.now += 1
    ring.rotate()
    with pytest.raises(RotationPending):
        ring.rotate()
    clock.now += PUBLISH_S
    ring.rotate()
    assert len(kids(ring)) == 3
