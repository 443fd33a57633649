"""Exceptions raised for bad user input; the CLI turns them into one line."""

from __future__ import annotations

from typing import Any, Mapping


class RnnimpError(Exception):
    """Base class of the errors rnnimp reports to its users."""


class InvalidParameterError(RnnimpError, ValueError):
    """A user-supplied value breaks a rule.

    The message names the parameter, the rule and the value received, e.g.
    ``samples: must be a positive integer, got 0``.
    """

    def __init__(self, parameter: str, rule: str, value: Any) -> None:
        self.parameter = parameter
        self.rule = rule
        self.value = value
        super().__init__(f"{parameter}: {rule}, got {value!r}")

    def __reduce__(self):
        """Pickled with its three parts, so that a worker's refusal reaches the driver (Ray pickles it)."""
        return type(self), (self.parameter, self.rule, self.value)


class Names:
    """How errors name parameters: the API's own names, or those of a job's command line.

    ``names("max_repeats")`` is the name to show for the API parameter
    ``max_repeats``: itself, unless ``renamed`` maps it (to ``--max-repeats``).
    """

    def __init__(self, renamed: Mapping[str, str] | None = None) -> None:
        self.renamed = dict(renamed or {})

    def __call__(self, parameter: str) -> str:
        return self.renamed.get(parameter, parameter)

    def __repr__(self) -> str:
        return f"Names({self.renamed!r})"


API_NAMES = Names()


class WorkersLostError(RnnimpError):
    """Workers kept dying (or could not start): the run gives up.

    The message is one line naming the count and the likely cause that Ray
    reported for the last loss (e.g. killed for running out of memory).
    """

    exit_code = 1


class TooLargeError(RnnimpError, ValueError):
    """A sample, baseline or shard cannot fit where it must live (object store, worker memory).

    Raised before any work starts; the message gives the sizes and what to change.
    """
