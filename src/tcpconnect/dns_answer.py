"""Parses one DNS response with dnslib, within bounds on the work it may
cost, into the addresses it answered and the question each answers.

Apart from dns.py so that dnslib (about 17 ms to import) is imported once
tracing has started (DnsCache.load_parser), not before.
"""

from __future__ import annotations

import struct

import dnslib

_ADDRESS_TYPES = (dnslib.QTYPE.A, dnslib.QTYPE.AAAA)
_ADDRESS_LENGTH = {dnslib.QTYPE.A: 4, dnslib.QTYPE.AAAA: 16}

# Bounds on the work one answer may cost, since anyone who can send a UDP
# datagram from port 53 on a traced host picks the bytes. Compression pointers
# are the lever: dnslib follows them recursively and copies the labels at every
# level, so a chain of label+pointer links makes each name that points into it
# cost quadratic work, and a 1232-byte answer can name dozens of records that
# way (~20 ms a packet). RFC 1035 caps a name at 255 octets; Go's resolver
# refuses more than 10 pointers in a name, real answers use one or two.
_NAME_OCTETS_MAX = 255
_POINTERS_PER_NAME_MAX = 16
# Labels decoded per message, each pointer level counted again: a full-size
# answer of 1232 bytes with 70 A records whose names point at a 5-label
# question decodes ~700. At this bound the costliest answer dnslib accepts
# takes about twice as long as that ordinary one (docs/dns.md has the figures;
# bench/dns_hostile.py sends such answers next to a connect load).
_LABELS_PER_MESSAGE_MAX = 2048


class RefusedAnswer(Exception):
    """An answer outside the bounds above, or with an address record of the
    wrong length (dnslib would read past it and misparse what follows)."""


class _BoundedBuffer(dnslib.DNSBuffer):
    # dnslib's decode_name calls itself through ``self`` for every pointer it
    # follows, so this override sees each level and can stop a name before
    # its copies grow.
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.labels_left = _LABELS_PER_MESSAGE_MAX
        self._depth = 0

    def decode_name(self, last: int = -1) -> dnslib.DNSLabel:
        if self._depth > _POINTERS_PER_NAME_MAX:
            raise RefusedAnswer("too many compression pointers in a name")
        self._depth += 1
        try:
            name = super().decode_name(last)
        finally:
            self._depth -= 1
        self.labels_left -= len(name.label)
        if self.labels_left < 0:
            raise RefusedAnswer("too many labels in one message")
        if sum(map(len, name.label)) + len(name.label) > _NAME_OCTETS_MAX:
            raise RefusedAnswer("name longer than 255 octets")
        return name


def _parse_answer(payload: bytes) -> tuple[dnslib.DNSHeader, list[dnslib.DNSQuestion],
                                          list[dnslib.RR]]:
    """Header, questions and answer records of a response, within the bounds.
    DNSRecord.parse cannot take a buffer of ours, and the authority and
    additional sections are never used, so they are not parsed at all."""
    buffer = _BoundedBuffer(payload)
    header = dnslib.DNSHeader.parse(buffer)
    questions = [dnslib.DNSQuestion.parse(buffer) for _ in range(header.q)]
    answers = []
    for _ in range(header.a):
        answers.append(dnslib.RR.parse(buffer))
        expected = _ADDRESS_LENGTH.get(answers[-1].rtype)
        # dnslib reads an address's fixed size whatever RDLENGTH says; the
        # field sits just before the bytes it read.
        if expected is not None and struct.unpack_from(
                "!H", payload, buffer.offset - expected - 2)[0] != expected:
            raise RefusedAnswer("address record of the wrong length")
    return header, questions, answers


def answered_addresses(payload: bytes) -> dict[bytes, str] | None:
    """Each address a response answered (packed bytes) and the question name
    it answers; None when the message is no response to a question. Raises
    RefusedAnswer past the bounds, and whatever dnslib raises on malformed
    input."""
    header, questions, answers = _parse_answer(payload)
    if not header.qr or not questions:
        return None
    return _addresses_by_question(questions, answers)


def _addresses_by_question(questions: list[dnslib.DNSQuestion],
                           answers: list[dnslib.RR]) -> dict[bytes, str]:
    # What the user typed is the question name, not whatever CDN host a CNAME
    # chain ends at, so every name reachable from a question through the
    # answer section's CNAMEs is attributed to that question. DNSLabel
    # compares case-insensitively, which matters because resolvers may echo
    # 0x20-randomised case.
    origin: dict[dnslib.DNSLabel, str] = {}
    for question in questions:
        origin.setdefault(question.qname, _display_name(question.qname))

    aliases = [
        (rr.rname, rr.rdata.label)
        for rr in answers
        if rr.rtype == dnslib.QTYPE.CNAME
    ]
    # Iterate to a fixed point because CNAMEs may be listed in any order;
    # it terminates even on CNAME loops since ``origin`` only ever grows.
    grew = True
    while grew:
        grew = False
        for alias, target in aliases:
            if alias in origin and target not in origin:
                origin[target] = origin[alias]
                grew = True

    found: dict[bytes, str] = {}
    for rr in answers:
        # Records not reachable from a question are dropped: they cannot be
        # the reason anyone connects to that address, and honouring them would
        # let one response label arbitrary addresses with its question name.
        # Only class IN rdata is an internet address at all.
        if (
            rr.rtype in _ADDRESS_TYPES
            and rr.rclass == dnslib.CLASS.IN
            and rr.rname in origin
        ):
            found.setdefault(bytes(rr.rdata.data), origin[rr.rname])
    return found


def _display_name(label: dnslib.DNSLabel) -> str:
    # Zone-file text, so that every name has one spelling and no two names
    # share one: printable ASCII as is, but a backslash as \\ and a dot
    # inside a label as \., and any other byte as \DDD (decimal). dnslib's
    # own str() leaves backslashes alone, so a label holding the four
    # characters \027 would print like one holding an ESC byte.
    return ".".join("".join(_zone_char(byte) for byte in part) for part in label.label)


def _zone_char(byte: int) -> str:
    if byte in (0x5C, 0x2E):
        return "\\" + chr(byte)
    if 0x21 <= byte <= 0x7E:
        return chr(byte)
    return "\\%03d" % byte
