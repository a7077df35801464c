"""Test support for wiremsg and for third-party backends.

:mod:`wiremsg.testing.conformance` is the public backend conformance suite (subclass
``BackendConformance`` and provide ``backend`` and ``listen_address`` fixtures), with the
reusable ``clean_reactor`` dirty-reactor check. Nothing is imported here, so importing
``wiremsg.testing`` costs nothing and needs no pytest.
"""
