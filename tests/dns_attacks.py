"""DNS answers built byte by byte to cost a parser as much as possible, or to
lie about their lengths: the shapes an unprivileged sender can aim at -d."""

from __future__ import annotations

import struct

ANSWER_SIZE = 1232  # the most the kernel side captures of one answer
_QUESTION = b"\x01a\x00" + struct.pack("!HH", 1, 1)  # a. A IN, at offset 12


def _header(answers: int) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, 0x8180, 1, answers, 0, 0)


def _pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def _record(name: bytes, rtype: int, rdata: bytes, rdlength: int | None = None) -> bytes:
    length = len(rdata) if rdlength is None else rdlength
    return name + struct.pack("!HHIH", rtype, 1, 60, length) + rdata


def _fill_with_a_records(body: bytes, name: bytes, answers: int) -> bytes:
    while len(body) + len(name) + 14 <= ANSWER_SIZE:
        body += _record(name, 1, bytes([10, 0, answers // 250, answers % 250]))
        answers += 1
    return _header(answers) + body[12:]


def pointer_chain(links: int) -> bytes:
    """An opaque record whose data is a chain of `links` label+pointer links
    (each pointing at the one before, the first at the question), then as
    many A records as fit, each named by the end of the chain: every name
    walks the whole chain, and dnslib copies the labels at each step."""
    body = _header(0) + _QUESTION
    data_at = len(body) + 2 + 10
    chain, previous = b"", 12
    for _ in range(links):
        link_at = data_at + len(chain)
        chain += b"\x01a" + _pointer(previous)
        previous = link_at
    body += _record(_pointer(12), 0xFF00, chain)
    body = _fill_with_a_records(body, _pointer(previous), 1)
    return body


def long_question(labels: int) -> bytes:
    """A question name of `labels` one-letter labels, then as many A records
    as fit, each a pointer to it."""
    question = b"\x01a" * labels + b"\x00" + struct.pack("!HH", 1, 1)
    return _fill_with_a_records(_header(0) + question, _pointer(12), 0)


def name_over_255_octets() -> bytes:
    """Five 63-octet labels (320 octets), written out, no pointers."""
    name = (b"\x3f" + b"x" * 63) * 5 + b"\x00"
    question = name + struct.pack("!HH", 1, 1)
    return _header(1) + question + _record(_pointer(12), 1, bytes([10, 0, 0, 1]))


def address_with_rdlength(rtype: int, rdlength: int) -> bytes:
    """An A (1) or AAAA (28) answer whose RDLENGTH disagrees with the address
    size, its data as long as the field says, then a well-formed A answer
    (so a parser that reads a fixed size finds bytes to read)."""
    question = b"\x01a\x00" + struct.pack("!HH", rtype, 1)
    return (_header(2) + question
            + _record(_pointer(12), rtype, bytes(range(1, rdlength + 1)))
            + _record(_pointer(12), 1, bytes([10, 0, 0, 1])))


def full_size_answer(question_labels: int = 5) -> bytes:
    """A well-formed answer as big as the capture: A records all pointing at
    a question of `question_labels` labels, as a resolver compresses them."""
    return long_question(question_labels)
