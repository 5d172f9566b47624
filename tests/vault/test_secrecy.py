"""The raw key and its base64 form never show up in logs, exceptions or reprs."""

from __future__ import annotations

import base64
import json
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from structlog.testing import capture_logs

from server._secret import PrivateKey
from server.vault import KeyDestroyed, KeyVault, VaultConfig, VaultError
from tests.support.openbao import VaultFixture, new_workspace_id


def _forms(key: PrivateKey) -> list[str]:
    raw = key.reveal()
    return [raw, raw[3:], base64.b64encode(raw.encode()).decode()]


def _assert_absent(key: PrivateKey, *texts: str) -> None:
    for text in texts:
        for form in _forms(key):
            assert form not in text


class _EchoingVault(BaseHTTPRequestHandler):
    """Answers every request with an error that quotes the request body back."""

    status = 400

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        payload = json.dumps({"errors": [f"bad request: {body}"]}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(params=[400, 500])
def echoing_vault(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (_EchoingVault,), {"status": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_logs_and_errors_of_a_full_lifecycle(
    openbao: VaultFixture, private_key: PrivateKey
) -> None:
    ws = new_workspace_id()
    errors: list[BaseException] = []
    with capture_logs() as logs:
        vault = KeyVault(openbao.vault_config())
        await vault.start()
        try:
            encrypted = await vault.encrypt(ws, private_key)
            decrypted = await vault.decrypt(ws, encrypted.ciphertext)
            rewrapped = await vault.rewrap(ws, encrypted.ciphertext)
            await vault.destroy(ws)
            with pytest.raises(KeyDestroyed) as destroyed:
                await vault.decrypt(ws, rewrapped.ciphertext)
            errors.append(destroyed.value)
        finally:
            await vault.close()
    assert decrypted == private_key
    texts = [repr(logs), repr(vault), repr(decrypted), str(decrypted), repr(encrypted)]
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    _assert_absent(private_key, *texts)


async def test_vault_errors_that_quote_the_request_are_scrubbed(
    echoing_vault: str, private_key: PrivateKey
) -> None:
    vault = KeyVault(VaultConfig(addr=echoing_vault, token="s.forwarder-token", timeout_s=2))
    with capture_logs() as logs:
        await vault.start()
        try:
            with pytest.raises(VaultError) as caught:
                await vault.encrypt(new_workspace_id(), private_key)
        finally:
            await vault.close()
    error = caught.value
    assert "[redacted]" in str(error)  # the echo was there, and it was scrubbed
    assert error.__cause__ is None
    assert error.__context__ is None
    text = "".join(traceback.format_exception(error))
    _assert_absent(private_key, text, str(error), repr(error), repr(logs))
    assert "s.forwarder-token" not in text + repr(logs)


def test_config_repr_hides_credentials() -> None:
    config = VaultConfig(
        addr="http://vault:8200", token="s.tok3n", role_id="role", secret_id="s3cret-id"
    )
    assert "s.tok3n" not in repr(config)
    assert "s3cret-id" not in repr(config)
