"""API keys against a real redis-server: hashing, store round trip, cache, degraded lookups."""

from __future__ import annotations

import pytest

from gateway.access.key_lookup import CachedKeyLookup
from gateway.access.keys import (
    KeyInputError,
    KeyNotFound,
    KeySpec,
    MemoryKeyStore,
    RedisKeyStore,
    hash_secret,
    update_key,
)
from gateway.state.redis import RedisState, RedisUnavailable
from testkit.processes import redis_service

PEPPER = "test-pepper-not-a-secret"


@pytest.fixture
async def redis_state(redis_server):
    state = RedisState.from_url(f"redis://127.0.0.1:{redis_server.port}/0")
    await state.client.flushdb()
    yield state
    await state.close()


async def test_created_key_is_stored_only_as_peppered_hash(redis_state):
    store = RedisKeyStore(redis_state, PEPPER)
    record, secret = await store.create(KeySpec(name="svc", owner="team-a", models=("m1",), rpm=5))
    assert secret.startswith("sk-") and len(secret) >= 40
    dump = b"".join([await redis_state.client.dump(k) or b"" for k in await redis_state.client.keys("*")])
    assert secret.encode() not in dump
    assert record.secret_hash == hash_secret(secret, PEPPER) != hash_secret(secret, "other-pepper")
    found = await store.find_by_hash(hash_secret(secret, PEPPER))
    assert found == record and found.models == ("m1",)
    assert [r.id for r in await store.list()] == [record.id]
    assert "secret_hash" not in record.public_view()


async def test_two_keys_differ_and_wrong_secret_is_unknown(redis_state):
    store = RedisKeyStore(redis_state, PEPPER)
    (_, a), (_, b) = await store.create(KeySpec(name="a")), await store.create(KeySpec(name="b"))
    assert a != b
    lookup = CachedKeyLookup(store, PEPPER)
    assert await lookup.find(a[:-1] + ("x" if a[-1] != "x" else "y")) is None


async def test_guessed_keys_never_evict_a_known_one_from_the_cache():
    svc = redis_service().start().wait_port()
    state = RedisState.from_url(f"redis://127.0.0.1:{svc.port}/0", retry_after_s=60)
    store = RedisKeyStore(state, PEPPER)
    try:
        record, secret = await store.create(KeySpec(name="svc"))
        lookup = CachedKeyLookup(store, PEPPER, fresh_s=0.0, stale_s=60, max_entries=8)
        assert await lookup.find(secret) == record
        for i in range(50):  # far more guesses than the cache holds
            assert await lookup.find(f"{secret[:-6]}{i:06d}") is None
        svc.kill()  # from here only what the cache kept can answer
        assert await lookup.find(secret) == record
        with pytest.raises(RedisUnavailable):
            await lookup.find(secret[:-1] + ("x" if secret[-1] != "x" else "y"))
    finally:
        svc.stop()
        await state.close()


async def test_revocation_seen_after_forget_and_update_limits(redis_state):
    store = RedisKeyStore(redis_state, PEPPER)
    record, secret = await store.create(KeySpec(name="svc"))
    lookup = CachedKeyLookup(store, PEPPER, fresh_s=60)
    assert (await lookup.find(secret)).is_active()
    revoked = await update_key(store, record.id, revoked=True)
    lookup.forget(revoked)
    assert not (await lookup.find(secret)).is_active()
    changed = await update_key(store, record.id, tpm=1000, models=["a", "b"])
    assert (await store.get(record.id)).tpm == 1000 and changed.models == ("a", "b")
    with pytest.raises(KeyNotFound):
        await update_key(store, "key_missing", rpm=1)
    with pytest.raises(KeyInputError):
        await update_key(store, record.id, scopes=["root"])


def test_spec_rejects_bad_input():
    with pytest.raises(KeyInputError, match="scope"):
        KeySpec(name="x", scopes=frozenset({"superuser"}))
    with pytest.raises(KeyInputError, match="rpm"):
        KeySpec(name="x", rpm=0)
    with pytest.raises(KeyInputError, match="name"):
        KeySpec(name="  ")


async def test_known_key_survives_redis_outage_unknown_key_does_not():
    svc = redis_service().start().wait_port()
    state = RedisState.from_url(f"redis://127.0.0.1:{svc.port}/0", retry_after_s=0.2)
    store = RedisKeyStore(state, PEPPER)
    try:
        _, known = await store.create(KeySpec(name="known"))
        _, never_seen = await store.create(KeySpec(name="never-seen"))
        lookup = CachedKeyLookup(store, PEPPER, fresh_s=0.0, stale_s=60)
        assert await lookup.find(known) is not None
        svc.kill()
        assert (await lookup.find(known)).name == "known"
        with pytest.raises(RedisUnavailable):
            await lookup.find(never_seen)
    finally:
        svc.stop()
        await state.close()


async def test_memory_store_round_trip():
    store = MemoryKeyStore(PEPPER)
    record, secret = await store.create(KeySpec(name="dev", scopes=frozenset({"admin", "inference"})))
    assert await CachedKeyLookup(store, PEPPER).find(secret) == record
    assert await store.get(record.id) == record


async def test_a_keys_principal_is_reused_until_the_key_changes():
    from gateway.access.authenticate import Authenticator

    store = MemoryKeyStore(PEPPER)
    record, secret = await store.create(KeySpec(name="svc", rpm=5))
    lookup = CachedKeyLookup(store, PEPPER, fresh_s=60)
    authenticator = Authenticator(keys=lookup, jwt=None, admin_key="sk-admin-test")
    first = await authenticator.principal(secret, client="127.0.0.1")
    assert first.rpm == 5 and first.models is None
    assert await authenticator.principal(secret, client="127.0.0.1") == first
    lookup.forget(await update_key(store, record.id, rpm=9, models=["m1"]))
    changed = await authenticator.principal(secret, client="127.0.0.1")
    assert changed.rpm == 9 and changed.models == frozenset({"m1"}) and changed.key_id == record.id
