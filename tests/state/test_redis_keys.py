"""The Redis key layout and scripts keep the rules that make them safe on a Redis Cluster."""

from __future__ import annotations

import re

import pytest
from redis.crc import key_slot

from gateway.state.redis_keys import ALL_SCRIPTS, Keys

UPLOAD = "0123456789abcdef0123456789abcdef"


def test_an_uploads_keys_share_one_hash_slot() -> None:
    keys = Keys("tus")
    per_upload = [keys.upload(UPLOAD), keys.tomb(UPLOAD), keys.lock(UPLOAD),
                  keys.release(UPLOAD), keys.ckpt(UPLOAD), keys.parts(UPLOAD)]
    assert len(set(per_upload)) == len(per_upload)
    assert len({key_slot(k.encode()) for k in per_upload}) == 1


@pytest.mark.parametrize("name", sorted(ALL_SCRIPTS))
def test_scripts_state_their_contract_and_touch_only_keys_they_are_given(name: str) -> None:
    source = ALL_SCRIPTS[name]
    assert source.lstrip().startswith("-- KEYS[1] = "), f"{name}: no KEYS contract first"
    # The first argument after a command name is the key: it must come from KEYS, never be
    # built inside the script (Redis Cluster routes a script by its declared keys).
    for command, first in re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", source):
        assert first.startswith("KEYS["), f"{name}: {command} on {first}"


def test_open_upload_keys_share_one_hash_slot_and_stay_small() -> None:
    keys = Keys("tus")
    client = "f" * 32
    open_keys = [keys.open_uploads, keys.open_since, keys.open_of(client)]
    assert len({key_slot(k.encode()) for k in open_keys}) == 1
    # The set of finals waiting for a partial lives with the partial's own keys.
    assert key_slot(keys.waiting(UPLOAD).encode()) == key_slot(keys.upload(UPLOAD).encode())
    with pytest.raises(ValueError):
        keys.open_of("an address or a subject, not a hash")
