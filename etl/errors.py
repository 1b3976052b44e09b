"""Errors of the ETL layer: each says what was wrong and where."""


class EtlError(Exception):
    """A user-facing ETL failure (bad input, bad URI, unavailable encoding, storage failure)."""


class EncodingUnavailableError(EtlError):
    """A tiktoken encoding that cannot be loaded without the network."""


class StorageError(EtlError):
    """A read or write against a storage URI failed after retries."""


class InputProblem(EtlError):
    """One input entry that cannot be read (it becomes a `rejected` row, the run goes on).

    `reason` is the rejected row's reason: not_a_regular_file, dangling_symlink,
    symlink_loop, unreadable, outside_input_root, ...
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
