"""The system prompts for AI chat, one per language, kept as data files next to this module.

The texts live in ``prompts/<language>.txt`` so that they can be reviewed and edited by people
who do not read Python; they ship inside the package (setup.cfg ``package_data``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Literal, get_args

__all__ = ["Language", "language_for", "system_prompt"]

Language = Literal["fa", "en"]

_LANGUAGES: tuple[Language, ...] = get_args(Language)


def language_for(locale: str | None) -> Language:
    """The prompt language for a client's ``locale``: Persian unless the locale says otherwise.

    A missing or empty locale means Persian (YektaYar's users mostly are); any locale starting
    with ``fa``, in any case (``fa``, ``fa-IR``, ``FA_ir``), means Persian; everything else
    means English.
    """
    if not locale or locale[:2].lower() == "fa":
        return "fa"
    return "en"


@cache
def system_prompt(language: Language) -> str:
    """The system prompt for ``language``, read from the package once and then remembered."""
    if language not in _LANGUAGES:
        # Checked, not trusted: the value names a file.
        raise ValueError(f"no system prompt for language {language!r}")
    text = resources.files(__package__).joinpath("prompts", f"{language}.txt")
    return text.read_text(encoding="utf-8").strip()
