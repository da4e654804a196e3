"""YAML configuration files read safely: without aliases (a few hundred bytes of nested aliases
expand to gigabytes), without duplicate keys (the last one silently winning), at most 1 MiB."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .values import ConfigError, shown

MAX_CONFIG_BYTES = 1 << 20  # a configuration is a few lines; a larger file is not one


# YAML: safe, without aliases (a few hundred bytes of nested aliases expand to gigabytes) and without
# duplicate keys (the last one silently winning) ------------------------------------------------------

class _StrictYamlError(yaml.YAMLError):
    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(f"{message} (line {mark.line + 1}, column {mark.column + 1})" if mark else message)


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing aliases (``*name``) and duplicate mapping keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _StrictYamlError(f"alias *{event.anchor} refused (write the value out)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader says so itself
                continue
            if duplicate:
                raise _StrictYamlError(f"duplicate key {shown(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> Any:
    """A YAML file read with ``StrictLoader``, at most MAX_CONFIG_BYTES; ConfigError naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration file ({error.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; not a configuration file")
    try:
        return yaml.load(data.decode("utf-8-sig"), Loader=StrictLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0][:200]})") from None
