"""The service's exception hierarchy: one root, specific subclasses.

Web maps each subclass to an RFC 9457 problem type; nothing here imports a framework.
"""

from __future__ import annotations


class AtlasError(Exception):
    """Root of every error Atlas raises on purpose."""


class ConfigurationError(AtlasError):
    """The service cannot run as configured."""


class MigrationError(AtlasError):
    """The database schema is not in a state the service can run on."""


class MigrationChecksumMismatch(MigrationError):
    """A migration file changed after it was applied."""


class DependencyUnavailable(AtlasError):
    """A dependency (PostgreSQL, Redis, Kafka) did not answer within its timeout."""
