"""Who is calling, and may they: a static bearer token (local mode) or Kubernetes TokenReview and
SubjectAccessReview (cluster mode: the caller's own RBAC decides). No anonymous writes."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from aistack.gateway.settings import TOKEN_ENV


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Caller:
    name: str
    groups: tuple[str, ...] = ()
    token_hash: str = ""  # identifies the caller for per-client limits without keeping the token

    @property
    def anonymous(self) -> bool:
        return not self.token_hash


ANONYMOUS = Caller("system:anonymous", ("system:unauthenticated",))


@dataclass(frozen=True)
class Access:
    """One Kubernetes authorization question: may the caller <verb> <resource>[/<sub>] [<name>] in <ns>?"""

    verb: str
    resource: str
    namespace: str
    name: str | None = None
    subresource: str | None = None
    write: bool = False


class Authenticator(Protocol):
    def authenticate(self, token: str | None) -> Caller: ...
    def authorize(self, caller: Caller, access: Access) -> None: ...


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise AuthError(401, "Authorization header must be 'Bearer <token>'")
    return value.strip()


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class StaticTokenAuth:
    """Local mode: one shared token from $AISTACK_GATEWAY_TOKEN. Without one, reads are open and
    writes are refused; with one, every API call needs it."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def authenticate(self, token: str | None) -> Caller:
        if token is None:
            if self.token is not None:
                raise AuthError(401, "a bearer token is required (Authorization: Bearer <token>)")
            return ANONYMOUS
        if self.token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            raise AuthError(401, "invalid bearer token")
        return Caller("gateway-token", (), _hash(token))

    def authorize(self, caller: Caller, access: Access) -> None:
        if access.write and caller.anonymous:
            raise AuthError(
                401,
                f"anonymous writes are refused: set {TOKEN_ENV} for the gateway and send it as a bearer token",
            )


CACHE_LIMIT = 4096


def _remember(cache: dict[Any, Any], key: Any, entry: tuple[Any, ...]) -> None:
    """Store an (expiry, ...) entry; past CACHE_LIMIT entries, expired ones are dropped first, so
    that many distinct callers or task names cannot grow the cache without end."""
    if len(cache) >= CACHE_LIMIT:
        now = time.monotonic()
        for stale in [k for k, v in cache.items() if v[0] <= now]:
            del cache[stale]
        if len(cache) >= CACHE_LIMIT:
            cache.clear()  # all fresh: start over rather than grow (answers are re-asked, not wrong)
    cache[key] = entry


@dataclass
class KubernetesAuth:
    """Cluster mode: TokenReview says who the token belongs to, SubjectAccessReview whether that
    user may do what the request does (create taskorchestrations, create ollamaagents/invoke, ...).
    Answers are cached briefly so that a busy client does not hammer the API server."""

    api_client: Any
    ttl: float = 30.0
    _tokens: dict[str, tuple[float, Caller]] = field(default_factory=dict)
    _decisions: dict[tuple[Caller, Access], tuple[float, bool, str]] = field(default_factory=dict)

    def authenticate(self, token: str | None) -> Caller:
        from kubernetes import client

        if token is None:
            raise AuthError(401, "a Kubernetes bearer token is required (Authorization: Bearer <token>)")
        key = _hash(token)
        cached = self._tokens.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        review = client.AuthenticationV1Api(self.api_client).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        )
        status = review.status
        if not status or not status.authenticated:
            raise AuthError(
                401,
                f"token rejected by the API server: {getattr(status, 'error', None) or 'not authenticated'}",
            )
        caller = Caller(status.user.username, tuple(status.user.groups or ()), key)
        _remember(self._tokens, key, (time.monotonic() + self.ttl, caller))
        return caller

    def authorize(self, caller: Caller, access: Access) -> None:
        from kubernetes import client

        cached = self._decisions.get((caller, access))
        if cached and cached[0] > time.monotonic():
            allowed, reason = cached[1], cached[2]
        else:
            review = client.AuthorizationV1Api(self.api_client).create_subject_access_review(
                client.V1SubjectAccessReview(
                    spec=client.V1SubjectAccessReviewSpec(
                        user=caller.name,
                        groups=list(caller.groups),
                        resource_attributes=client.V1ResourceAttributes(
                            group="ai.stack",
                            resource=access.resource,
                            subresource=access.subresource,
                            verb=access.verb,
                            namespace=access.namespace,
                            name=access.name,
                        ),
                    )
                )
            )
            allowed, reason = bool(review.status.allowed), review.status.reason or ""
            _remember(self._decisions, (caller, access), (time.monotonic() + self.ttl, allowed, reason))
        if not allowed:
            what = access.resource + (f"/{access.subresource}" if access.subresource else "")
            target = f" {access.name!r}" if access.name else ""
            raise AuthError(
                403,
                f'{caller.name} cannot {access.verb} {what}{target} in namespace "{access.namespace}"'
                + (f": {reason}" if reason else ""),
            )
