"""--outcome's CAUSE: what the kernel saw of an attempt on its way to its
result. The SYNs it sent (the retransmissions the socket counted), or that
none was; the attempt's packets this host dropped itself, and why, in the
kernel's own words (enum skb_drop_reason, read from the running kernel's
BTF: its values differ between kernels, and kernels before 5.17 give none);
the ICMP error or RST that ended it, and who sent it.
"""

from __future__ import annotations

from .events import (
    ANSWER_CODE,
    ANSWER_FROM,
    ANSWER_ICMP,
    ANSWER_KIND,
    ANSWER_RST,
    ANSWER_TTL,
    ANSWER_TYPE,
    DADDR,
    DROP_REASON,
    DROPS,
    FAMILY,
    IDENTITY_BYTES,
    OUTCOME,
    OUTCOME_END_UNSEEN,
    OUTCOME_NO_SYN,
    SYN_RETRIES,
)
from .kernel import VMLINUX_BTF
from .libbpf import BpfError, enum_values
from .records import format_address, identities

CAUSE_WIDTH = 24
REASON_PREFIX = "SKB_DROP_REASON_"

# How an attempt that sent SYNs came to each result (outcome.result_name);
# any other result (an errno's name) is "NAME after N SYNs".
_AFTER_SYNS = {
    "refused": "RST after",
    "reset": "RST after",
    "timeout": "no answer to",
    "unreachable": "ICMP error after",
    "aborted": "closed after",
}
# Results of attempts that ended before their first SYN.
_NO_SYN = frozenset(("no-route", "denied", "no-local-port"))


class DropReasons:
    """Names of the running kernel's drop reasons, read from its BTF the
    first time a drop is shown (the read costs ~10 ms)."""

    def __init__(self) -> None:
        self.btf_path = VMLINUX_BTF
        self._names: dict[int, str] | None = None

    def name(self, reason: int) -> str | None:
        """SKB_DROP_REASON_NETFILTER_DROP as NETFILTER_DROP; None where the
        kernel has no drop reasons (or its BTF cannot be read)."""
        if self._names is None:
            try:
                self._names = enum_values(self.btf_path, "skb_drop_reason")
            except BpfError:
                self._names = {}
        if not self._names:
            return None
        name = self._names.get(reason, f"reason {reason}")
        return name[len(REASON_PREFIX):] if name.startswith(REASON_PREFIX) else name


drop_reasons = DropReasons()

# ICMP errors by (type, code), as nft and iptables name them: RFC 792 and
# RFC 1812 for IPv4, RFC 4443 for ICMPv6.
ICMP_NAMES = {
    (3, 0): "net-unreachable", (3, 1): "host-unreachable", (3, 2): "prot-unreachable",
    (3, 3): "port-unreachable", (3, 4): "frag-needed", (3, 5): "source-route-failed",
    (3, 6): "net-unknown", (3, 7): "host-unknown", (3, 8): "host-isolated",
    (3, 9): "net-prohibited", (3, 10): "host-prohibited", (3, 11): "net-tos-unreachable",
    (3, 12): "host-tos-unreachable", (3, 13): "admin-prohibited",
    (3, 14): "host-precedence-violation", (3, 15): "precedence-cutoff",
    (11, 0): "ttl-exceeded", (11, 1): "reassembly-timeout", (12, 0): "parameter-problem",
}
ICMPV6_NAMES = {
    (1, 0): "no-route", (1, 1): "admin-prohibited", (1, 2): "beyond-scope",
    (1, 3): "addr-unreachable", (1, 4): "port-unreachable", (1, 5): "policy-fail",
    (1, 6): "reject-route", (3, 0): "hop-limit-exceeded", (3, 1): "reassembly-timeout",
    (4, 0): "parameter-problem",
}


def icmp_name(family: int, icmp_type: int, code: int) -> str:
    """host-unreachable for IPv4's type 3 code 1; type-T-code-C for a pair
    without a name."""
    names = ICMP_NAMES if family == 4 else ICMPV6_NAMES
    return names.get((icmp_type, code), f"type-{icmp_type}-code-{code}")


def _answer_text(event: tuple) -> str | None:
    """`ICMP admin-prohibited from 10.9.0.1`, `RST from destination`, or
    None when no answer was seen."""
    kind = event[ANSWER_KIND]
    if kind not in (ANSWER_ICMP, ANSWER_RST):
        return None
    identity = identities[event[IDENTITY_BYTES]]
    family = identity[FAMILY]
    if kind == ANSWER_RST:
        sender = ("destination" if event[ANSWER_FROM] == identity[DADDR]
                  else format_address(family, event[ANSWER_FROM]))
        return f"RST from {sender}"
    return "%s %s from %s" % ("ICMP" if family == 4 else "ICMPv6",
                              icmp_name(family, event[ANSWER_TYPE], event[ANSWER_CODE]),
                              format_address(family, event[ANSWER_FROM]))


def _syns(count: int) -> str:
    return "1 SYN" if count == 1 else f"{count} SYNs"


def cause_text(event: tuple, result: str) -> str:
    """The CAUSE of an attempt that has ended with `result`."""
    if event[OUTCOME] == OUTCOME_END_UNSEEN:
        return "end unseen: run skipped"
    if event[OUTCOME] == OUTCOME_NO_SYN or result in _NO_SYN:
        return "no SYN sent"
    answer = _answer_text(event)
    if answer:
        return answer
    if event[DROPS]:
        reason = drop_reasons.name(event[DROP_REASON])
        dropped = f"{_syns(event[DROPS])} dropped here"
        return f"{dropped}: {reason}" if reason else dropped
    syns = _syns(event[SYN_RETRIES] + 1)
    if result == "ok":
        return syns
    return f"{_AFTER_SYNS.get(result, result + ' after')} {syns}"


# The answer fields of JSON, null for an attempt no answer was seen for.
NO_ANSWER_JSON = (', "icmp_type": null, "icmp_code": null, "icmp_from": null, '
                  '"rst_from": null, "answer_ttl": null')


def _answer_json(event: tuple) -> str:
    kind = event[ANSWER_KIND]
    if kind not in (ANSWER_ICMP, ANSWER_RST):
        return NO_ANSWER_JSON
    sender = '"%s"' % format_address(identities[event[IDENTITY_BYTES]][FAMILY],
                                     event[ANSWER_FROM])
    if kind == ANSWER_RST:
        return (', "icmp_type": null, "icmp_code": null, "icmp_from": null, "rst_from": %s, '
                '"answer_ttl": %d' % (sender, event[ANSWER_TTL]))
    return (', "icmp_type": %d, "icmp_code": %d, "icmp_from": %s, "rst_from": null, '
            '"answer_ttl": %d' % (event[ANSWER_TYPE], event[ANSWER_CODE], sender,
                                  event[ANSWER_TTL]))


def json_fields(event: tuple, result: str) -> str:
    """`syn_retries`, `drop_reason` (null when nothing was dropped here,
    "unknown" where the kernel gives no reason), the answer's fields
    (`icmp_type`, `icmp_code` and `icmp_from` for an ICMP error, `rst_from`
    for a RST, and the TTL or hop limit it arrived with, `answer_ttl`) and
    `cause`, for an attempt that has ended with `result`."""
    no_syn = event[OUTCOME] == OUTCOME_NO_SYN
    reason = drop_reasons.name(event[DROP_REASON]) or "unknown" if event[DROPS] else None
    return ', "syn_retries": %s, "drop_reason": %s%s, "cause": "%s"' % (
        "null" if no_syn else event[SYN_RETRIES],
        "null" if reason is None else '"%s"' % reason, _answer_json(event),
        cause_text(event, result))
