"""Media URLs may not reach the server's own network: no server-side request forgery.

Stock vLLM fetches an image URL wherever it points: loopback (the server's own ports),
private networks, link-local addresses such as cloud metadata at 169.254.169.254. zspa-serve
refuses every address that is not globally routable (``ipaddress``'s ``is_global``: loopback,
RFC 1918 / ULA private, link-local, multicast, unspecified, reserved, shared and documentation
ranges; IPv4-mapped IPv6 is checked as the IPv4 it maps), unless the operator opens it:
``--allow-private-media-urls`` (everything), or the host listed in ``--allowed-media-domains``.

The check sits where the connection is made, so it covers what a pre-check of the URL cannot:
* names: aiohttp connects to exactly the addresses our resolver returns, and the resolver
  refuses a name if any of its addresses is not global (no DNS-rebinding window between a
  check and the connect);
* literal IP hosts (aiohttp skips the resolver for them) and every redirect hop: checked by
  request-start and redirect hooks before the request is sent.

A refusal is a ``VLLMValidationError`` (HTTP 400 naming the rule and the flags; vLLM does not
retry it). With an HTTP proxy configured for vLLM (``trust_env``), the connection goes to the
proxy, so the proxy address is what is checked: enforce the policy at the proxy instead.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from vllm.exceptions import VLLMValidationError
from yarl import URL

FLAG = "--allow-private-media-urls"


class MediaAddressRefused(VLLMValidationError):
    """A media URL points at an address the policy refuses."""


def refusal(ip: str) -> str | None:
    """Why ``ip`` may not be fetched (a short rule name), or None if it is globally routable."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for rule in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(address, f"is_{rule}"):
            return rule.replace("_", "-")
    return None if address.is_global else "non-global"


class MediaPolicy:
    """The operator's choice: refuse non-global addresses except for listed hosts."""

    def __init__(self, allowed_hosts: Iterable[str] = (), allow_private: bool = False) -> None:
        self.allowed_hosts = {h.lower().rstrip(".") for h in allowed_hosts}
        self.allow_private = allow_private

    def check(self, host: str, ip: str) -> None:
        """Raise ``MediaAddressRefused`` unless ``host`` may be fetched at ``ip``."""
        if self.allow_private or host.lower().rstrip(".") in self.allowed_hosts:
            return
        rule = refusal(ip)
        if rule is not None:
            where = f"{host} resolves to {ip}" if host != ip else f"{ip} is"
            raise MediaAddressRefused(
                f"media URL refused: {where}, a {rule} address (zspa-serve does not fetch media "
                f"from loopback, private, link-local or other non-public addresses). An operator "
                f"can allow it with {FLAG}, or list the host in --allowed-media-domains.",
                parameter="messages",
            )

    def check_url(self, url: URL) -> None:
        """Literal IP hosts (names are checked by the resolver at connect time)."""
        host = url.raw_host or ""
        try:
            ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        except ValueError:
            return
        self.check(host, host.strip("[]"))

    def connector(self) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(resolver=_Resolver(self))

    def trace_config(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()

        async def on_start(session, context, params: aiohttp.TraceRequestStartParams) -> None:
            self.check_url(params.url)

        async def on_redirect(session, context, params: aiohttp.TraceRequestRedirectParams):
            location = params.response.headers.get("Location")
            if location:
                self.check_url(params.url.join(URL(location)))

        trace.on_request_start.append(on_start)
        trace.on_request_redirect.append(on_redirect)
        return trace


class _Resolver(AbstractResolver):
    def __init__(self, policy: MediaPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:  # any non-public address refuses the name (no partial answers)
            self._policy.check(host, r["host"])
        return results

    async def close(self) -> None:
        await self._inner.close()


def install(connection, policy: MediaPolicy) -> None:
    """Make vLLM's shared HTTP connection (``vllm.connections.global_http_connection``)
    open its aiohttp session with the policy's connector and hooks."""

    ours: list[aiohttp.ClientSession] = []  # a session vLLM made before this never serves

    async def get_async_client() -> aiohttp.ClientSession:
        if not ours or ours[-1].closed or not connection.reuse_client:
            ours[:] = [
                aiohttp.ClientSession(
                    trust_env=True,
                    connector=policy.connector(),
                    trace_configs=[policy.trace_config()],
                )
            ]
        connection._async_client = ours[-1]
        return ours[-1]

    connection.get_async_client = get_async_client
