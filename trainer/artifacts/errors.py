"""The artifact store's errors, part of the trainer's tree (so the CLIs print one line).

TrainerError (exit 2)
└── ArtifactError          a bad URI or key, or a missing checkpoint/object
    ├── IntegrityError     bytes that do not match their manifest / sha256 (local or remote)
    └── TransferError      the store could not be reached or kept failing after retries (exit 1:
                           an infrastructure failure, not bad input; retrying later may work)
"""

from __future__ import annotations

from trainer.errors import TrainerError


class ArtifactError(TrainerError):
    """A bad URI or key, or something asked for that the store does not hold."""


class IntegrityError(ArtifactError):
    """Bytes that do not match the size/SHA-256 they were recorded with."""


class TransferError(ArtifactError):
    """The store kept failing after retries (network, throttling, 5xx); worth trying again later."""

    exit_code = 1
