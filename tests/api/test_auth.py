"""Token verification, key files, roles policy and `tonewall token issue`, without a server."""

from __future__ import annotations

import json
import os
import stat

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.api.auth import (
    AuthFailed,
    Authenticator,
    Forbidden,
    Identity,
    KeySet,
    Role,
    check_admin,
    check_capture_access,
    check_start_capture,
    issue_token,
    issue_token_main,
    load_or_create_dev_key,
    may_see_call,
)

NOW = 1_800_000_000.0


def _auth(key: object, **kwargs: object) -> Authenticator:
    return Authenticator(KeySet.from_public_key(key), **kwargs)


def test_expiry_uses_the_clock_it_is_given() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    token = issue_token(key, role="agent", subject="alice", agent="alice", now=NOW, ttl_s=60)
    auth = _auth(key, leeway_s=5)
    assert auth.verify(token, NOW + 64).agent == "alice"
    with pytest.raises(AuthFailed, match="^token expired$"):
        auth.verify(token, NOW + 65)
    with pytest.raises(AuthFailed, match="^token not yet valid$"):
        auth.verify(token, NOW - 6)


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), True])
def test_time_claims_must_be_finite_numbers(claim: str, value: object) -> None:
    """RFC 7519 2: NumericDate is a JSON number. Python's json reads NaN, and NaN compares false:
    a correctly signed exp of NaN never expired."""
    key = ed25519.Ed25519PrivateKey.generate()
    claims = jwt.decode(issue_token(key, role="ops", subject="olga", now=NOW), options={"verify_signature": False})
    claims[claim] = value
    token = jwt.encode(claims, key, algorithm="EdDSA")
    with pytest.raises(AuthFailed, match="^malformed token$"):
        _auth(key).verify(token, NOW)


def test_es256_keys_work_and_other_curves_do_not() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = issue_token(key, role="ops", subject="olga", now=NOW)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert _auth(key).verify(token, NOW).role is Role.OPS
    with pytest.raises(ValueError):
        KeySet.from_public_key(ec.generate_private_key(ec.SECP384R1()))


def test_the_key_type_picks_the_algorithm_not_the_header() -> None:
    ed_key = ed25519.Ed25519PrivateKey.generate()
    es_token = issue_token(ec.generate_private_key(ec.SECP256R1()), role="ops", subject="x", now=NOW)
    with pytest.raises(AuthFailed, match="^algorithm not allowed$"):
        _auth(ed_key).verify(es_token, NOW)


def test_agent_tokens_need_an_agent_claim() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    token = issue_token(key, role="agent", subject="alice", now=NOW)
    with pytest.raises(AuthFailed, match="^missing claim$"):
        _auth(key).verify(token, NOW)


def test_custom_audience_and_issuer() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    token = issue_token(key, role="ops", subject="o", now=NOW, audience="api.example", issuer="https://idp.example")
    auth = _auth(key, audience="api.example", issuer="https://idp.example")
    assert auth.verify(token, NOW).subject == "o"
    with pytest.raises(AuthFailed, match="^wrong (audience|issuer)$"):
        _auth(key).verify(token, NOW)


def _jwk(key: object, kid: str) -> dict[str, object]:
    algorithm = jwt.algorithms.OKPAlgorithm if isinstance(key, ed25519.Ed25519PublicKey) else jwt.algorithms.ECAlgorithm
    entry = json.loads(algorithm.to_jwk(key))
    entry["kid"] = kid
    return entry


def test_jwks_file_selects_by_kid_and_reloads(tmp_path) -> None:
    ed_key = ed25519.Ed25519PrivateKey.generate()
    es_key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "jwks.json"
    hs_entry = {"kty": "oct", "k": "c2VjcmV0", "kid": "hs", "alg": "HS256"}
    path.write_text(json.dumps({"keys": [_jwk(ed_key.public_key(), "ed"), _jwk(es_key.public_key(), "es"), hs_entry]}))
    auth = Authenticator.for_jwks_file(path)
    assert auth.verify(issue_token(ed_key, role="ops", subject="a", now=NOW, kid="ed"), NOW).subject == "a"
    assert auth.verify(issue_token(es_key, role="ops", subject="b", now=NOW, kid="es"), NOW).subject == "b"
    with pytest.raises(AuthFailed, match="^unknown signing key$"):
        auth.verify(issue_token(ed_key, role="ops", subject="c", now=NOW, kid="nope"), NOW)
    with pytest.raises(AuthFailed, match="^unknown signing key$"):
        auth.verify(jwt.encode({"sub": "x"}, "s" * 32, algorithm="HS256", headers={"kid": "hs"}), NOW)
    impostor = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(AuthFailed, match="^bad signature$"):
        auth.verify(issue_token(impostor, role="ops", subject="d", now=NOW, kid="ed"), NOW)
    with pytest.raises(AuthFailed, match="^algorithm not allowed$"):
        auth.verify(issue_token(es_key, role="ops", subject="d", now=NOW, kid="ed"), NOW)
    rotated = ed25519.Ed25519PrivateKey.generate()
    path.write_text(json.dumps({"keys": [_jwk(rotated.public_key(), "ed2")]}))
    auth.reload()
    assert auth.verify(issue_token(rotated, role="ops", subject="e", now=NOW, kid="ed2"), NOW).subject == "e"
    with pytest.raises(AuthFailed):
        auth.verify(issue_token(ed_key, role="ops", subject="a", now=NOW, kid="ed"), NOW)


def test_public_key_pem_file(tmp_path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "idp.pem"
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    auth = Authenticator.for_public_key_file(path)
    assert auth.verify(issue_token(key, role="admin", subject="root", now=NOW, amr=["mfa"]), NOW).amr == {"mfa"}


def test_dev_key_is_private_and_stable(tmp_path) -> None:
    first = load_or_create_dev_key(tmp_path)
    path = tmp_path / "keys" / "jwt-signing-ed25519.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) & 0o077 == 0
    second = load_or_create_dev_key(tmp_path)
    assert first.private_bytes_raw() == second.private_bytes_raw()
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError):
        load_or_create_dev_key(tmp_path)


def test_token_issue_prints_one_verifiable_line(tmp_path, capsys) -> None:
    code = issue_token_main(["--role", "agent", "--agent", "alice", "--ttl", "120", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and out.count("\n") == 1
    import time

    identity = Authenticator.for_data_dir(tmp_path).verify(out.strip(), time.time())
    assert (identity.role, identity.agent, identity.subject) == (Role.AGENT, "alice", "alice")
    claims = jwt.decode(out.strip(), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


def test_token_issue_for_supervisor_and_admin(tmp_path, capsys) -> None:
    import time

    auth = Authenticator.for_data_dir(tmp_path)
    issue_token_main(["--role", "supervisor", "--agents", "alice, bob", "--data-dir", str(tmp_path)])
    sup = auth.verify(capsys.readouterr().out.strip(), time.time())
    assert sup.agents == {"alice", "bob"} and not sup.all_agents
    issue_token_main(["--role", "admin", "--amr", "pwd,mfa", "--data-dir", str(tmp_path)])
    check_admin(auth.verify(capsys.readouterr().out.strip(), time.time()))


@pytest.mark.parametrize(
    "argv",
    [
        ["--role", "agent"],
        ["--role", "root"],
        ["--role", "ops", "--ttl", "0"],
        ["--role", "ops", "--ttl", "999999"],
    ],
)
def test_token_issue_refuses_bad_arguments(tmp_path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        issue_token_main([*argv, "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2


ALICE = Identity("alice", Role.AGENT, agent="alice")
SUE = Identity("sue", Role.SUPERVISOR, agents=frozenset({"alice"}))
BOSS = Identity("boss", Role.SUPERVISOR, all_agents=True)
OPS = Identity("olga", Role.OPS)
ADMIN = Identity("root", Role.ADMIN, amr=frozenset({"pwd"}))


def test_policy_table() -> None:
    assert [may_see_call(i, "alice") for i in (ALICE, SUE, BOSS, OPS, ADMIN)] == [True] * 5
    assert [may_see_call(i, "bob") for i in (ALICE, SUE, BOSS, OPS, ADMIN)] == [False, False, True, True, True]
    check_start_capture(ALICE, "alice")
    for identity, agent in [(ALICE, "bob"), (SUE, "alice"), (BOSS, "alice"), (OPS, "alice"), (ADMIN, "alice")]:
        with pytest.raises(Forbidden):
            check_start_capture(identity, agent)
    for identity in (ALICE, SUE, BOSS):
        check_capture_access(identity, "alice")
    for identity, agent in [(ALICE, "bob"), (SUE, "bob"), (OPS, "alice"), (ADMIN, "alice")]:
        with pytest.raises(Forbidden):
            check_capture_access(identity, agent)
    with pytest.raises(Forbidden, match="^mfa required$"):
        check_admin(ADMIN)
    check_admin(Identity("root", Role.ADMIN, amr=frozenset({"pwd", "hwk"})))
