"""Runwire's small shared library.

Everything the services have in common and nothing else: typed settings, the
gRPC server lifecycle, client channels, ``UserContext`` validation and
attestation, domain errors and their mapping to status codes, structured
logging, and the names of run states and event types. Services import this
package and the generated contracts in ``runwire``, never each other.
"""
