"""Config errors that name the field path, as Envoy's do."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One finding about a config. `kind` says which rule:

    - "parse": not valid YAML/JSON, or not the Bootstrap's shape (unknown field, bad value).
    - "unknown_type": an Any's `@type` names a message no API module defines.
    - "constraint": a protoc-gen-validate rule of Envoy's API (required, min_len, gt, ...).
    - "reference": a file, cluster or other object the config refers to does not exist.
    - "unsupported": valid for Envoy, but sofamesh does not implement this field/extension.
    """

    path: str
    message: str
    kind: str = "constraint"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    """A config that cannot be used; `problems` lists every finding (at least one)."""

    def __init__(self, problems: list[Problem] | Problem | str, path: str = "") -> None:
        if isinstance(problems, str):
            problems = [Problem(path, problems, "parse")]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def unsupported_only(self) -> bool:
        """True when Envoy would accept this config and only sofamesh's gaps stop it."""
        return all(p.kind == "unsupported" for p in self.problems)


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
