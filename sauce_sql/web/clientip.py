"""The client's address: through trusted proxies only, kept whole, masked or not at all."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from sauce_sql.errors import InvalidInput

__all__ = ["IP_MODES", "ClientAddress"]

IP_MODES = ("full", "masked", "none")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> _Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:51234"
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class ClientAddress:
    """How the client's address is found and kept.

    ``mode``: ``"full"`` keeps the address, ``"masked"`` (the default) keeps its network
    only (IPv4 /24, IPv6 /48), ``"none"`` keeps nothing. ``trusted_proxies``: addresses
    or networks (``"10.0.0.0/8"``) of the proxies in front of the app; only a request
    that comes from one of them has its ``X-Forwarded-For`` read, from the right, and the
    first address there that is not a trusted proxy is the client's.

    >>> ClientAddress("masked", ("10.0.0.0/8",)).client_ip("10.0.0.5", "198.51.100.23, 10.0.0.9")
    '198.51.100.0'
    """

    __slots__ = ("_cached", "_networks", "mode")

    def __init__(self, mode: str = "masked", trusted_proxies: Sequence[str] = ()) -> None:
        if mode not in IP_MODES:
            raise InvalidInput(f"client_ip must be one of {', '.join(IP_MODES)}, not {mode!r}")
        if isinstance(trusted_proxies, str):
            raise TypeError("trusted_proxies must be a sequence of addresses, not one string")
        self.mode = mode
        networks: list[_Network] = []
        for proxy in trusted_proxies:
            try:
                networks.append(ipaddress.ip_network(proxy, strict=False))
            except ValueError as exc:
                raise InvalidInput(
                    f"trusted_proxies: {proxy!r} is not an address or network"
                ) from exc
        self._networks = tuple(networks)
        # Visitors come back from the same address: parse and mask each one once.
        self._cached = functools.lru_cache(maxsize=4096)(self._client_ip)

    def _trusted(self, address: _Address) -> bool:
        return any(address in network for network in self._networks)

    def from_proxy(self, peer: str | None) -> bool:
        """Whether the direct peer is a trusted proxy (so its forwarded headers count)."""
        if peer is None or not self._networks:
            return False
        address = _parse(peer)
        return address is not None and self._trusted(address)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> _Address | None:
        """The client's address: the peer, or, behind trusted proxies, the rightmost
        address in ``X-Forwarded-For`` that is not one of them. None when unknown."""
        address = _parse(peer) if peer else None
        if address is None or forwarded_for is None or not self.from_proxy(peer):
            return address
        for hop in reversed(forwarded_for.split(",")):
            hop_address = _parse(hop)
            if hop_address is None:
                return None  # garbage from beyond the trusted proxies: no client known
            address = hop_address
            if not self._trusted(hop_address):
                return hop_address
        return address  # every hop is a proxy of ours: the leftmost is the client

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """What the store keeps of the client's address under ``mode``."""
        return self._cached(peer, forwarded_for)

    def _client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        if self.mode == "none":
            return None
        address = self.client_address(peer, forwarded_for)
        if address is None or self.mode == "full":
            return None if address is None else str(address)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        prefix = 24 if address.version == 4 else 48
        return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)
