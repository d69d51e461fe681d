"""A cluster CA shaped like the real thing, for tests that only validate or render a config (a
real one, from ``openssl``, is the ``cluster_ca`` fixture of tests/conftest.py)."""

FAKE_CA = {"cluster.ca.cert": "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----",
           "cluster.ca.key": "-----BEGIN PRIVATE KEY-----\nMIGHfake\n-----END PRIVATE KEY-----"}
FAKE_CA_OVERRIDES = [f"{key}={value}" for key, value in FAKE_CA.items()]
