"""--daddr, --saddr and their exclusions: the prefixes as the user gives
them, and the keys of the kernel's longest-prefix-match tries
(bpf/address_filters.bpf.h), where both families share the IPv6 space and
an IPv4 prefix is stored IPv4-mapped (::ffff:0:0/96 plus its length)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import ipaddress

    Prefix = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# struct address_key: __u32 prefixlen, __u8 addr[16].
ADDRESS_KEY = struct.Struct("=I16s")
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def parse_prefixes(text: str) -> tuple[Prefix, ...]:
    """10.0.0.0/8,2001:db8::/32,192.0.2.1 (an address alone is /32 or
    /128); host bits past the length are ignored, as routing tables do.
    ValueError names the first entry that is no prefix."""
    # Here, not at the top: only runs that filter by address pay its import.
    import ipaddress

    prefixes = []
    for item in text.split(","):
        try:
            prefixes.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"'{item}' is not an address or prefix (ADDRESS[/LENGTH])") from None
    # Duplicates would be one trie entry anyway; the order is the user's.
    return tuple(dict.fromkeys(prefixes))


def read_prefixes(path: str) -> tuple[Prefix, ...]:
    """A file of prefixes (@FILE): separated by commas, spaces or newlines,
    `#` starting a comment. OSError and ValueError say what is wrong."""
    with open(path, encoding="utf-8", errors="replace") as f:
        items = [item for line in f for item in line.split("#", 1)[0].replace(",", " ").split()]
    if not items:
        raise ValueError(f"{path}: no address or prefix in it")
    return parse_prefixes(",".join(items))


def trie_key(prefix: Prefix) -> bytes:
    """The struct address_key of a prefix."""
    if prefix.version == 4:
        return ADDRESS_KEY.pack(96 + prefix.prefixlen,
                                _V4_MAPPED + prefix.network_address.packed)
    return ADDRESS_KEY.pack(prefix.prefixlen, prefix.network_address.packed)
