"""Loaded by Python at start-up in every subprocess the tests start (conftest puts this folder on
PYTHONPATH): the same loopback-only guard as in the test process (tests/netguard.py), and the marker
guard with the running test's markers (tests/needs.py: a workload a subprocess starts is checked too)."""

try:
    from tests import netguard
except ImportError:  # the checkout is not importable from here: nothing to guard with
    pass
else:
    netguard.install()
    from tests import needs

    needs.install_from_env()
