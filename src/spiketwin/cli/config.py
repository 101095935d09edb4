"""``--config FILE``: options from a TOML (or YAML) file, checked against the parser, as a subcommand's defaults.

Top-level keys apply to every subcommand that has them, a table ``[train]`` (YAML: a mapping ``train:``) to that
subcommand only; flags on the command line win, because the values only become the parser's defaults
(``ArgumentParser.set_defaults``) before the command line is parsed again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .usage import UsageError


def load_config(path: str) -> dict:
    """The table of options in the TOML (``.yaml`` / ``.yml``: YAML) file ``path``; a :class:`UsageError` naming
    the file when it is missing, unreadable or not a table."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"config file not found: {file}")
    text = file.read_text()
    if file.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise UsageError(f"config {file}: YAML needs PyYAML (pip install pyyaml); or write it as TOML") from e
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"config {file}: not valid YAML: {str(e).splitlines()[0]}") from e
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"config {file}: not valid TOML: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"config {file}: expected a table of options, got {type(data).__name__}")
    return data


def _dest(key: str) -> str:
    """The argparse destination of a config key (``batch-size`` -> ``batch_size``, ``set`` -> ``overrides``)."""
    key = key.replace("-", "_")
    return "overrides" if key == "set" else key


def config_defaults(path: str, commands: dict[str, argparse.ArgumentParser], name: str) -> dict:
    """The values of config file ``path`` for subcommand ``name``, keyed by argparse destination; ``commands``
    maps every subcommand to its parser (an option unknown to all of them, or to the table's own subcommand, is a
    :class:`UsageError`)."""
    data = load_config(path)
    # a parser's options are the keys of what it parses from nothing (public API; no subcommand requires any)
    options = {cmd: set(vars(p.parse_args([]))) - {"config"} for cmd, p in commands.items()}
    values = {k: v for k, v in data.items() if k not in commands}
    unknown = [k for k in values if not any(_dest(k) in dests for dests in options.values())]
    for cmd in commands:
        if cmd in data:
            if not isinstance(data[cmd], dict):
                raise UsageError(f"config {path}: [{cmd}] must be a table of options")
            unknown += [f"{cmd}.{k}" for k in data[cmd] if _dest(k) not in options[cmd]]
    if unknown:
        raise UsageError(f"config {path}: unknown option(s) {', '.join(sorted(unknown))}")
    values.update(data.get(name, {}))
    defaults = {_dest(k): v for k, v in values.items() if _dest(k) in options[name]}
    if isinstance(defaults.get("overrides"), dict):  # a table of constructor keywords -> --set strings
        defaults["overrides"] = [f"{k}={v!r}" for k, v in defaults["overrides"].items()]
    return defaults
