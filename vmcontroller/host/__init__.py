"""The host side of vmcontroller: the API the wrapper uses (:mod:`.controller`)."""

from vmcontroller.host.controller import (
    CommandDeferred,
    ExitResult,
    HostController,
    VMLostError,
    VMStatus,
)

__all__ = ["CommandDeferred", "ExitResult", "HostController", "VMLostError", "VMStatus"]
