"""The parts of kumoq.validation that need no policy: the writability probe and the report.
``kumoq validate`` itself runs in tests/e2e/test_validate.py."""

from __future__ import annotations

from pathlib import Path

from kumoq.validation import Finding, Report, validate_policy, writable_problem


def test_an_existing_directory_is_writable_and_the_probe_leaves_nothing(tmp_path):
    assert writable_problem(str(tmp_path)) is None
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_is_creatable_under_a_writable_parent(tmp_path):
    assert writable_problem(str(tmp_path / "a" / "b" / "c")) is None
    assert list(tmp_path.iterdir()) == []  # nothing created, not even the directories


def test_a_path_under_a_regular_file_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("x")
    problem = writable_problem(str(tmp_path / "file" / "spool"))
    assert (
        problem
        == f"{tmp_path / 'file'} is not a directory, so {tmp_path}/file/spool cannot be created"
    )


def test_a_regular_file_is_not_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    assert writable_problem(str(tmp_path / "file")) == (
        f"{tmp_path / 'file'} is not a directory, so {tmp_path / 'file'} cannot be created"
    )


def test_proc_is_not_writable_even_for_root():
    problem = writable_problem("/proc/kumoq-spool")
    assert problem is not None
    assert problem.startswith("cannot create /proc/kumoq-spool: cannot write to /proc: ")


def test_a_relative_path_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").write_text("x")
    assert writable_problem("./var/spool") == (
        f"{tmp_path / 'var'} is not a directory, so {tmp_path}/var/spool cannot be created"
    )


def test_the_same_error_from_two_places_is_one_finding_with_both():
    report = Report("init.lua")
    report.add("error", "bad rate", "init.lua:3", "queue a")
    report.add("error", "bad rate", "init.lua:3", "queue b")
    report.add("error", "bad rate", "init.lua:3", "queue b")
    report.add("warning", "bad rate", "init.lua:3", "queue c")
    assert [(f.severity, f.where) for f in report.findings] == [
        ("error", ["queue a", "queue b"]),
        ("warning", ["queue c"]),
    ]
    assert not report.ok
    assert report.summary() == "init.lua: 1 error(s), 1 warning(s)"


def test_a_finding_shows_its_first_places_and_counts_the_rest():
    finding = Finding(severity="error", message="m", location="p.lua:1", where=list("abcde"))
    assert finding.as_text() == "p.lua:1: error: m\n    in a; b; c (and 2 more)"
    assert finding.as_dict() == {"location": "p.lua:1", "message": "m", "where": list("abcde")}


def test_a_missing_policy_file_is_one_error(tmp_path):
    report = validate_policy(Path(tmp_path / "nope.lua"))
    (error,) = report.errors
    assert error.location == str(tmp_path / "nope.lua")
    assert "cannot read policy file" in error.message
