"""Params presets: named partial params files in presets/, applied as DVC experiments.

A preset is a YAML file shaped like params.yaml that sets only some keys
(presets/tutorial.yaml: the seed article's network). `dcgan preset NAME` checks it against
params.yaml and prints the `-S key=value` arguments that `dvc exp run` takes:

    dvc exp run -n tutorial $(dcgan preset tutorial)
"""

from __future__ import annotations

from pathlib import Path

import yaml

from dcgan.core.config import load_params, parse_params
from dcgan.core.errors import UserError


def names(folder: Path) -> list[str]:
    """The presets in `folder`, by name (file name without .yaml)."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def overrides(name: str, folder: Path, params: Path) -> dict[str, object]:
    """The preset's settings as dotted keys (`train.arch`), checked against `params`.

    Raises:
        UserError: an unknown preset (naming the known ones), or a preset whose settings
            make the params invalid (naming the key).
    """
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(names(folder)) or "none"
        raise UserError(f"no preset {name!r} in {folder}/ (known: {known})")
    preset = yaml.safe_load(path.read_text()) or {}
    if not isinstance(preset, dict) or not all(isinstance(v, dict) for v in preset.values()):
        raise UserError(f"{path}: a preset maps params sections to their keys, as params.yaml")
    merged = load_params(params).model_dump()
    for section, keys in preset.items():
        if section not in merged:
            raise UserError(f"{path}: {section} is not a params section")
        merged[section].update(keys)
    parse_params(merged, source=f"{path} applied to {params}")
    return {f"{section}.{key}": value for section, keys in preset.items()
            for key, value in keys.items()}


def set_params_arguments(settings: dict[str, object]) -> str:
    """`settings` as `dvc exp run` arguments: `-S train.arch=tutorial -S ...`, values in YAML
    (null, true, 1e-4) so that DVC reads back the same types."""
    def text(value: object) -> str:
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")

    return " ".join(f"-S {key}={text(value)}" for key, value in settings.items())
