"""What history keeps of a client IP: :func:`mask_ip` (the default), or nothing."""

from __future__ import annotations

import ipaddress

__all__ = ["IPV4_PREFIX", "IPV6_PREFIX", "mask_ip"]

#: The network bits an archived address keeps: the last byte of an IPv4 address and
#: all but the routing prefix of an IPv6 one are zeroed, as analytics tools do by
#: default, so an archived address names a network, not a household.
IPV4_PREFIX = 24
IPV6_PREFIX = 48


def mask_ip(address: str | None) -> str | None:
    """``address`` with its host part zeroed (``203.0.113.7`` -> ``203.0.113.0``,
    ``2001:db8:1:2::7`` -> ``2001:db8:1::``); a zone id is dropped; None stays None.

    Text that is no address (not one the store wrote) becomes None rather than kept.
    """
    if address is None:
        return None
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    prefix = IPV4_PREFIX if parsed.version == 4 else IPV6_PREFIX
    network = ipaddress.ip_network(f"{parsed}/{prefix}", strict=False)
    return str(network.network_address)
