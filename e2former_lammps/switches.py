"""Environment switches (E2FORMER_*, listed in the README's GPU section): reading one, and
refusing a misspelt value by name rather than falling back to a default without a word."""
from __future__ import annotations

import os

from .validation import InputError


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """The value of environment variable `name` (`default` when unset), one of `choices`;
    anything else raises InputError naming the variable, its value and the choices."""
    value = os.environ.get(name, default)
    if value not in choices:
        raise InputError(f"{name}={value!r}: expected one of {choices}")
    return value
