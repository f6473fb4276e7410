"""Unit tests for tools/check_argument_specs.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

_TOOL = Path(__file__).resolve().parents[3] / "tools" / "check_argument_specs.py"
_spec = importlib.util.spec_from_file_location("check_argument_specs", _TOOL)
assert _spec is not None and _spec.loader is not None
checker = importlib.util.module_from_spec(_spec)
sys.modules["check_argument_specs"] = checker
_spec.loader.exec_module(checker)


def make_role(tmp_path: Path, defaults: dict | None, options: dict, extra_entry: dict | None = None) -> Path:
    role = tmp_path / "roles" / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "defaults").mkdir()
    if defaults is not None:
        (role / "defaults" / "main.yml").write_text(yaml.safe_dump(defaults))
    specs = {"argument_specs": {"main": {"options": options}}}
    if extra_entry:
        specs["argument_specs"]["other"] = {"options": extra_entry}
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump(specs))
    return role


def opt(type_: str, **extra: object) -> dict:
    return {"type": type_, "description": ["documented"], **extra}


def test_agreeing_role_has_no_problems(tmp_path: Path) -> None:
    role = make_role(
        tmp_path,
        {"demo_a": "x", "demo_b": 3, "demo_c": True, "demo_d": [], "demo_e": {}, "demo_f": "{{ x }}"},
        {
            "demo_a": opt("str"),
            "demo_b": opt("int"),
            "demo_c": opt("bool"),
            "demo_d": opt("list", elements="str"),
            "demo_e": opt("dict"),
            "demo_f": opt("int"),
            "demo_token": opt("str", required=True),
        },
    )
    assert checker.check_role(role) == []


def test_key_in_defaults_but_not_in_specs(tmp_path: Path) -> None:
    role = make_role(tmp_path, {"demo_a": "x", "demo_extra": 1}, {"demo_a": opt("str")})
    problems = checker.check_role(role)
    assert problems == ["demo: demo_extra is in defaults/main.yml but in no argument_specs entry point"]


def test_optional_option_missing_from_defaults(tmp_path: Path) -> None:
    role = make_role(tmp_path, {"demo_a": "x"}, {"demo_a": opt("str"), "demo_b": opt("int")})
    assert checker.check_role(role) == ["demo: option demo_b is not required but missing from defaults/main.yml"]


def test_required_option_with_default(tmp_path: Path) -> None:
    role = make_role(tmp_path, {"demo_a": "x"}, {"demo_a": opt("str", required=True)})
    assert checker.check_role(role) == ["demo: option demo_a is required but has a default"]


@pytest.mark.parametrize(
    ("type_", "value"),
    [("int", "3"), ("int", True), ("bool", "yes"), ("list", "a"), ("dict", []), ("str", 5), ("float", False)],
)
def test_type_mismatch(tmp_path: Path, type_: str, value: object) -> None:
    role = make_role(tmp_path, {"demo_a": value}, {"demo_a": opt(type_)})
    problems = checker.check_role(role)
    assert len(problems) == 1
    assert "argument_specs says " + type_ in problems[0]


def test_list_elements_checked(tmp_path: Path) -> None:
    role = make_role(tmp_path, {"demo_a": ["eth0", 7]}, {"demo_a": opt("list", elements="str")})
    assert checker.check_role(role) == ["demo: default of demo_a has elements [7] that are not str"]


def test_choices_checked(tmp_path: Path) -> None:
    role = make_role(tmp_path, {"demo_a": "xml"}, {"demo_a": opt("str", choices=["human", "json"])})
    assert checker.check_role(role) == ["demo: default of demo_a is 'xml', not one of ['human', 'json']"]


def test_spec_default_must_equal_defaults(tmp_path: Path) -> None:
    role = make_role(tmp_path, {"demo_a": 1}, {"demo_a": opt("int", default=2)})
    assert checker.check_role(role) == ["demo: option demo_a declares default 2, defaults/main.yml has 1"]


def test_undocumented_and_untyped_options(tmp_path: Path) -> None:
    options = {"demo_a": {"type": "int"}, "demo_b": {"required": True, "description": "d"}}
    role = make_role(tmp_path, {"demo_a": 1}, options)
    assert sorted(checker.check_role(role)) == [
        "demo: option demo_a has no description",
        "demo: option demo_b has no type",
    ]


def test_inconsistent_entry_points(tmp_path: Path) -> None:
    role = make_role(tmp_path, {"demo_a": 1}, {"demo_a": opt("int")}, extra_entry={"demo_a": opt("str")})
    problems = checker.check_role(role)
    assert "demo: option demo_a is declared differently in entry point other" in problems


def test_missing_specs_file(tmp_path: Path) -> None:
    role = tmp_path / "roles" / "bare"
    (role / "defaults").mkdir(parents=True)
    assert checker.check_role(role) == ["bare: no meta/argument_specs.yml"]


def test_main_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_role(tmp_path, {"demo_a": 1}, {"demo_a": opt("int")})
    assert checker.main([str(tmp_path / "roles")]) == 0
    make_role(tmp_path / "bad", {"demo_a": "1"}, {"demo_a": opt("int")})
    assert checker.main([str(tmp_path / "bad" / "roles")]) == 1
    assert "argument_specs says int" in capsys.readouterr().out


def test_repository_roles_agree() -> None:
    roles = Path(__file__).resolve().parents[3] / "roles"
    problems = [p for role in checker.find_roles([roles]) for p in checker.check_role(role)]
    assert problems == []
