"""What an admin asks ``vmwrapper deploy`` for, checked before anything is written.

BOINC's ``tools/update_versions`` finds app versions at
``apps/NAME/VERSION/PLATFORM[__PLANCLASS]/`` and turns the ``VERSION``
directory name ``X.YY`` into ``version_num = 100*X + YY``. It accepts ``1.5``
too, but ``1.5`` and ``1.05`` would then both be 105, so we insist on two
digits after the dot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Names that become directory and file names, and XML text, unchanged.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PLAN_CLASS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_VERSION = re.compile(r"(\d{1,5})\.(\d{2})")


class DeployError(Exception):
    """A deploy request that cannot be carried out; the message names the value and the fix."""


def parse_version(text: str) -> int:
    """``"1.02"`` -> 102, as update_versions computes ``version_num``.

    :raises DeployError: not ``X.YY`` (digits, a dot, exactly two digits).
    """
    match = _VERSION.fullmatch(text)
    if match is None:
        raise DeployError(
            f"--version {text!r} is not a version of the form X.YY (e.g. 1.00, 7.25): BOINC "
            "makes version_num = 100*X + YY from it, so give exactly two digits after the dot"
        )
    return 100 * int(match.group(1)) + int(match.group(2))


def check_name(option: str, value: str, what: str) -> str:
    """``value`` if it is usable as a file name part and XML text, else DeployError."""
    if not _NAME.fullmatch(value) or "__" in value:
        raise DeployError(
            f"{option} {value!r} is not a valid {what}: use letters, digits, '_', '.' and '-' "
            "(starting with a letter or digit, no '__')"
        )
    return value


@dataclass(frozen=True)
class AppVersionId:
    """Which app version: app, version string, platform and optional plan class."""

    app: str
    version: str
    platform: str
    plan_class: str = ""

    @classmethod
    def checked(cls, app: str, version: str, platform: str, plan_class: str = "") -> AppVersionId:
        """Build one, raising :class:`DeployError` for any unusable part."""
        check_name("--app", app, "BOINC app name")
        parse_version(version)
        check_name("--platform", platform, "BOINC platform name (e.g. x86_64-pc-linux-gnu)")
        if plan_class and (not _PLAN_CLASS.fullmatch(plan_class) or "__" in plan_class):
            raise DeployError(
                f"--plan-class {plan_class!r} is not a valid plan class: use letters, digits, "
                "'_' and '-', no '__' (update_versions splits the directory name there; "
                "e.g. vbox64)"
            )
        return cls(app, version, platform, plan_class)

    @property
    def version_num(self) -> int:
        return parse_version(self.version)

    @property
    def platform_dir(self) -> str:
        """``PLATFORM__PLANCLASS`` (or just ``PLATFORM``): update_versions splits on ``__``."""
        return f"{self.platform}__{self.plan_class}" if self.plan_class else self.platform

    @property
    def relative_dir(self) -> str:
        """``apps/NAME/VERSION/PLATFORM__PLANCLASS`` under the project directory."""
        return f"apps/{self.app}/{self.version}/{self.platform_dir}"

    def physical_name(self, stem: str, suffix: str = "") -> str:
        """A download-directory name unique to this app version.

        BOINC files are immutable (update_versions refuses a changed file under
        an existing name), so every file carries the version, platform and plan
        class: ``vmwrapper_1.02_x86_64-pc-linux-gnu__vbox64``.
        """
        return f"{stem}_{self.version}_{self.platform_dir}{suffix}"
