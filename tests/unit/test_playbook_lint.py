"""``playbooks lint``: every problem is reported once, at the file:line:column an author can fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest
from pydantic import BaseModel

from responder.playbooks.inspecting import Catalog, lint_loaded, lint_paths
from responder.playbooks.loading import Problem, load_text
from responder.plugins import registry

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "playbooks"
CLI = [sys.executable, "-m", "responder"]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return {p.name: p for p in registry.load_all()}


class _TargetParams(BaseModel):
    pod: str = ""


class _TargetResult(BaseModel):
    done: bool = True


@pytest.fixture(scope="module")
def cluster_catalog(catalog: Catalog) -> Catalog:
    """The built-ins plus two cluster-changing test plug-ins, in a registry of their own."""
    own = registry.Registry()
    registry.plugin("test.quarantine", description="changes the cluster", params=_TargetParams,
                    result=_TargetResult, changes_cluster=True, registry=own)(
        lambda _ctx, _params: _TargetResult())
    registry.plugin("test.force_delete", description="changes the cluster, needs its own approval",
                    params=_TargetParams, result=_TargetResult, changes_cluster=True,
                    needs_own_approval=True, registry=own)(lambda _ctx, _params: _TargetResult())
    assert "test.quarantine" not in registry.REGISTRY
    return {**catalog, **{p.name: p for p in own}}


def lint(text: str, catalog: Catalog, file: str = "pb.yaml") -> list[Problem]:
    return lint_loaded([load_text(dedent(text), file)], catalog).problems


def where(problems: list[Problem]) -> list[tuple[int, int, str]]:
    return [(p.line, p.column, p.message) for p in problems]


GOOD = """\
    name: good
    match:
      rules: [Terminal shell in container]
    steps:
      - id: note
        uses: core.note
        with:
          message: "{{ alert.rule }} in {{ incident.namespace }}"
    """


def test_a_valid_playbook_has_no_problems(catalog: Catalog) -> None:
    assert lint(GOOD, catalog) == []


# -- what the loader reports ------------------------------------------------------------------

def test_yaml_syntax_error_is_reported_where_the_parser_stopped(catalog: Catalog) -> None:
    problems = lint("""\
        name: broken
        match: {rules: [x]
        steps: []
        """, catalog)
    assert where(problems) == [(3, 1, "YAML: expected ',' or '}', but got '<scalar>'")]
    assert str(problems[0]) == "pb.yaml:3:1: YAML: expected ',' or '}', but got '<scalar>'"


def test_a_tab_in_indentation_is_a_yaml_error_on_its_line(catalog: Catalog) -> None:
    problems = lint("name: a\nmatch:\n  rules: [x]\n\tpriority: Error\n", catalog)
    assert [(p.line, p.column) for p in problems] == [(4, 1)]
    assert problems[0].message.startswith("YAML: found character '\\t'")


def test_duplicate_key_is_reported_at_the_second_key(catalog: Catalog) -> None:
    problems = lint("""\
        name: first
        match: {rules: [x]}
        name: second
        steps:
          - id: note
            uses: core.note
            with: {message: hi}
        """, catalog)
    assert where(problems) == [(3, 1, "duplicate key 'name'")]


def test_unknown_key_is_reported_on_its_line(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        colour: red
        match: {rules: [x]}
        steps:
          - id: note
            uses: core.note
            with: {message: hi}
        """, catalog)
    assert where(problems) == [(2, 9, "colour: Extra inputs are not permitted")]


def test_unknown_key_inside_a_step_names_its_path(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: note
            uses: core.note
            whith: {message: hi}
        """, catalog)
    assert where(problems) == [(6, 12, "steps.0.whith: Extra inputs are not permitted")]


def test_priority_threshold_that_is_not_a_comparison_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match:
          rules: [x]
          priority: at least Error
        steps:
          - id: note
            uses: core.note
            with: {message: hi}
        """, catalog)
    assert where(problems) == [
        (4, 13, "match.priority: priority threshold 'at least Error' is not like '>=Error'")]


def test_priority_threshold_with_an_unknown_priority_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match:
          priority: ">=Severe"
        steps:
          - id: note
            uses: core.note
            with: {message: hi}
        """, catalog)
    assert [(p.line, p.column) for p in problems] == [(3, 13)]
    assert problems[0].message.startswith("match.priority: unknown priority 'Severe'")


def test_rule_regex_that_does_not_compile_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match:
          rules_regex: ["(unclosed"]
        steps:
          - id: note
            uses: core.note
            with: {message: hi}
        """, catalog)
    assert [(p.line, p.column) for p in problems] == [(3, 16)]
    assert problems[0].message.startswith("match.rules_regex")


def test_step_id_of_the_wrong_shape_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: note
            uses: core.note
            with: {message: hi}
          - id: Bad-Id
            uses: core.note
            with: {message: hi}
        """, catalog)
    assert where(problems) == [
        (7, 9, "steps.1.id: step ids are lowercase letters, digits and _ (start with a letter)")]


def test_playbook_without_steps_is_reported(catalog: Catalog) -> None:
    problems = lint("name: a\nmatch: {rules: [x]}\nsteps: []\n", catalog)
    assert [(p.line, p.column) for p in problems] == [(3, 8)]
    assert problems[0].message.startswith("steps: List should have at least 1 item")


def test_empty_file_is_reported_as_empty(catalog: Catalog) -> None:
    for text in ("", "# only a comment\n"):
        problems = lint(text, catalog)
        assert problems, text
        assert problems[0] == Problem("pb.yaml", 1, 1, "empty document")


def test_non_mapping_document_is_reported(catalog: Catalog) -> None:
    for text in ("- name: a\n- name: b\n", "just text\n", "42\n"):
        assert where(lint(text, catalog)) == [
            (1, 1, "a playbook is a mapping with name, match, steps")], text


def test_non_utf8_file_is_reported_not_raised(tmp_path: Path, catalog: Catalog) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    problems = lint_paths([tmp_path], catalog).problems
    assert len(problems) == 1
    assert (problems[0].file, problems[0].line, problems[0].column) == (str(bad), 1, 1)
    assert problems[0].message.startswith("not UTF-8")


def test_yaml_merge_keys_are_refused(catalog: Catalog) -> None:
    problems = lint("""\
        base: &base {message: hi}
        name: a
        match: {rules: [x]}
        steps:
          - id: note
            uses: core.note
            with:
              <<: *base
        """, catalog)
    assert "YAML merge keys are not supported" in [p.message for p in problems]


def test_unknown_yaml_tag_is_reported_not_raised(catalog: Catalog) -> None:
    problems = lint("""\
        name: !custom a
        match: {rules: [x]}
        steps:
          - id: note
            uses: core.note
            with: {message: hi}
        """, catalog)
    assert [(p.line, p.column) for p in problems] == [(1, 7)]
    assert "!custom" in problems[0].message


# -- what lint adds to the schema -------------------------------------------------------------

def test_unknown_plugin_is_reported_with_the_known_ones(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: isolate
            uses: kubernetes.isolat
        """, {k: v for k, v in catalog.items() if k.startswith("core.")})
    assert where(problems) == [
        (5, 11, "unknown plug-in 'kubernetes.isolat' "
                "(known: core.approval, core.log, core.note, core.set)")]


def test_approval_without_approvers_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: ask
            uses: core.approval
            with:
              options: [isolate, dismiss]
        """, catalog)
    assert where(problems) == [(7, 7, "with.approvers: Field required")]


def test_on_timeout_that_is_not_an_option_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: ask
            uses: core.approval
            with:
              approvers: ["cli:*"]
              options: [isolate, dismiss]
              on_timeout: evict
        """, catalog)
    assert where(problems) == [(7, 7, "not among the options: evict")]


def test_bad_parameter_value_is_reported_at_the_value(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: ask
            uses: core.approval
            with:
              approvers: ["cli:*"]
              expires_after_seconds: -5
          - id: note
            uses: core.note
            with: {message: hi, colour: red}
        """, catalog)
    assert where(problems) == [
        (8, 30, "with.expires_after_seconds: Input should be greater than 0"),
        (11, 33, "with.colour: Extra inputs are not permitted"),
    ]


def test_template_parameters_are_not_validated_statically(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: ask
            uses: core.approval
            with:
              approvers: "{{ incident.approvers }}"
              expires_after_seconds: "{{ incident.ttl }}"
              options: [isolate, dismiss]
          - id: note
            uses: core.note
            with: {message: "{{ steps.ask.result.option }}", data: "{{ alert.fields }}"}
        """, catalog)
    assert problems == []


def test_template_on_timeout_is_not_validated_statically(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: ask
            uses: core.approval
            with:
              approvers: ["cli:*"]
              options: [isolate, dismiss]
              on_timeout: "{{ 'dismiss' if alert.priority == 'Notice' else 'isolate' }}"
        """, catalog)
    assert problems == []


def test_duplicate_step_id_is_reported_at_the_second(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: note
            uses: core.note
            with: {message: one}
          - id: note
            uses: core.log
            with: {message: two}
        """, catalog)
    assert where(problems) == [(7, 9, "duplicate step id 'note'")]


def test_on_failure_to_an_unknown_step_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: note
            uses: core.note
            with: {message: hi}
            on_failure: nowhere
        """, catalog)
    assert where(problems) == [(7, 17, "on_failure names unknown step 'nowhere'")]


def test_on_failure_to_an_earlier_step_or_itself_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: first
            uses: core.note
            with: {message: hi}
          - id: second
            uses: core.note
            with: {message: hi}
            on_failure: first
          - id: third
            uses: core.note
            with: {message: hi}
            on_failure: third
        """, catalog)
    assert where(problems) == [
        (10, 17, "on_failure may only jump forward (to a later step)"),
        (14, 17, "on_failure may only jump forward (to a later step)"),
    ]


def test_on_failure_to_a_later_step_is_fine(catalog: Catalog) -> None:
    assert lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: first
            uses: core.note
            with: {message: hi}
            on_failure: last
          - id: skipped
            uses: core.note
            with: {message: hi}
          - id: last
            uses: core.log
            with: {message: hi}
        """, catalog) == []


def test_if_with_bad_syntax_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: note
            uses: core.note
            if: "alert.priority =="
            with: {message: hi}
        """, catalog)
    assert [(p.line, p.column) for p in problems] == [(6, 9)]
    assert problems[0].message.startswith("bad expression 'alert.priority =='")


@pytest.mark.parametrize("condition", ['""', "'   '"])
def test_an_empty_if_is_reported_not_taken_as_always_false(catalog: Catalog,
                                                            condition: str) -> None:
    problems = lint(f"""\
        name: a
        match: {{rules: [x]}}
        steps:
          - id: note
            uses: core.note
            if: {condition}
            with: {{message: hi}}
        """, catalog)
    assert [(p.line, p.column) for p in problems] == [(6, 9)]
    assert problems[0].message == "empty expression: write a condition, or leave out 'if'"


def test_template_with_bad_syntax_is_reported_at_the_parameter(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: note
            uses: core.note
            with:
              message: hi
              data: {rule: "{{ alert.rule }"}
        """, catalog)
    assert [(p.line, p.column) for p in problems] == [(8, 20)]
    assert problems[0].message == "bad template '{{ alert.rule }': unexpected '}'"


def test_if_reading_a_later_step_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: note
            uses: core.note
            if: steps.ask.result.option == 'isolate'
            with: {message: hi}
          - id: ask
            uses: core.approval
            with: {approvers: ["cli:*"]}
        """, catalog)
    assert where(problems) == [(6, 9, "reads steps.ask, which is not an earlier step")]


def test_if_reading_its_own_step_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: note
            uses: core.note
            if: steps['note'].status == 'succeeded'
            with: {message: hi}
        """, catalog)
    assert where(problems) == [(6, 9, "reads steps.note, which is not an earlier step")]


def test_template_reading_an_unknown_step_is_reported(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: first
            uses: core.note
            with: {message: hi}
          - id: note
            uses: core.note
            with:
              message: "{{ steps.first.result.message }} then {{ steps['nope'].result }}"
        """, catalog)
    assert where(problems) == [(10, 16, "reads steps.nope, which is not an earlier step")]


def test_every_problem_in_a_file_is_reported_sorted_by_position(catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: first
            uses: kubernetes.isolat
          - id: first
            uses: core.note
            with: {message: "{{ steps.later.x }}"}
            on_failure: nowhere
        """, catalog)
    assert [(p.line, p.column) for p in problems] == [(5, 11), (6, 9), (8, 21), (9, 17)]


# -- cluster-changing steps -------------------------------------------------------------------

def test_cluster_changing_step_without_approval_is_reported(cluster_catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: quarantine
            uses: test.quarantine
        """, cluster_catalog)
    assert where(problems) == [
        (5, 11, "test.quarantine changes the cluster: put a core.approval step before it, "
                "or set auto: true")]


def test_cluster_changing_step_after_an_approval_is_fine(cluster_catalog: Catalog) -> None:
    assert lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: ask
            uses: core.approval
            with: {approvers: ["cli:*"], options: [isolate, dismiss], on_timeout: dismiss}
          - id: quarantine
            uses: test.quarantine
            if: steps.ask.result.option == 'isolate'
        """, cluster_catalog) == []


def test_approval_after_the_cluster_changing_step_does_not_count(
        cluster_catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: quarantine
            uses: test.quarantine
          - id: ask
            uses: core.approval
            with: {approvers: ["cli:*"]}
        """, cluster_catalog)
    assert [(p.line, p.column) for p in problems] == [(5, 11)]


def test_auto_allows_a_cluster_changing_step_without_approval(cluster_catalog: Catalog) -> None:
    assert lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: quarantine
            uses: test.quarantine
            auto: true
        """, cluster_catalog) == []


def test_step_needing_its_own_approval_must_read_one(cluster_catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: ask
            uses: core.approval
            with: {approvers: ["cli:*"], options: [delete, dismiss]}
          - id: delete
            uses: test.force_delete
            if: alert.priority == 'Critical'
        """, cluster_catalog)
    assert where(problems) == [
        (9, 9, "test.force_delete needs its own approval: its `if` must read an approval "
               "step's chosen option")]


def test_step_needing_its_own_approval_that_reads_one_is_fine(cluster_catalog: Catalog) -> None:
    assert lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: ask
            uses: core.approval
            with: {approvers: ["cli:*"], options: [delete, dismiss]}
          - id: delete
            uses: test.force_delete
            if: steps.ask.result.option == 'delete'
        """, cluster_catalog) == []


def test_bad_if_on_a_step_needing_its_own_approval_is_reported_not_raised(
        cluster_catalog: Catalog) -> None:
    problems = lint("""\
        name: a
        match: {rules: [x]}
        steps:
          - id: ask
            uses: core.approval
            with: {approvers: ["cli:*"], options: [delete, dismiss]}
          - id: delete
            uses: test.force_delete
            if: "steps.ask.result.option =="
        """, cluster_catalog)
    assert [(p.line, p.column) for p in problems] == [(9, 9)]
    assert problems[0].message.startswith("bad expression")


# -- overlaps between playbooks ---------------------------------------------------------------

def _playbook(name: str, rules: list[str], precedence: int | None) -> str:
    lines = [f"name: {name}"]
    if precedence is not None:
        lines.append(f"precedence: {precedence}")
    lines += [f"match: {{rules: {json.dumps(rules)}}}", "steps:", "  - id: note",
              "    uses: core.note", "    with: {message: hi}"]
    return "\n".join(lines) + "\n"


def test_playbooks_with_equal_precedence_and_a_shared_rule_are_both_reported(
        tmp_path: Path, catalog: Catalog) -> None:
    (tmp_path / "a.yaml").write_text(_playbook("a", ["Drift", "Shell"], 200))
    (tmp_path / "b.yaml").write_text(_playbook("b", ["Shell"], 200))
    problems = lint_paths([tmp_path], catalog).problems
    assert [(Path(p.file).name, p.line, p.column) for p in problems] == [
        ("a.yaml", 2, 13), ("b.yaml", 2, 13)]
    assert problems[0].message == (
        f"playbook 'a' can match the same alerts as 'b' ({tmp_path / 'b.yaml'}) with the same "
        "precedence 200: give one a higher precedence")
    assert "playbook 'b' can match the same alerts as 'a'" in problems[1].message


def test_overlap_with_default_precedence_is_reported_at_the_name(
        tmp_path: Path, catalog: Catalog) -> None:
    (tmp_path / "a.yaml").write_text(_playbook("a", ["Shell"], None))
    (tmp_path / "b.yaml").write_text(_playbook("b", [], None))  # no rule filter: every rule
    problems = lint_paths([tmp_path], catalog).problems
    assert [(Path(p.file).name, p.line, p.column) for p in problems] == [
        ("a.yaml", 1, 7), ("b.yaml", 1, 7)]


def test_playbooks_with_distinct_precedence_do_not_overlap(
        tmp_path: Path, catalog: Catalog) -> None:
    (tmp_path / "a.yaml").write_text(_playbook("a", ["Shell"], 200))
    (tmp_path / "b.yaml").write_text(_playbook("b", ["Shell"], 100))
    assert lint_paths([tmp_path], catalog).problems == []


def test_playbooks_with_disjoint_rules_do_not_overlap(tmp_path: Path, catalog: Catalog) -> None:
    (tmp_path / "a.yaml").write_text(_playbook("a", ["Shell"], 100))
    (tmp_path / "b.yaml").write_text(_playbook("b", ["Drift"], 100))
    assert lint_paths([tmp_path], catalog).problems == []


def test_disabled_playbook_does_not_overlap(tmp_path: Path, catalog: Catalog) -> None:
    (tmp_path / "a.yaml").write_text(_playbook("a", ["Shell"], 100))
    (tmp_path / "b.yaml").write_text("enabled: false\n" + _playbook("b", ["Shell"], 100))
    assert lint_paths([tmp_path], catalog).problems == []


def test_lint_reads_a_directory_but_not_its_rehearsals(tmp_path: Path, catalog: Catalog) -> None:
    (tmp_path / "a.yaml").write_text(_playbook("a", ["Shell"], 100))
    (tmp_path / "rehearsals").mkdir()
    (tmp_path / "rehearsals" / "r.yaml").write_text("not: a playbook\n")
    report = lint_paths([tmp_path], catalog)
    assert report.problems == []
    assert [p.name for p in report.playbooks] == ["a"]


# -- the command ------------------------------------------------------------------------------

def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=cwd)


def test_cli_lint_exits_1_and_prints_file_line_column_for_a_broken_playbook(
        tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(dedent("""\
        name: broken
        match: {rules: [x]}
        steps:
          - id: isolate
            uses: kubernetes.isolat
          - id: note
            uses: core.note
            if: steps.later.result
            with: {message: hi}
        """))
    done = _cli("playbooks", "lint", str(tmp_path))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{broken}:5:11: unknown plug-in 'kubernetes.isolat' (known: "
                               "core.approval, core.log, core.note, core.set, "
                               "evidence.filesystem_diff, evidence.process_tree, "
                               "kubernetes.annotate,")
    assert lines[1] == f"{broken}:8:9: reads steps.later, which is not an earlier step"
    assert "2 problem(s) in 1 playbook file(s)" in done.stderr


def test_cli_lint_exits_0_on_the_shipped_playbooks() -> None:
    done = _cli("playbooks", "lint", str(SHIPPED))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""
    assert "playbook file(s) OK" in done.stderr


def test_cli_lint_refuses_a_missing_path(tmp_path: Path) -> None:
    done = _cli("playbooks", "lint", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert "no such file or directory" in done.stderr


def test_cli_schema_prints_json_schema_of_a_playbook() -> None:
    done = _cli("playbooks", "schema")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert {"name", "match", "steps"} <= set(schema["properties"])
    assert set(schema["required"]) == {"name", "match", "steps"}
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    step = schema["$defs"]["Step"]["properties"]
    assert {"id", "uses", "with", "if", "on_failure"} <= set(step)
