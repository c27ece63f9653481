"""Bearer JWTs for the agent API: key loading, verification, roles, and `tonewall token issue`.

Roles (claim `role`):
- `agent`: sees and captures on calls whose agent (user part of the agent leg's URI)
  equals the token's `agent` claim; reads and cancels those captures.
- `supervisor`: sees calls, reads and cancels captures whose agent is listed in the
  `agents` claim, or of every agent when `team` is "*". Does not start captures:
  the agent on the call does.
- `ops`: read-only; lists all calls (no caller-entered data there), health, metrics.
  No capture resource at all (they hold tokens and last four).
- `admin`: lists calls and takes admin actions (key reload); every admin action
  needs an `amr` claim naming a second factor ("mfa", "otp", "hwk").

Verification is pinned to asymmetric algorithms chosen by the key type (EdDSA for
Ed25519, ES256 for P-256): the token header never picks the algorithm.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

DEFAULT_ISSUER = "tonewall"
DEFAULT_AUDIENCE = "tonewall-api"
DEFAULT_DATA_DIR = "./tonewall-data"
DEV_KEY_NAME = "jwt-signing-ed25519.pem"
MAX_TTL_S = 24 * 3600
SECOND_FACTORS = frozenset({"mfa", "otp", "hwk"})
CLOCK_LEEWAY_S = 30.0


class Role(Enum):
    """What a token holder may do."""

    AGENT = "agent"
    SUPERVISOR = "supervisor"
    OPS = "ops"
    ADMIN = "admin"


class AuthFailed(ValueError):
    """The request carries no valid token (HTTP 401); the message is a fixed reason."""


class Forbidden(ValueError):
    """A valid token that may not do this (HTTP 403); the message is a fixed reason."""


@dataclass(frozen=True)
class Identity:
    """A verified token holder."""

    subject: str
    """The `sub` claim."""
    role: Role
    agent: str | None = None
    """Agent id (user part of the agent leg's URI) for the agent role."""
    agents: frozenset[str] = field(default_factory=frozenset)
    """Agents a supervisor oversees."""
    all_agents: bool = False
    """A supervisor whose `team` claim is "*"."""
    amr: frozenset[str] = field(default_factory=frozenset)
    """Authentication methods (RFC 8176)."""
    token_id: str | None = None

    @property
    def actor(self) -> str:
        """Who did it, for audit records and the capture service."""
        return f"{self.role.value}:{self.subject}"

    @property
    def rate_key(self) -> str:
        return f"{self.role.value}:{self.subject}"


# -- policy -----------------------------------------------------------------


def may_see_call(identity: Identity, call_agent: str | None) -> bool:
    """Whether the call (by its agent) appears in this identity's call list."""
    if identity.role in (Role.OPS, Role.ADMIN):
        return True
    return _oversees(identity, call_agent)


def check_start_capture(identity: Identity, call_agent: str | None) -> None:
    """Only the agent on the call starts a capture on it."""
    if identity.role is not Role.AGENT:
        raise Forbidden("role may not start captures")
    if not _oversees(identity, call_agent):
        raise Forbidden("not your call")


def check_capture_access(identity: Identity, capture_agent: str | None) -> None:
    """Reading, streaming and cancelling a capture: its agent or their supervisor."""
    if identity.role not in (Role.AGENT, Role.SUPERVISOR):
        raise Forbidden("role may not access captures")
    if not _oversees(identity, capture_agent):
        raise Forbidden("not your capture")


def check_admin(identity: Identity) -> None:
    """Admin actions need the admin role and a second factor in `amr`."""
    if identity.role is not Role.ADMIN:
        raise Forbidden("admin role required")
    if not identity.amr & SECOND_FACTORS:
        raise Forbidden("mfa required")


def _oversees(identity: Identity, agent: str | None) -> bool:
    # A call or capture with no agent belongs to nobody (not to an agent literally named "None").
    if not isinstance(agent, str) or not agent:
        return False
    if identity.role is Role.AGENT:
        return identity.agent is not None and identity.agent == agent
    if identity.role is Role.SUPERVISOR:
        return identity.all_agents or agent in identity.agents
    return False


# -- keys ---------------------------------------------------------------------


def _algorithm_for(key: Any) -> str:
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "EdDSA"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        if key.curve.name != "secp256r1":
            raise ValueError("only P-256 EC keys are accepted")
        return "ES256"
    raise ValueError("unsupported key type")


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def load_or_create_dev_key(data_dir: str | os.PathLike[str]) -> ed25519.Ed25519PrivateKey:
    """The development signing key in DATA_DIR/keys, generated (0600) when absent."""
    path = Path(data_dir) / "keys" / DEV_KEY_NAME
    if not path.exists():
        # The data dir is private (0700) whoever creates it first: `token issue` often runs before `run`.
        Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            _write_private(path, pem)
        except FileExistsError:
            pass  # another process created it first: use theirs
    if path.stat().st_mode & 0o077:
        raise PermissionError("signing key file must not be group/world accessible")
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise ValueError("development signing key is not Ed25519")
    return loaded


@dataclass(frozen=True)
class _VerifyKey:
    key: Any
    algorithm: str


class KeySet:
    """Verification keys by `kid`; a key without kid matches tokens without kid."""

    def __init__(self, keys: dict[str | None, _VerifyKey]) -> None:
        if not keys:
            raise ValueError("no verification keys")
        self._keys = keys

    @classmethod
    def from_public_key(cls, key: Any, kid: str | None = None) -> KeySet:
        if isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
            key = key.public_key()
        return cls({kid: _VerifyKey(key, _algorithm_for(key))})

    @classmethod
    def from_pem_file(cls, path: str | os.PathLike[str]) -> KeySet:
        """A PEM public key (Ed25519 or P-256), e.g. the IdP's signing key."""
        return cls.from_public_key(serialization.load_pem_public_key(Path(path).read_bytes()))

    @classmethod
    def from_jwks_file(cls, path: str | os.PathLike[str]) -> KeySet:
        """An IdP's JWKS document saved to a file (RFC 7517 section 5)."""
        document = json.loads(Path(path).read_text())
        keys: dict[str | None, _VerifyKey] = {}
        for entry in document.get("keys", []):
            if entry.get("use", "sig") != "sig":
                continue
            try:
                jwk_key = jwt.PyJWK(entry).key
                algorithm = _algorithm_for(jwk_key)
            except (jwt.PyJWTError, ValueError):
                continue  # key types we do not accept (RSA, shared secrets) are skipped
            if entry.get("alg") not in (None, algorithm):
                continue
            keys[entry.get("kid")] = _VerifyKey(jwk_key, algorithm)
        return cls(keys)

    def lookup(self, kid: str | None) -> _VerifyKey:
        if kid in self._keys:
            return self._keys[kid]
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise AuthFailed("unknown signing key")


# -- verification -----------------------------------------------------------


class Authenticator:
    """Verifies `Authorization: Bearer` JWTs against a key set; time is passed in."""

    def __init__(
        self,
        keys: KeySet,
        *,
        audience: str = DEFAULT_AUDIENCE,
        issuer: str = DEFAULT_ISSUER,
        leeway_s: float = CLOCK_LEEWAY_S,
        max_lifetime_s: float = MAX_TTL_S,
        key_source: Any = None,
    ) -> None:
        self.keys = keys
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s
        """Longest exp - iat accepted: a leaked long-lived token is refused outright."""
        self._key_source = key_source

    @classmethod
    def for_data_dir(cls, data_dir: str | os.PathLike[str], **kwargs: Any) -> Authenticator:
        """Development: verify tokens signed by the local key (created when absent)."""
        return cls(
            KeySet.from_public_key(load_or_create_dev_key(data_dir)),
            key_source=lambda: KeySet.from_public_key(load_or_create_dev_key(data_dir)),
            **kwargs,
        )

    @classmethod
    def for_public_key_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> Authenticator:
        return cls(KeySet.from_pem_file(path), key_source=lambda: KeySet.from_pem_file(path), **kwargs)

    @classmethod
    def for_jwks_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> Authenticator:
        return cls(KeySet.from_jwks_file(path), key_source=lambda: KeySet.from_jwks_file(path), **kwargs)

    def reload(self) -> None:
        """Re-read the key files (IdP key rotation); keeps the old set if that fails."""
        if self._key_source is not None:
            self.keys = self._key_source()

    def authenticate(self, authorization: str | None, now: float) -> Identity:
        """The identity behind an Authorization header value, or AuthFailed."""
        if not authorization:
            raise AuthFailed("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailed("missing bearer token")
        if not token.isascii():  # a compact JWS is base64url and dots (RFC 7515 7.1)
            raise AuthFailed("malformed token")
        return self.verify(token.strip(), now)

    def verify(self, token: str, now: float) -> Identity:
        """Check signature, audience, issuer and times of one compact JWT."""
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError):  # ValueError: a str that is not ASCII (UnicodeError)
            raise AuthFailed("malformed token") from None
        kid = header.get("kid")
        verify_key = self.keys.lookup(kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(
                token,
                verify_key.key,
                algorithms=[verify_key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": ["exp", "iat", "sub", "aud", "iss"],
                    # times are checked below against the caller's clock
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAlgorithmError:
            raise AuthFailed("algorithm not allowed") from None
        except jwt.InvalidSignatureError:
            raise AuthFailed("bad signature") from None
        except jwt.InvalidAudienceError:
            raise AuthFailed("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AuthFailed("wrong issuer") from None
        except jwt.MissingRequiredClaimError:
            raise AuthFailed("missing claim") from None
        except jwt.PyJWTError:
            raise AuthFailed("malformed token") from None
        return self._identity(claims, now)

    def _identity(self, claims: dict[str, Any], now: float) -> Identity:
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", claims.get("iat"))
        # RFC 7519 2 NumericDate: a JSON number (RFC 8259 has no NaN or Infinity; Python's
        # json reads them, and NaN compares false, so an exp of NaN would never expire).
        if not all(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                   for value in (exp, iat, nbf)):
            raise AuthFailed("malformed token")
        # RFC 7519 4.1.4: reject on or after exp, with a small leeway for clock skew
        if now >= exp + self.leeway_s:
            raise AuthFailed("token expired")
        if now + self.leeway_s < nbf:
            raise AuthFailed("token not yet valid")
        # RFC 7519 4.1.6: iat gives the token's age; one issued in the future or for longer than
        # the policy allows (a leaked long-lived token) is refused.
        if now + self.leeway_s < iat or exp - iat > self.max_lifetime_s:
            raise AuthFailed("token lifetime not allowed")
        try:
            role = Role(claims.get("role"))
        except ValueError:
            raise AuthFailed("unknown role") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthFailed("malformed token")
        agent = claims.get("agent")
        if role is Role.AGENT and (not isinstance(agent, str) or not agent):
            raise AuthFailed("missing claim")
        agents = claims.get("agents", [])
        amr = claims.get("amr", [])
        if not _str_list(agents) or not _str_list(amr):
            raise AuthFailed("malformed token")
        return Identity(
            subject=subject,
            role=role,
            agent=agent if isinstance(agent, str) else None,
            agents=frozenset(agents),
            all_agents=role is Role.SUPERVISOR and claims.get("team") == "*",
            amr=frozenset(amr),
            token_id=claims.get("jti") if isinstance(claims.get("jti"), str) else None,
        )


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# -- issuing --------------------------------------------------------------------


def issue_token(
    signing_key: Any,
    *,
    role: Role | str,
    subject: str,
    now: float,
    ttl_s: float = 3600,
    agent: str | None = None,
    agents: Iterable[str] = (),
    team: str | None = None,
    amr: Iterable[str] = (),
    audience: str = DEFAULT_AUDIENCE,
    issuer: str = DEFAULT_ISSUER,
    kid: str | None = None,
) -> str:
    """A signed compact JWT; the algorithm follows the key type."""
    role = Role(role)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "role": role.value,
        "iat": int(now),
        "exp": int(now + ttl_s),
        "jti": uuid.uuid4().hex,
    }
    if agent is not None:
        claims["agent"] = agent
    if agents:
        claims["agents"] = sorted(agents)
    if team is not None:
        claims["team"] = team
    if amr:
        claims["amr"] = sorted(amr)
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, signing_key, algorithm=_algorithm_for(signing_key), headers=headers)


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def issue_token_main(argv: Sequence[str] | None = None) -> int:
    """`tonewall token issue`: print a development bearer token alone on one line."""
    parser = argparse.ArgumentParser(
        prog="tonewall token issue", description="Mint a development bearer token."
    )
    parser.add_argument("--role", required=True, choices=[role.value for role in Role])
    parser.add_argument("--agent", help="agent id (user part of the agent's SIP URI); required for agent")
    parser.add_argument("--agents", type=_csv, default=[], help="supervisor: comma-separated agent ids")
    parser.add_argument("--team", help='supervisor: "*" for every agent')
    parser.add_argument("--amr", type=_csv, default=[], help='authentication methods, e.g. "pwd,mfa"')
    parser.add_argument("--subject", help="sub claim (default: the agent id or the role)")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    if args.role == Role.AGENT.value and not args.agent:
        parser.error("--agent is required for the agent role")
    if not 0 < args.ttl <= MAX_TTL_S:
        parser.error(f"--ttl must be between 1 and {MAX_TTL_S}")
    if os.path.exists(args.data_dir) and not os.path.isdir(args.data_dir):
        print(f"tonewall token issue: the data dir {args.data_dir} is not a directory", file=sys.stderr)
        return 1
    try:
        key = load_or_create_dev_key(args.data_dir)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(f"tonewall token issue: cannot use the data dir {args.data_dir}: {reason}", file=sys.stderr)
        return 1
    token = issue_token(
        key,
        role=args.role,
        subject=args.subject or args.agent or args.role,
        now=time.time(),
        ttl_s=args.ttl,
        agent=args.agent,
        agents=args.agents,
        team=args.team,
        amr=args.amr,
    )
    sys.stdout.write(token + "\n")
    return 0
