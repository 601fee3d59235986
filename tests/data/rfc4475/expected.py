"""What sipbot does with each RFC 4475 torture message: the parse result and the UDP answer.

``EXPECTED[name]`` gives, for the message in ``<name>.dat``:

* ``section`` — its RFC 4475 section;
* ``parse`` — the exact outcome of :func:`sipbot.sip.message.parse_message`: ``"request"`` or
  ``"response"`` when it parses, else ``"<status> <reason>"`` of the SipParseError;
* ``answer`` — the final status a UAS (``sipbot run``, listening on 127.0.0.1, accepting any
  Request-URI host: example.com etc. are kept as in the RFC) sends back when the file is sent to
  it in one UDP datagram, or None for no response at all;
* ``headers`` — header names the answer must carry (Allow with 405/501, Unsupported with 420,
  Accept with 415); ``why`` — one line of reasoning.

Rules behind the answers (RFC 3261 §8.2 order: method, then URI, then headers, then body):

1. Responses are never answered; a response that fails to parse is dropped (logged).
2. A request that fails to parse is answered with the parser's status and reason, built by
   ``make_response`` from ``SipParseError.request``: Via lines are copied as received, so the
   SIP/7.0 Via of badvers and the broken Via of badinv01 are echoed too.
3. Methods: INVITE ACK BYE CANCEL OPTIONS UPDATE INFO REFER NOTIFY are sipbot's; REGISTER,
   MESSAGE, SUBSCRIBE, PUBLISH, PRACK are known but unsupported → 405 with Allow; any other
   method → 501 with Allow.
4. INVITEs get 100 Trying first; only the final answer is listed. A new INVITE with an SDP
   offer sipbot can answer gets 200 (the e2e test must ACK and BYE it); an INVITE with a To tag
   and no matching dialog gets 481.
5. Where to send: none of these Vias carries ``rport`` and most have no port, so by RFC 3261
   §18.2.2 alone a response would go to port 5060 of the source address. The test expects the
   server to answer at the datagram's source address and port (what Kamailio and Asterisk do
   with force_rport); a server that follows §18.2.2 literally must be tested on 127.0.0.1:5060.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Expected:
    section: str
    parse: str
    answer: int | None
    why: str
    headers: tuple[str, ...] = ()


_SDP_CALL = "new INVITE, SDP offers PCMU (m=audio ... 0 12) and video: answered, video port 0"

EXPECTED: dict[str, Expected] = {
    # §3.1.1 valid messages: parsers must accept them.
    "wsinv": Expected(
        "3.1.1.1",
        "request",
        481,
        "valid; INVITE with a To tag and no such dialog (RFC 3261 §12.2.2)",
    ),
    "intmeth": Expected(
        "3.1.1.2",
        "request",
        501,
        "valid; unknown method at an endpoint (RFC 4475 says 501 + Allow)",
        ("Allow",),
    ),
    "esc01": Expected("3.1.1.3", "request", 200, "valid; " + _SDP_CALL),
    "escnull": Expected(
        "3.1.1.4", "request", 405, "valid REGISTER; sipbot is no registrar", ("Allow",)
    ),
    "esc02": Expected(
        "3.1.1.5",
        "request",
        501,
        "valid; RE%47IST%45R is an unknown method, not REGISTER",
        ("Allow",),
    ),
    "lwsdisp": Expected("3.1.1.6", "request", 200, "valid OPTIONS (no LWS before <)"),
    "longreq": Expected("3.1.1.7", "request", 200, "valid; long values; " + _SDP_CALL),
    "dblreq": Expected(
        "3.1.1.8",
        "request",
        405,
        "REGISTER (405); the INVITE after its body is ignored (§18.3)",
        ("Allow",),
    ),
    "semiuri": Expected("3.1.1.9", "request", 200, "valid OPTIONS; user part has ;par="),
    "transports": Expected("3.1.1.10", "request", 200, "valid OPTIONS; SCTP/TLS/UNKNOWN Vias"),
    "mpart01": Expected(
        "3.1.1.11",
        "request",
        405,
        "valid MESSAGE with a binary multipart body; MESSAGE unsupported",
        ("Allow",),
    ),
    "unreason": Expected("3.1.1.12", "response", None, "a response: never answered"),
    "noreason": Expected("3.1.1.13", "response", None, "a response: never answered"),
    # §3.1.2 invalid messages: each is rejected with a reason naming the fault.
    "badinv01": Expected(
        "3.1.2.1", "400 Malformed Via header", 400, "empty Via and Contact parameters (;;,;,,)"
    ),
    "clerr": Expected(
        "3.1.2.2",
        "400 Content-Length larger than message",
        400,
        "Content-Length 9999 on a datagram (§18.3)",
    ),
    "ncl": Expected("3.1.2.3", "400 Malformed Content-Length header", 400, "Content-Length -999"),
    "scalar02": Expected(
        "3.1.2.4",
        "400 CSeq number out of range",
        400,
        "CSeq 36893488147419103232 (also Max-Forwards 300, huge Expires)",
    ),
    "scalarlg": Expected(
        "3.1.2.5",
        "400 CSeq number out of range",
        None,
        "a response with overlarge scalars: dropped",
    ),
    "quotbal": Expected(
        "3.1.2.6", "400 Unterminated quoted string in To", 400, "unterminated quoted display name"
    ),
    "ltgtruri": Expected(
        "3.1.2.7", "400 Request-URI enclosed in <>", 400, "Request-URI in angle brackets"
    ),
    "lwsruri": Expected(
        "3.1.2.8", "400 Whitespace in Request-URI", 400, "'sip:user@example.com; lr' has a space"
    ),
    "lwsstart": Expected(
        "3.1.2.9",
        "400 Extra whitespace in Request-Line",
        400,
        "double spaces in the start line (strict choice)",
    ),
    "trws": Expected(
        "3.1.2.10",
        "400 Extra whitespace in Request-Line",
        400,
        "spaces after SIP/2.0 (strict choice)",
    ),
    "escruri": Expected(
        "3.1.2.11",
        "400 Request-URI must not contain headers",
        400,
        "?Route= in the Request-URI (§19.1.1)",
    ),
    "baddate": Expected(
        "3.1.2.12",
        "400 Malformed Date header",
        400,
        "Date zone EST; RFC 3261 §20.17 allows only GMT",
    ),
    "regbadct": Expected(
        "3.1.2.13",
        "400 Malformed Contact: a URI with spaces or headers needs <>",
        400,
        "Contact URI with ?headers outside <>",
    ),
    "badaspec": Expected("3.1.2.14", "400 Malformed URI in To", 400, "spaces inside <...> in To"),
    "baddn": Expected(
        "3.1.2.15", "400 Malformed display name in From", 400, "unquoted display name with a comma"
    ),
    "badvers": Expected("3.1.2.16", "505 Version Not Supported", 505, "SIP/7.0"),
    "mismatch01": Expected(
        "3.1.2.17",
        "400 CSeq method does not match Request-Line",
        400,
        "OPTIONS with CSeq ... INVITE",
    ),
    "mismatch02": Expected(
        "3.1.2.18",
        "400 CSeq method does not match Request-Line",
        400,
        "NEWMETHOD with CSeq ... INVITE (400, not 501)",
    ),
    "bigcode": Expected(
        "3.1.2.19", "400 Malformed status code", None, "a response with status 4294967301: dropped"
    ),
    # §3.2 transaction layer.
    "badbranch": Expected(
        "3.2.1",
        "400 Via branch has no transaction id after z9hG4bK",
        400,
        "branch is the bare magic cookie: cannot key a transaction",
    ),
    # §3.3 application layer.
    "insuf": Expected(
        "3.3.1",
        "400 Missing required headers: From, To, Call-ID",
        400,
        "no From, To, Call-ID (the 400 copies Via and CSeq only)",
    ),
    "unkscm": Expected("3.3.2", "request", 416, "Request-URI scheme nobodyKnowsThisScheme"),
    "novelsc": Expected("3.3.3", "request", 416, "Request-URI scheme soap.beep"),
    "unksm2": Expected(
        "3.3.4",
        "request",
        405,
        "REGISTER (method checked before the isbn:/http:/name: URIs)",
        ("Allow",),
    ),
    "bext01": Expected(
        "3.3.5",
        "request",
        420,
        "Require: nothingSupportsThis, nothingSupportsThisEither (Proxy-Require is for proxies)",
        ("Unsupported",),
    ),
    "invut": Expected(
        "3.3.6", "request", 415, "INVITE body application/unknownformat", ("Accept",)
    ),
    "regaut01": Expected(
        "3.3.7",
        "request",
        405,
        "REGISTER with an unknown Authorization scheme; no registrar",
        ("Allow",),
    ),
    "multi01": Expected(
        "3.3.8", "400 Multiple Call-ID headers", 400, "two Call-ID, CSeq, From, To, Max-Forwards"
    ),
    "mcl01": Expected(
        "3.3.9", "400 Multiple Content-Length headers", 400, "Content-Length 13 and 5"
    ),
    "bcast": Expected("3.3.10", "response", None, "a response: never answered"),
    "zeromf": Expected(
        "3.3.11",
        "request",
        200,
        "OPTIONS with Max-Forwards 0: an endpoint answers it (483 is for proxies)",
    ),
    "cparam01": Expected("3.3.12", "request", 405, "REGISTER", ("Allow",)),
    "cparam02": Expected("3.3.13", "request", 405, "REGISTER", ("Allow",)),
    "regescrt": Expected("3.3.14", "request", 405, "REGISTER", ("Allow",)),
    "sdp01": Expected(
        "3.3.15",
        "request",
        406,
        "Accept: text/nobodyKnowsThis: no acceptable body for the SDP answer",
    ),
    # §3.4 backward compatibility.
    "inv2543": Expected(
        "3.4.1",
        "request",
        200,
        "RFC 2543 INVITE (no branch, no Max-Forwards, no Content-Length): "
        "answered; Record-Route copied",
    ),
}
