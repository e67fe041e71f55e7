"""Reading VBoxManage's command-line arguments the way it does (GNU-style options)."""

from __future__ import annotations

from tests.fakes.vboxmanage.store import syntax_error


class Options:
    """Minimal GNU-style option reader: ``--opt value``, ``--opt=value``, flags."""

    def __init__(self, args: list[str]) -> None:
        self.args = list(args)

    def take_positional(self, what: str) -> str:
        if not self.args or self.args[0].startswith("--"):
            raise syntax_error(f"Missing {what}")
        return self.args.pop(0)

    def __iter__(self):
        while self.args:
            item = self.args.pop(0)
            if item.startswith("--") and "=" in item:
                key, value = item.split("=", 1)
                self.args.insert(0, value)
                item = key
            yield item

    def value(self, option: str) -> str:
        if not self.args:
            raise syntax_error(f"Missing value for option {option}")
        return self.args.pop(0)
