"""Fixtures shared by every test folder: real OpenBao, the Klaviyo mock, the forwarder."""

pytest_plugins = [
    "tests.support.openbao",
    "tests.support.klaviyo",
    "tests.support.forwarder",
    "tests.support.pki",
    "tests.support.postgres",
]
