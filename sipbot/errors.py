"""The one exception tree of sipbot.

Every error sipbot raises on purpose derives from :class:`SipbotError`::

    SipbotError
    ├── ConfigError               a config or dialplan file is wrong (file, line, field)
    ├── SipError
    │   ├── SipParseError         a peer sent a malformed SIP message (carries the status to answer)
    │   ├── LocalSipError         we tried to do something SIP does not allow (our fault)
    │   ├── SdpError              an SDP body cannot be parsed
    │   │   └── SdpNegotiationError   no common codec (answer 488)
    │   ├── AuthError             a digest challenge cannot be answered
    │   ├── DnsError              a SIP server's name resolves to no address (RFC 3263)
    │   └── RequestFailed         a request we sent got a final error response or timed out
    ├── MediaError
    │   ├── RtpParseError         a datagram is not RTP
    │   ├── CodecError            an unknown/unsupported codec or a bad payload
    │   ├── SrtpError             an SRTP packet fails authentication/replay, or bad keys
    │   └── PortRangeExhausted    no free RTP port in the configured range
    ├── ProviderError
    │   ├── ProviderConnectError  the provider cannot be reached or rejects the key
    │   ├── ProviderProtocolError the provider sent something we do not understand
    │   └── ProviderClosed        the session is closed
    ├── ToolError
    │   ├── ToolTimeout           a tool ran past its timeout
    │   ├── ToolNotAllowed        a tool was asked for something its policy forbids
    │   └── ToolDefinitionError   a tool function cannot be turned into a schema
    ├── RecordsError              the call-records database failed
    │   ├── RecordsUnavailable    it cannot be reached now (retry later; records stay queued)
    │   └── RecordsWriteFailed    it refused these records (disk full, bad data): they are lost
    └── DialError                 an outbound call request is invalid (nothing was sent)
        └── DialRefused           a trunk's outbound limit refused it (queue full / timed out)

Errors caused by the peer (``SipParseError``, ``ProviderProtocolError``) are kept apart from
our own mistakes (``LocalSipError``), as h11 does with Local/RemoteProtocolError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipbot.sip.message import SipRequest, SipResponse


class SipbotError(Exception):
    """Base class of every error sipbot raises on purpose."""


class ConfigError(SipbotError):
    """A configuration or dialplan file is invalid.

    ``str(error)`` is one line: ``FILE:LINE: FIELD: MESSAGE`` (line and field when known).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
            where += ": "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class SipError(SipbotError):
    """Base class of signalling errors."""


class SipParseError(SipError):
    """A peer sent a malformed SIP message.

    Attributes:
        status: the response code a request deserves (400, 413, 505, 513, ...).
        reason: the reason phrase, precise enough for the peer's engineer to fix it.
        request: the request as far as it could be read (headers needed to answer), or None.
    """

    def __init__(self, status: int, reason: str, request: SipRequest | None = None) -> None:
        self.status = status
        self.reason = reason
        self.request = request
        super().__init__(f"{status} {reason}")


class LocalSipError(SipError):
    """sipbot itself tried something that SIP does not allow (a bug or misuse of the API)."""


class SdpError(SipError):
    """An SDP body is malformed."""


class SdpNegotiationError(SdpError):
    """An SDP offer has nothing we can accept (answer 488 Not Acceptable Here)."""


class AuthError(SipError):
    """A digest challenge cannot be answered (unknown algorithm, no credentials, ...)."""


class DnsError(SipError):
    """A SIP server's name resolves to no address (RFC 3263 lookups all failed)."""


class RequestFailed(SipError):
    """A request we sent got a final non-2xx response, or no response at all.

    Attributes:
        response: the final response, or None on a timeout / transport error.
    """

    def __init__(self, message: str, response: SipResponse | None = None) -> None:
        self.response = response
        super().__init__(message)


class MediaError(SipbotError):
    """Base class of media errors."""


class RtpParseError(MediaError, ValueError):
    """A datagram is not a valid RTP packet."""


class CodecError(MediaError):
    """An unknown or unsupported codec, or a payload that cannot be decoded."""


class SrtpError(MediaError):
    """An SRTP packet fails authentication or replay checks, or SRTP cannot be set up."""


class PortRangeExhausted(MediaError):
    """No free RTP port is left in the configured range."""


class ProviderError(SipbotError):
    """Base class of speech provider errors."""


class ProviderConnectError(ProviderError):
    """The provider cannot be reached, or it rejected the credentials."""


class ProviderProtocolError(ProviderError):
    """The provider sent something that does not follow its protocol."""


class ProviderClosed(ProviderError):
    """The provider session is closed."""


class ToolError(SipbotError):
    """Base class of tool errors."""


class ToolTimeout(ToolError):
    """A tool ran past its timeout."""


class ToolNotAllowed(ToolError):
    """A tool was asked for something its policy forbids (e.g. a transfer target)."""


class ToolDefinitionError(ToolError):
    """A Python function cannot be turned into a tool schema."""


class RecordsError(SipbotError):
    """Base class of call-records database errors."""


class RecordsUnavailable(RecordsError):
    """The records database cannot be reached now (connection lost, locked): try again later."""


class RecordsWriteFailed(RecordsError):
    """The records database refused a write for good (disk full, invalid data)."""


class DialError(SipbotError):
    """An outbound call request is invalid (bad URI, unknown agent or trunk); no INVITE sent."""


class DialRefused(DialError):
    """A trunk's outbound limits refused the call (its queue is full, or it waited too long)."""
