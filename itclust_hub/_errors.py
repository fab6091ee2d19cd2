"""The exception type users see (a one-line reason that says what to do, in the words of the Python API) and
the warning type; :func:`cli_words` puts those words into command-line options for the command lines."""

from __future__ import annotations

import re


class ItClustError(ValueError):
    """Bad input or a bad reference; the message is one line and names the fix."""


class ItClustWarning(UserWarning):
    """Something was assumed or left out that the user should know of; the message is one line. The result's
    provenance keeps it under ``"warnings"``."""


# Python arguments whose names messages use, each with what a command line says instead: its option, or
# for token= the environment variable (the commands take no token option).
_CLI_OPTIONS = {name: "--" + name.replace("_", "-") for name in (
    "format", "layer", "use_raw", "gene_key", "input_type", "query_organism", "orthologs", "scale", "revision",
    "seed", "device", "force", "max_iter", "min_confidence", "min_overlap", "label_key",
    "organism", "small_types", "min_cells_per_type", "truth_key", "pretrain_epochs", "epochs")} | {
    "token": "HF_TOKEN"}
# name=True (a flag), name= (followed by a value or not); a bare name only where it has an underscore, so
# that English words ("format", "layer", "device") are left alone
_API_WORD = re.compile(r"(?<![\w.-])(?:(?P<arg>%s)=(?P<true>True\b)?|(?P<bare>%s)\b)" % (
    "|".join(_CLI_OPTIONS), "|".join(name for name in _CLI_OPTIONS if "_" in name)))


def cli_words(text: str) -> str:
    """``text`` with the Python argument names it cites (``use_raw=True``, ``gene_key=``, ``max_iter``) put as
    the command-line options that set them (``--use-raw``, ``--gene-key``, ``--max-iter``)."""

    def option(match: re.Match) -> str:
        if match["bare"]:
            return _CLI_OPTIONS[match["bare"]]
        value_follows = match["true"] is None and match.end() < len(text) and text[match.end()] not in " ,;)"
        return _CLI_OPTIONS[match["arg"]] + (" " if value_follows else "")

    return _API_WORD.sub(option, text)
