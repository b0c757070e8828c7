"""Media URLs may not reach the server's own network (server-side request forgery).

Unit table of the address rule, then real zspa-serve processes fetching from a real local
HTTP server that serves a real PNG: refused by default (literal IP, a name resolving to
loopback), served when the operator lists the host, and a redirect from an allowed host to
an unlisted loopback address refused.
"""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.engine import image
from tests.support.server import API_KEY, start_server, stop_server
from zspa_server.media_policy import MediaAddressRefused, MediaPolicy, refusal

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.mark.parametrize(
    ("ip", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("127.5.6.7", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("100.64.0.1", "non-global"),  # carrier-grade NAT
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_rule(ip, rule):
    assert refusal(ip) == rule


def test_policy_opens_only_what_the_operator_lists():
    with pytest.raises(MediaAddressRefused, match="allow-private-media-urls"):
        MediaPolicy().check("metadata.internal", "169.254.169.254")
    MediaPolicy(["Images.Example."]).check("images.example", "10.0.0.5")
    MediaPolicy(allow_private=True).check("anything", "127.0.0.1")
    MediaPolicy().check("example.com", "93.184.216.34")


class _Handler(BaseHTTPRequestHandler):
    png = b""

    def do_GET(self):
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{self.server.server_port}/img.png")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.png)))
        self.end_headers()
        self.wfile.write(self.png)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    buf = io.BytesIO()
    image(71).save(buf, format="PNG")
    _Handler.png = buf.getvalue()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_port
    httpd.shutdown()


def _ask(client, model, url):
    return client.chat.completions.create(
        model=model, max_tokens=2,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "what is this?"},
        ]}],
    )  # fmt: skip


def test_loopback_media_is_refused_by_default(server, image_host):
    import openai

    client = server.client()
    for url, where in [
        (f"http://127.0.0.1:{image_host}/img.png", "127.0.0.1 is, a loopback address"),
        (f"http://localhost:{image_host}/img.png", "localhost resolves to"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            _ask(client, server.model, url)
        assert where in err.value.message and "--allow-private-media-urls" in err.value.message
    # ... and the server keeps serving.
    from tests.support.server import data_url

    assert _ask(client, server.model, data_url(3)).choices[0].message.content is not None


def test_listed_host_is_served_and_a_redirect_to_loopback_is_refused(
    tiny_llava, image_host, tmp_path
):
    import openai
    from openai import OpenAI

    proc, url = start_server(
        tiny_llava, tmp_path / "serve.log", "--allowed-media-domains", "localhost",
        "--api-key", API_KEY,
    )  # fmt: skip
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
        reply = _ask(client, tiny_llava, f"http://localhost:{image_host}/img.png")
        assert reply.usage.prompt_tokens > 576  # the image really arrived
        with pytest.raises(openai.BadRequestError) as err:
            _ask(client, tiny_llava, f"http://localhost:{image_host}/redirect")
        assert "127.0.0.2 is, a loopback address" in err.value.message
    finally:
        stop_server(proc)
