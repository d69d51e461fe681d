"""API keys, per-model / per-key token buckets (modelserver/access.py), their config keys and the
edge's Envoy bucket (appliance/render.py)."""

from __future__ import annotations

import json
import time

import pytest

from appliance import apikeys
from appliance.config import build
from appliance.errors import ConfigError
from appliance.render import edge_context, token_bucket
from modelserver.access import (SEEN_KEYS, Access, AccessDenied, TokenBucket, hash_key, model_of_path,
                                parse_rules, presented_key)
from modelserver.core.status import Code

MODEL = "saved_model_half_plus_two_mkl"


def _access(tmp_path, doc: dict) -> Access:
    path = tmp_path / "api-keys.json"
    path.write_text(json.dumps(doc))
    return Access(str(path))


def _headers(key: str = "", scheme: str = "Bearer") -> dict:
    return {"authorization": f"{scheme} {key}"} if key else {}


def test_no_file_and_an_empty_file_check_nothing(tmp_path) -> None:
    assert Access().check(MODEL, {}.get) == ""
    assert _access(tmp_path, {}).rules.idle


def test_missing_wrong_and_unallowed_keys(tmp_path) -> None:
    access = _access(tmp_path, {"required": True, "keys": {
        hash_key("k1"): {"name": "alice", "models": [MODEL]}, hash_key("k2"): {"name": "bob"}}})
    for headers in ({}, _headers("nope"), {"authorization": "Basic k1"}):
        with pytest.raises(AccessDenied) as denied:
            access.check(MODEL, headers.get)
        assert denied.value.code == Code.UNAUTHENTICATED and denied.value.http_status == 401
    assert access.check(MODEL, _headers("k1").get) == "alice"
    assert access.check(MODEL, {"x-api-key": "k1"}.get) == "alice"
    assert access.check("other", _headers("k2").get) == "bob"
    with pytest.raises(AccessDenied) as denied:
        access.check("other", _headers("k1").get)
    assert denied.value.code == Code.PERMISSION_DENIED and "alice" in denied.value.message
    assert "k1" not in denied.value.message


def test_per_model_requirement_and_internal_status_reads(tmp_path) -> None:
    access = _access(tmp_path, {"models": {MODEL: {"required": True}}})
    assert access.check("open", {}.get) == ""
    with pytest.raises(AccessDenied):
        access.check(MODEL, {}.get)
    assert access.check(MODEL, {"x-appliance-internal": "1"}.get, status_read=True) == ""
    with pytest.raises(AccessDenied):   # only status reads
        access.check(MODEL, {"x-appliance-internal": "1"}.get)


def test_buckets_limit_and_say_when_to_retry(tmp_path) -> None:
    access = _access(tmp_path, {"models": {MODEL: {"rate": 1000}},
                                "keys": {hash_key("k"): {"name": "slow", "rate": 1}}})
    assert access.check(MODEL, _headers("k").get) == "slow"
    with pytest.raises(AccessDenied) as denied:
        access.check(MODEL, _headers("k").get)
    assert denied.value.code == Code.RESOURCE_EXHAUSTED and denied.value.http_status == 429
    assert denied.value.retry_after == 1


def test_a_decision_is_remembered_per_credentials_and_model_never_past_its_rules(tmp_path) -> None:
    access = _access(tmp_path, {"required": True, "keys": {hash_key("k"): {"name": "a", "models": [MODEL]}}})
    refusals = []
    for _ in range(2):      # the second call is answered from memory, as the first
        assert access.check(MODEL, _headers("k").get) == "a"
        with pytest.raises(AccessDenied) as denied:
            access.check("other", _headers("k").get)
        refusals.append(denied.value)
    assert refusals[0] is not refusals[1] and refusals[1].code == Code.PERMISSION_DENIED
    assert len(access.rules.seen) == 2
    for n in range(SEEN_KEYS + 10):       # keys tried at random take no memory beyond the bound
        with pytest.raises(AccessDenied):
            access.check(MODEL, _headers(f"guess{n}").get)
    assert len(access.rules.seen) <= SEEN_KEYS
    (tmp_path / "api-keys.json").write_text(json.dumps({"required": True}))   # the key revoked
    time.sleep(0.01)
    assert access.refresh()
    with pytest.raises(AccessDenied) as denied:
        access.check(MODEL, _headers("k").get)
    assert denied.value.code == Code.UNAUTHENTICATED


def test_a_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(8.0)
    start = bucket.stamp = 1024.0        # times exact in binary: start + 0.25 - start is 0.25
    assert bucket.capacity == 4.0
    assert [bucket.take(start) for _ in range(5)] == [0] * 4 + [1]
    assert [bucket.take(start + 0.25) for _ in range(3)] == [0] * 2 + [1]   # 2 more a quarter later
    assert bucket.take(start + 10) == 0 and bucket.tokens == 3.0            # never more than 4


def test_a_reread_keeps_buckets_whose_rate_did_not_change(tmp_path) -> None:
    first = parse_rules(json.dumps({"keys": {hash_key("k"): {"name": "a", "rate": 5}}}).encode())
    again = parse_rules(json.dumps({"keys": {hash_key("k"): {"name": "a", "rate": 5}}}).encode(), first)
    changed = parse_rules(json.dumps({"keys": {hash_key("k"): {"name": "a", "rate": 6}}}).encode(), first)
    assert again.keys[hash_key("k")].bucket is first.keys[hash_key("k")].bucket
    assert changed.keys[hash_key("k")].bucket is not first.keys[hash_key("k")].bucket


def test_a_changed_file_applies_and_an_invalid_one_keeps_the_rules(tmp_path) -> None:
    access = _access(tmp_path, {"required": True, "keys": {hash_key("k"): {"name": "a"}}})
    before = access.applied["api_keys_file"]
    (tmp_path / "api-keys.json").write_text("{not json")
    assert not access.refresh()
    assert access.check(MODEL, _headers("k").get) == "a"
    (tmp_path / "api-keys.json").write_text(json.dumps({"required": True}))
    time.sleep(0.01)
    assert access.refresh() and access.applied["api_keys_file"] != before
    with pytest.raises(AccessDenied):
        access.check(MODEL, _headers("k").get)


def test_paths_name_their_model() -> None:
    assert model_of_path(f"/v1/models/{MODEL}/versions/1:predict") == MODEL
    assert model_of_path("/V1/Models/a%20b:predict") == "a b"
    assert model_of_path("/v1/models") == ""
    assert presented_key({"authorization": "bearer  abc "}.get) == "abc"


def test_config_keys_render_a_keys_file_of_digests() -> None:
    key, digest = apikeys.new_key()
    config = build({"model.name": MODEL, "auth.required": "true", "keys.alice.sha256": digest,
                    "keys.alice.models": MODEL, "keys.alice.rate": 3, f"models.{MODEL}.rate": 7})
    text = apikeys.keys_file(config)
    assert key not in text and digest in text
    doc = json.loads(text)
    assert doc == {"required": True, "models": {MODEL: {"required": False, "rate": 7}},
                   "keys": {digest: {"name": "alice", "models": [MODEL], "rate": 3}}}
    assert parse_rules(text.encode()).keys[digest].name == "alice"


def test_bad_key_entries_are_named_by_their_paths() -> None:
    with pytest.raises(ConfigError) as exc:
        build({"model.name": MODEL, "keys.al.ice.sha256": "x", "keys.bob.sha256": "12",
               "keys.carol.sha256": "a" * 64, "keys.carol.models": "nope", "keys.dave.colour": 1,
               "ip.allow": "10.0.0.300"})
    paths = {path for path, _ in exc.value.problems}
    assert {"keys.al.ice.sha256", "keys.bob.sha256", "keys.carol.models", "keys.dave.colour", "ip.allow"} <= paths


@pytest.mark.parametrize("rate", [1, 7, 15, 20, 33.3333, 100, 1000, 12345])
def test_envoy_buckets_fill_at_the_rate(rate: float) -> None:
    bucket = token_bucket(rate)
    interval = float(bucket["fill_interval"].rstrip("s"))
    assert interval >= 0.05
    assert bucket["tokens_per_fill"] / interval == pytest.approx(rate, rel=0.005)
    assert bucket["max_tokens"] >= bucket["tokens_per_fill"]


def test_the_cluster_rate_is_divided_over_the_members() -> None:
    config = build({"rate.cluster": 90, "rate.node": 40, "ip.allow": "10.0.0.0/8", "node.address": "10.1.1.1"})
    assert edge_context(config, ["a", "b", "c"])["bucket"]["rate"] == 30
    assert edge_context(config, ["a"])["bucket"]["rate"] == 40
    allow = edge_context(config, ["a"])["allow"]
    assert {"address": "10.1.1.1", "prefix": 32} in allow and {"address": "127.0.0.1", "prefix": 32} in allow
    assert edge_context(build({}), [])["bucket"] is None and edge_context(build({}), [])["allow"] == []
