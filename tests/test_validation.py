"""Typed dataclasses from nested dicts: types, choices, bounds, nested sections, a parse hook, the messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from socmap.validation import Invalid, bounds, build


@dataclass(frozen=True)
class Inner:
    size: int = field(default=5, metadata=bounds(ge=1, odd=True))


@dataclass(frozen=True)
class Section:
    name: Literal["a", "b"] = "a"
    rate: float = field(default=0.5, metadata=bounds(gt=0, le=1))
    box: tuple[float, ...] = field(default=(0.0, 1.0), metadata=bounds(length=2))
    label: Optional[str] = None
    flag: bool = False
    views: Literal[1, 2] = 1
    inner: Inner = Inner()
    tags: dict = field(default_factory=dict, metadata={"parse": lambda value, key: {k.upper(): v for k, v in value.items()}})


def test_values_are_coerced_and_nested_sections_built():
    section = build(Section, {"name": "b", "rate": 1, "box": [2, 3], "label": None, "inner": {"size": 7},
                              "tags": {"x": 1}})
    assert section == Section("b", 1.0, (2.0, 3.0), None, False, 1, Inner(7), {"X": 1})
    assert isinstance(section.rate, float) and build(Section, None) == Section()


@pytest.mark.parametrize("raw, message", [
    ({"nmae": "a"}, "unknown key s.nmae; did you mean s.name?"),
    ({"zzz": 1}, "unknown key s.zzz; valid keys: name, rate, box, label, flag, views, inner, tags"),
    ({"name": "c"}, "s.name = 'c': must be one of a, b"),
    ({"views": True}, "s.views = True: must be one of 1, 2"),
    ({"rate": 0}, "s.rate = 0.0: must be > 0 and <= 1"),
    ({"rate": float("nan")}, "s.rate = nan: must be a finite number"),
    ({"rate": "x"}, "s.rate = 'x': must be a number"),
    ({"box": [1.0]}, "s.box = [1.0]: must be a list of 2 values"),
    ({"box": 3}, "s.box = 3: must be a list"),
    ({"flag": 1}, "s.flag = 1: must be true or false"),
    ({"inner": {"size": 4}}, "s.inner.size = 4: must be odd, so that the window has a centre pixel"),
    ({"inner": 3}, "s.inner. must be a mapping of keys, got 3"),
])
def test_a_bad_value_names_its_dotted_key_and_what_is_valid(raw, message):
    with pytest.raises(Invalid) as error:
        build(Section, raw, "s.")
    assert str(error.value) == message
