"""YAML as configs and --set overrides are read: PyYAML's safe loader, without aliases, and one-line errors."""

from __future__ import annotations

from typing import Any

import yaml

from hvd_dqn.errors import UserError, clip, excerpt


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["a=1", "b=[64, 64]"]`` -> ``{"a": 1, "b": [64, 64]}``; values are YAML scalars or lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {excerpt(item)}: expected key=value")
        try:
            out[key.strip()] = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise UserError(
                f"--set {excerpt(item)}: the value is not valid YAML ({getattr(exc, 'problem', exc)})"
            ) from None
        except ValueError as exc:
            raise UserError(f"--set {excerpt(key.strip())}: {too_long(exc)}") from None
    return out


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader without aliases. A config is a few dozen keys, where an alias saves nothing, while a
    few hundred bytes of nested aliases ("billion laughs") expand to gigabytes: refused at the first ``*name``."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"YAML aliases (*{clip(event.anchor)}) are not allowed in a config; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    """YAML as ``yaml.safe_load`` reads it, with aliases refused (``_NoAliasLoader``)."""
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def too_long(exc: ValueError) -> str:
    """A value error on a huge input in a few words (Python refuses to print ints of more than 4300 digits)."""
    if "digits" in str(exc):
        return "an integer with more than 4300 digits (no config value is that big)"
    return clip(str(exc), 200)
