"""File names and browse paths from the other side: refused, never repaired."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.files.errors import PathOutsideDirectory, UnsafeFileName
from agent.files.names import MAX_NAME_BYTES, safe_join, sanitize_name, split_relative

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{d}{n}" for d in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"
}


@pytest.mark.parametrize(
    "name",
    [
        "report.pdf",
        "Résumé 2024 (final).docx",
        ".bashrc",
        "a",
        "archive.tar.gz",
        "日本語のファイル.txt",
        "emoji 👍🏽‍.png",
        "CONSOLE.txt",
        "com10",
        "nul-terminated.txt",
        " leading space.txt",
        "x" * 255,
        "é" * 127,
    ],
)
def test_ordinary_names_pass_unchanged(name: str) -> None:
    assert sanitize_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        (".", "directory"),
        ("..", "directory"),
        ("../x", "separator"),
        ("/etc/passwd", "separator"),
        ("a/b", "separator"),
        ("C:\\x", "separator"),
        ("..\\..\\boot.ini", "separator"),
        ("x\x00y", "NUL"),
        ("tab\there", "control"),
        ("bell\x07", "control"),
        ("del\x7f", "control"),
        ("c1\x85", "control"),
        ("NUL", "reserved"),
        ("nul", "reserved"),
        ("con.txt", "reserved"),
        ("Con.tar.gz", "reserved"),
        ("CON .txt", "reserved"),
        ("COM1", "reserved"),
        ("lpt9.log", "reserved"),
        ("COM\u00b9", "reserved"),
        ("conin$", "reserved"),
        ("aux ", "dot or a space"),
        (" ", "dot or a space"),
        ("notes.", "dot or a space"),
        ("notes...", "dot or a space"),
        ("a" * 256, "256 bytes"),
        ("é" * 128, "256 bytes"),
        ("x" * 300, "300 bytes"),
        ("file:stream", "Windows"),
        ("what?.txt", "Windows"),
        ('say "hi"', "Windows"),
        ("a|b", "Windows"),
        ("a\uff0fb", "looks like a path separator"),
        ("a\u2215b", "looks like a path separator"),
        ("invoice\u202efdp.exe", "text-direction"),
        ("lone\ud800surrogate", "Unicode"),
    ],
)
def test_unsafe_names_are_refused_with_a_reason(name: str, why: str) -> None:
    with pytest.raises(UnsafeFileName, match="refused") as info:
        sanitize_name(name)
    assert why in info.value.message
    assert info.value.code == "unsafe_name"


def test_a_non_string_is_refused() -> None:
    with pytest.raises(UnsafeFileName):
        sanitize_name(b"bytes")  # type: ignore[arg-type]


pieces = st.characters(min_codepoint=0, max_codepoint=0x10FFFF) | st.sampled_from(
    [*"/\\.:\x00 \u202e\uff0f", "con", "NUL", "lpt1", "..", "COM\u00b2"]
)
any_text = st.lists(pieces, max_size=40).map("".join) | st.builds(
    lambda dev, sep, ext: dev + sep + ext,
    st.sampled_from(sorted(RESERVED)).map(lambda s: s.lower() if len(s) % 2 else s),
    st.sampled_from(["", ".", " .", "  ."]),
    st.text(max_size=5),
)


@FUZZ
@given(any_text)
def test_sanitize_returns_one_safe_component_or_refuses(name: str) -> None:
    try:
        out = sanitize_name(name)
    except UnsafeFileName:
        return
    assert out == name
    assert "/" not in out and "\\" not in out and "\x00" not in out
    assert out not in ("", ".", "..")
    assert not any(part == ".." for part in out.replace("\\", "/").split("/"))
    assert out.split(".", 1)[0].rstrip(" ").upper() not in RESERVED
    assert not out.endswith((".", " "))
    assert len(out.encode("utf-8")) <= MAX_NAME_BYTES
    assert all(ord(ch) >= 0x20 and not 0x7F <= ord(ch) <= 0x9F for ch in out)
    # And the OS agrees it is one component.
    assert os.path.basename(out) == out
    assert not os.path.isabs(out)


# --------------------------------------------------------------------------- safe_join


@pytest.fixture
def granted(tmp_path: Path) -> Path:
    root = tmp_path / "granted"
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("a")
    (tmp_path / "secret.txt").write_text("s")
    (root / "up").symlink_to(tmp_path)
    (root / "docs" / "inside").symlink_to(root / "docs" / "deep")
    (root / "secret-link").symlink_to(tmp_path / "secret.txt")
    return root


def test_safe_join_inside(granted: Path) -> None:
    assert safe_join(granted, "") == granted.resolve()
    assert safe_join(granted, "docs/a.txt") == (granted / "docs" / "a.txt").resolve()
    assert safe_join(granted, "docs/inside") == (granted / "docs" / "deep").resolve()
    assert safe_join(granted, "docs/not-yet.txt").name == "not-yet.txt"


@pytest.mark.parametrize(
    "relative",
    [
        "../secret.txt",
        "docs/../../secret.txt",
        "/etc/passwd",
        "C:/Windows",
        "docs//a.txt",
        "docs/./a.txt",
        "docs\\a.txt",
        "a\x00b",
        "docs/",
        "..",
        ".",
    ],
)
def test_safe_join_refuses_malformed_paths(granted: Path, relative: str) -> None:
    with pytest.raises(UnsafeFileName):
        safe_join(granted, relative)


@pytest.mark.parametrize("relative", ["up", "up/secret.txt", "secret-link"])
def test_safe_join_refuses_symlinks_out(granted: Path, relative: str) -> None:
    with pytest.raises(PathOutsideDirectory, match="outside the granted directory"):
        safe_join(granted, relative)


@FUZZ
@given(st.lists(st.sampled_from(["docs", "..", ".", "up", "a.txt", "inside", "", "x"]), max_size=6))
def test_safe_join_never_leaves_the_directory(
    tmp_path_factory: pytest.TempPathFactory, parts: list[str]
) -> None:
    root = _GRANTED.get("root")
    if root is None:
        base = tmp_path_factory.mktemp("fuzzjoin")
        root = base / "granted"
        (root / "docs").mkdir(parents=True)
        (root / "up").symlink_to(base)
        (root / "docs" / "inside").symlink_to(root / "docs")
        _GRANTED["root"] = root
    try:
        out = safe_join(root, "/".join(parts))
    except UnsafeFileName:
        return
    real = root.resolve()
    assert out == real or real in out.parents


_GRANTED: dict[str, Path] = {}


def test_split_relative() -> None:
    assert split_relative("") == []
    assert split_relative("a/b c/d.txt") == ["a", "b c", "d.txt"]
