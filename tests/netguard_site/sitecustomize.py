"""Loaded by Python at start-up in every subprocess the tests start (conftest puts this folder on
PYTHONPATH): the same loopback-only guard as in the test process (tests/netguard.py)."""

try:
    from tests import netguard
except ImportError:  # the checkout is not importable from here: nothing to guard with
    pass
else:
    netguard.install()
