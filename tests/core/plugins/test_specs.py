"""Param schema and validation messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctrlgen import Param, PreprocessorSpec
from ctrlgen.core.errors import ParamError
from ctrlgen.core.plugins.specs import normalize_name, validate_params

LOW = Param("low_threshold", "int", default=100, min=0, max=255, description="low")


def test_above_maximum_message():
    with pytest.raises(ParamError, match=r"^canny\.low_threshold=400 is above its maximum 255$"):
        LOW.validate(400, "canny")


def test_below_minimum_and_type_messages():
    with pytest.raises(ParamError, match="canny.low_threshold=-1 is below its minimum 0"):
        LOW.validate(-1, "canny")
    with pytest.raises(ParamError, match="'abc' is not a valid int"):
        LOW.validate("abc", "canny")
    with pytest.raises(ParamError, match="must be a whole number"):
        LOW.validate(1.5, "canny")
    with pytest.raises(ParamError, match="is a boolean"):
        LOW.validate(True, "canny")


def test_string_values_from_cli_are_converted():
    assert LOW.validate("42") == 42
    assert Param("w", "float", default=1.0).validate("0.25") == 0.25
    flag = Param("invert", "bool", default=False)
    assert flag.validate("true") is True and flag.validate("off") is False
    with pytest.raises(ParamError, match="not a boolean"):
        flag.validate("maybe")


def test_choice():
    mode = Param("mode", "choice", default="a", choices=("a", "b"))
    assert mode.validate("b") == "b"
    with pytest.raises(ParamError, match=r"mode='c' is not one of the choices: 'a', 'b'"):
        mode.validate("c")


def test_bad_declarations_fail_early():
    with pytest.raises(ValueError, match="type 'number'"):
        Param("x", "number")
    with pytest.raises(ValueError, match="needs choices"):
        Param("x", "choice")
    with pytest.raises(ParamError, match="above its maximum"):
        Param("x", "int", default=10, max=5)
    with pytest.raises(ValueError, match="declared twice"):
        PreprocessorSpec(name="p", run=print, params=(LOW, LOW))


def test_validate_params_fills_defaults_and_rejects_unknown():
    params = (LOW, Param("invert", "bool", default=False))
    assert validate_params(params, {"low_threshold": "7"}, "canny") == {"low_threshold": 7, "invert": False}
    with pytest.raises(ParamError, match="canny has no parameter 'lowthreshold'; its parameters are: invert, low_threshold"):
        validate_params(params, {"lowthreshold": 1}, "canny")


def test_specs_are_frozen_and_normalised():
    spec = PreprocessorSpec(name="Depth Anything-V2", run=print)
    assert spec.name == "depth_anything_v2"
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="non-empty"):
        normalize_name("  ")
    with pytest.raises(ValueError, match="characters other than"):
        normalize_name("a/b")


@given(st.integers(min_value=-10_000, max_value=10_000))
def test_int_validation_property(value):
    if 0 <= value <= 255:
        assert LOW.validate(value) == value
    else:
        with pytest.raises(ParamError, match="low_threshold"):
            LOW.validate(value)


def test_param_schema_is_json_ready():
    import json

    data = json.loads(json.dumps(LOW.to_json()))
    assert data == {"name": "low_threshold", "type": "int", "default": 100, "min": 0, "max": 255,
                    "step": None, "choices": [], "description": "low", "category": "",
                    "required": False}


def test_optional_and_required_params():
    mask = Param("mask", "image", description="optional region")
    image = Param("image", "image", required=True, description="reference")
    assert validate_params((mask, image), {"image": "a.png"}, "ip") == {"mask": None, "image": "a.png"}
    with pytest.raises(ParamError, match="ip.image is missing"):
        validate_params((mask, image), {}, "ip")


def test_image_model_and_json_params():
    image = Param("image", "image", description="reference")
    assert image.validate("a.png") == "a.png"
    with pytest.raises(ParamError, match="ip.image is empty; give an image reference"):
        image.validate(" ", "ip")
    model = Param("model", "model", category="ipadapter", description="weights")
    assert model.to_json()["category"] == "ipadapter"

    def two_numbers(value):
        if not (isinstance(value, list) and len(value) == 2):
            raise ValueError(f"expected [x, y], got {value!r}")

    point = Param("point", "json", default=[0, 0], validator=two_numbers)
    assert point.validate([3, 4]) == [3, 4]
    with pytest.raises(ParamError, match=r"^sam.point: expected \[x, y\], got \[1\]$"):
        point.validate([1], "sam")
    with pytest.raises(ParamError, match="is not a JSON value"):
        Param("blob", "json").validate(object())
