"""Errors of the ETL layer: each says what was wrong and where."""


class EtlError(Exception):
    """A user-facing ETL failure (bad input, bad URI, unavailable encoding, storage failure)."""


class EncodingUnavailableError(EtlError):
    """A tiktoken encoding that cannot be loaded without the network."""


class StorageError(EtlError):
    """A read or write against a storage URI failed after retries."""
