"""Dialog state (RFC 3261 §12), sans-I/O.

A :class:`DialogState` is created from the INVITE (UAS) or from the INVITE and its 2xx (UAC).
It knows the dialog id, the local and remote URIs, both CSeq spaces, the route set and the
remote target, and it builds in-dialog requests.

Rules:

* Rule 1: the route set comes from Record-Route — in order for the UAS, reversed for the UAC
  (§12.1.1, §12.1.2) — and never changes after the dialog is created.
* Rule 2: the remote target is the URI of the peer's Contact; target-refresh requests
  (re-INVITE, UPDATE) and their 2xx replace it (§12.2).
* Rule 3: a request whose CSeq is lower than the remote sequence number is answered 500
  (§12.2.2); ACK and CANCEL carry the INVITE's number and are not checked.
* Rule 4: in-dialog requests carry the route set as Route headers. With a loose first route
  (``;lr``) the Request-URI is the remote target; with a strict one the first route becomes the
  Request-URI and the remote target goes last in Route (§12.2.1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from sipbot.errors import SipParseError
from sipbot.sip.address import NameAddress, SipUri, parse_name_addr, parse_uri
from sipbot.sip.headers import Headers
from sipbot.sip.message import SipRequest, SipResponse, make_response

DialogId = tuple[str, str, str]  # Call-ID, local tag, remote tag
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})


def _untagged(addr: NameAddress) -> NameAddress:
    return NameAddress(addr.uri, addr.display_name, tuple(p for p in addr.params if p[0] != "tag"))


def contact_uri(message: SipRequest | SipResponse) -> str | None:
    """The URI of the first Contact, or None when there is none (or it is ``*``/malformed)."""
    value = message.headers.get("Contact")
    if value is None or value.strip() == "*":
        return None
    try:
        return parse_name_addr(value, "Contact").uri
    except SipParseError:
        return None


@dataclass(slots=True)
class DialogState:
    """One dialog's state (§12). Mutable: CSeqs and the remote target move on."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: NameAddress  # From of our requests (without tag)
    remote_uri: NameAddress  # To of our requests (without tag)
    remote_target: str
    route_set: tuple[str, ...]
    local_seq: int | None
    remote_seq: int | None
    secure: bool = False

    @property
    def id(self) -> DialogId:
        return (self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uas(cls, request: SipRequest, local_tag: str, transport: str = "udp") -> DialogState:
        """The dialog a UAS creates by answering ``request`` with a To tag (§12.1.1).

        Raises:
            SipParseError: From or To is malformed.
        """
        from_ = parse_name_addr(request.headers.get("From") or "", "From")
        to = parse_name_addr(request.headers.get("To") or "", "To")
        target = contact_uri(request) or from_.uri
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag or "",
            local_uri=_untagged(to),
            remote_uri=_untagged(from_),
            remote_target=target,
            route_set=tuple(request.headers.get_all("Record-Route")),
            local_seq=None,
            remote_seq=request.cseq[0],
            secure=_is_secure(request.uri, transport),
        )

    @classmethod
    def as_uac(
        cls, request: SipRequest, response: SipResponse, transport: str = "udp"
    ) -> DialogState:
        """The dialog a UAC gets from a 2xx (or tagged 1xx) to its INVITE (§12.1.2).

        Raises:
            SipParseError: From or To is malformed.
        """
        from_ = parse_name_addr(request.headers.get("From") or "", "From")
        to = parse_name_addr(response.headers.get("To") or "", "To")
        target = contact_uri(response) or request.uri
        return cls(
            call_id=request.call_id,
            local_tag=from_.tag or "",
            remote_tag=to.tag or "",
            local_uri=_untagged(from_),
            remote_uri=_untagged(to),
            remote_target=target,
            route_set=tuple(reversed(response.headers.get_all("Record-Route"))),
            local_seq=request.cseq[0],
            remote_seq=None,
            secure=_is_secure(request.uri, transport),
        )

    def check_remote_cseq(self, request: SipRequest) -> int | None:
        """Apply the remote CSeq rule (§12.2.2) to an in-dialog request.

        Returns:
            500 when the request is out of order (lower CSeq), else None (the remote
            sequence number is updated).
        """
        if request.method in ("ACK", "CANCEL"):
            return None
        number = request.cseq[0]
        if self.remote_seq is not None and number < self.remote_seq:
            return 500
        self.remote_seq = number
        return None

    def refresh_target(self, message: SipRequest | SipResponse) -> None:
        """Take the remote target from a target-refresh request or its 2xx (§12.2)."""
        uri = contact_uri(message)
        if uri is not None:
            self.remote_target = uri

    def next_cseq(self) -> int:
        """Advance and return the local sequence number (starts at 1 for a UAS)."""
        self.local_seq = 1 if self.local_seq is None else self.local_seq + 1
        return self.local_seq

    def build_request(self, method: str, cseq: int | None = None) -> SipRequest:
        """An in-dialog request (§12.2.1.1) without Via and Contact (the sender adds them).

        Args:
            method: the method; ACK and CANCEL must pass the INVITE's ``cseq``.
            cseq: the CSeq number to use; None → :meth:`next_cseq`.
        """
        number = self.next_cseq() if cseq is None else cseq
        uri, routes = self._request_uri_and_routes()
        h = Headers()
        for route in routes:
            h.add("Route", route)
        h.add("Max-Forwards", "70")
        h.add("From", str(self.local_uri.with_param("tag", self.local_tag)))
        h.add("To", str(self.remote_uri.with_param("tag", self.remote_tag)))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{number} {method}")
        return SipRequest(method, uri, h)

    def next_hop(self) -> SipUri:
        """The URI whose host, port and transport the request goes to (§8.1.2, RFC 3263
        without DNS): the first route when there is a route set, else the remote target.

        Raises:
            SipParseError: that URI is malformed.
        """
        if self.route_set:
            return parse_uri(parse_name_addr(self.route_set[0], "Route").uri)
        return parse_uri(self.remote_target)

    def _request_uri_and_routes(self) -> tuple[str, list[str]]:
        if not self.route_set:
            return self.remote_target, []
        first = parse_name_addr(self.route_set[0], "Route")
        if parse_uri(first.uri).has_param("lr"):
            return self.remote_target, list(self.route_set)
        # strict router: it expects its own URI as Request-URI (RFC 2543 behaviour)
        strict_uri = first.uri.split("?", 1)[0]
        return strict_uri, [*self.route_set[1:], f"<{self.remote_target}>"]


def _is_secure(request_uri: str, transport: str) -> bool:
    return request_uri.lower().startswith("sips:") and transport.lower() == "tls"


def dialog_response(
    request: SipRequest,
    status: int,
    local_tag: str,
    contact: str | None,
    reason: str | None = None,
) -> SipResponse:
    """A dialog-creating response (18x/2xx to INVITE): To tag, Record-Route copied, Contact.

    Record-Route is copied in order so that proxies that record-routed stay on the path of
    the caller's ACK, BYE and re-INVITEs (§12.1.1). ``contact`` is a full header value.
    """
    response = make_response(request, status, reason, to_tag=local_tag, copy_record_route=True)
    if contact is not None:
        response.headers.add("Contact", contact)
    return response
