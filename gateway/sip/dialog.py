"""SIP dialogs (RFC 3261 section 12): identity, sequence numbers, route set, remote target."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from gateway.sip.message import Headers, SipRequest, SipResponse, _shared_name_addr, parse_name_addr, split_list


class DialogError(ValueError):
    """A request does not fit its dialog (e.g. CSeq went backwards: answer 500, RFC 3261 12.2.2)."""

    status = 500


@dataclass
class Dialog:
    """One side's view of a dialog; builds in-dialog requests (RFC 3261 12.2.1.1)."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    """Our From (as UAC) / To (as UAS) header value without the tag."""
    remote_uri: str
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    local_contact: str = ""

    @property
    def id(self) -> tuple[str, str, str]:
        """RFC 3261 12: Call-ID, local tag, remote tag."""
        return self.call_id, self.local_tag, self.remote_tag

    @classmethod
    def as_uas(cls, request: SipRequest, local_tag: str, local_contact: str) -> Dialog:
        """RFC 3261 12.1.1: route set from Record-Route in order, remote target from Contact."""
        target = _contact_target(request)
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_tag or "",
            local_uri=_without_tag(request.headers.get("To") or ""),
            remote_uri=_without_tag(request.headers.get("From") or ""),
            remote_target=target or request.uri,
            route_set=request.headers.get_all("Record-Route"),
            remote_seq=request.cseq[0],
            local_contact=local_contact,
        )

    @classmethod
    def as_uac(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """RFC 3261 12.1.2: route set from Record-Route reversed, remote target from Contact."""
        target = _contact_target(response)
        return cls(
            call_id=request.call_id,
            local_tag=request.from_tag or "",
            remote_tag=response.to_tag or "",
            local_uri=_without_tag(request.headers.get("From") or ""),
            remote_uri=_without_tag(request.headers.get("To") or ""),
            remote_target=target or request.uri,
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_seq=request.cseq[0],
            local_contact=request.headers.get("Contact") or "",
        )

    def matches(self, msg: SipRequest) -> bool:
        """Whether an incoming request belongs to this dialog (Call-ID and both tags)."""
        return msg.call_id == self.call_id and msg.to_tag == self.local_tag and msg.from_tag == self.remote_tag

    def receive_request(self, request: SipRequest) -> None:
        """Check and record the remote CSeq (RFC 3261 12.2.2); refresh the target on re-INVITE/UPDATE."""
        num, method = request.cseq
        if method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and num <= self.remote_seq:
                raise DialogError("SIP CSeq is lower than the dialog's")
            self.remote_seq = num
        if method in ("INVITE", "UPDATE"):
            self.refresh_target(request)

    def refresh_target(self, msg: SipRequest | SipResponse) -> None:
        """RFC 3261 12.2.1.2 / 12.2.2: a target refresh replaces the remote target with its Contact."""
        target = _contact_target(msg)
        if target is not None:
            self.remote_target = target

    def new_request(
        self,
        method: str,
        via: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        cseq: int | None = None,
    ) -> SipRequest:
        """An in-dialog request; `cseq` is given for ACK (the INVITE's number), else the next one."""
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        uri = self.remote_target
        routes = list(self.route_set)
        if routes and ";lr" not in routes[0]:
            # RFC 3261 12.2.1.1: strict routing puts the first route in the Request-URI.
            uri = str(parse_name_addr(routes[0]).uri)
            routes = routes[1:] + [f"<{self.remote_target}>"]
        h = Headers()
        h.add("Via", via)
        h.add("Max-Forwards", "70")
        h.add("From", f"{self.local_uri};tag={self.local_tag}")
        h.add("To", f"{self.remote_uri};tag={self.remote_tag}")
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        for r in routes:
            h.add("Route", r)
        if self.local_contact and method not in ("ACK", "BYE", "CANCEL"):
            h.add("Contact", self.local_contact)
        for name, value in extra or ():
            h.add(name, value)
        if content_type and body:
            h.add("Content-Type", content_type)
        return SipRequest(method, uri, h, body)


def _contact_target(msg: SipRequest | SipResponse) -> str | None:
    """The URI of the first Contact (RFC 3261 12.1.1 remote target), or None for none or `*`."""
    values = msg.headers.values("Contact")
    if not values:
        return None
    return _target_of(values[0])


@lru_cache(maxsize=4096)
def _target_of(value: str) -> str | None:
    """Peers send the same Contact in every dialog: parse and format each spelling once."""
    first = next(iter(split_list(value)), None)
    if first is None or first.strip() == "*":
        return None
    return str(_shared_name_addr(first).uri)


def _without_tag(value: str) -> str:
    """The From/To value minus its tag; kept as written when the tag text can be cut out verbatim."""
    addr = _shared_name_addr(value)
    tag = addr.params.get("tag")
    if "tag" not in addr.params:
        return value.strip()
    cut = f";tag={tag}" if tag is not None else ";tag"
    if value.count(cut) == 1 and value.rstrip().endswith(cut):
        return value.rstrip()[: -len(cut)]
    addr = parse_name_addr(value)
    addr.params.pop("tag", None)
    return str(addr)
