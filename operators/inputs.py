"""Form inputs the operators share: one chooser for embeddings, label and group fields,
pre-filled from the stored split, and the path parameters of the App's file explorer."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import fiftyone as fo
import fiftyone.operators.types as types

import bubblefence_plugin.fo as bfo


def embeddings_field_choices(dataset: fo.Dataset) -> list[str]:
    """Fields holding embeddings: BubbleFence's own first, then the one the stored split
    read, then the user's vector fields and lists of numbers (as ``set_values`` stores
    Python lists; `bfo.split` takes them). Its other vector fields (2-D map points and
    the like) are not embeddings."""
    fields = bfo.vector_fields(dataset)
    own = [bfo.EMBEDDING_FIELD] if bfo.EMBEDDING_FIELD in fields else []
    state = bfo.state_info(dataset)
    stored = state.get("embeddings_field") if state else None
    read = [stored] if stored not in (*own, None) and bfo.holds_vectors(dataset, stored) else []
    users = [f for f in fields if not f.startswith("bubblefence_") and f not in read]
    return own + read + users


def field_input(
    inputs: types.Object,
    name: str,
    choices: Sequence[str],
    state: Mapping[str, Any] | None,
    *,
    label: str,
    description: str,
    required: bool = False,
    prefill_first: bool = False,
) -> types.Property:
    """A dropdown over ``choices`` for the field parameter ``name``.

    Pre-filled with the field the stored split used for ``name`` (``state`` is
    `bfo.state_info`; None: nothing stored, or nothing to pre-fill from), else with the
    first choice when ``prefill_first`` (embeddings: any field is better than none).
    """
    stored = (state or {}).get(name)
    if stored in choices:
        default = stored
    else:
        default = choices[0] if prefill_first and choices else None
    if not choices:
        description += ". This dataset has no suitable field yet"
    dropdown = types.DropdownView()
    for field in choices:
        dropdown.add_choice(field, label=field)
    return inputs.enum(
        name,
        list(choices),
        default=default,
        required=required,
        label=label,
        description=description,
        view=dropdown,
    )


def given(params: Mapping[str, Any], name: str, default: Any) -> Any:
    """``params[name]`` as given, ``default`` where it is absent or None.

    Never converted: the library refuses a value of the wrong kind (2.5 where a whole
    number is due, NaN, a string), naming the parameter, where ``int()`` cut 2.5 to 2
    and ran, and turned NaN into a bare "cannot convert float NaN to integer".
    """
    value = params.get(name)
    return default if value is None else value


def to_path(path: str | os.PathLike | None) -> dict[str, str] | None:
    """A path as the App's FileExplorerView sends it."""
    if path is None:
        return None
    return {"absolute_path": os.path.abspath(os.path.expanduser(os.fspath(path)))}


def parse_path(params: Mapping[str, Any], name: str) -> str | None:
    """A path param sent by the App (``{"absolute_path": ...}``) or from Python (a str)."""
    value = params.get(name)
    if isinstance(value, dict):
        value = value.get("absolute_path") or value.get("path")
    if not value:
        return None
    return os.path.abspath(os.path.expanduser(str(value)))
