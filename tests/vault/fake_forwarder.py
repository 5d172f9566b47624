"""Stands in for `python -m server` under devstack: uses the Vault settings it is given.

First run: encrypts a key and saves the ciphertext. Later runs: decrypts the saved ciphertext.
On SIGTERM it records whether Vault was still up (devstack must stop OpenBao only after us).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from server._secret import PrivateKey
from server.vault import KeyVault, VaultConfig

KEY = "pk_devstackfakeforwarder0123456789"


async def main(out: Path) -> None:
    vault = KeyVault(VaultConfig.from_env(os.environ))
    await vault.start()
    state = out / "ciphertext.json"
    report: dict[str, object] = {
        "env": {k: v for k, v in os.environ.items() if k.startswith(("FORWARDER_", "VAULT_"))},
        "argv": sys.argv,
    }
    if state.exists():
        ciphertext = json.loads(state.read_text())["ciphertext"]
        report["decrypted_ok"] = (await vault.decrypt("devstack", ciphertext)).reveal() == KEY
    else:
        encrypted = await vault.encrypt("devstack", PrivateKey(KEY))
        state.write_text(json.dumps({"ciphertext": encrypted.ciphertext}))
    (out / "report.json").write_text(json.dumps(report))

    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    (out / "ready").touch()
    await stopping.wait()
    vault.forget("devstack")
    (out / "vault_up_at_sigterm").write_text(json.dumps(await vault.healthy()))
    await vault.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
