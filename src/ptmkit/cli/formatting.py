"""The commands' help layout: each option's default after its text, unless the text already says what the default
is (or there is none to show), so help never reads "(default: all-MiniLM-L6-v2 ...) (default: None)"."""

from __future__ import annotations

import argparse


class Defaults(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class DefaultsRaw(Defaults, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option, and the description and epilog (a methods' or keys' list) laid out as written."""
