"""Block Kit for evidence and digests: escaped, inert, and within Slack's limits."""

from __future__ import annotations

import json
import re
from typing import Any

from responder.plugins.notify.slack_blocks import (
    DIGEST_BLOCK_ID,
    MAX_BLOCKS,
    MAX_SECTION,
    code,
    code_block,
    escape_fit,
    render,
    render_digest,
)
from responder.plugins.notify.views import (
    ApprovalView,
    DiffEntryView,
    DigestEntry,
    FilesystemDiffView,
    ProcessTreeView,
    PromptView,
)

HOSTILE = "<!channel> <https://evil.example|click> & <@U0BOSS> ```*bold*```"
SHA = "ab12cd34ef56" + "0" * 52


def _view(**overrides: Any) -> PromptView:
    view = PromptView(incident_id="01INC", priority="Critical",
                      rules=["Drop and execute new binary in container"], namespace="shop",
                      pod="web-1", node="node-1", container_id="4b1c9e7f2a3d", image="img",
                      alert_count=1, output="drift")
    for key, value in overrides.items():
        setattr(view, key, value)
    return view


def _tree(excerpt: str, method: str = "node-agent", level: str = "high") -> ProcessTreeView:
    return ProcessTreeView(step_id="tree", method=method, assurance=level, node="node-1",
                           container_id="4b1c9e7f2a3d" + "0" * 52, processes_total=7,
                           excerpt=excerpt, flagged=[f"pid 4242 (in container 7) /tmp/{HOSTILE}"])


def _diff(notable: list[DiffEntryView]) -> FilesystemDiffView:
    return FilesystemDiffView(step_id="diff", method="exec", assurance="low", node=None,
                              added=3, changed=1, deleted=2, executables_added=2,
                              notable=notable, quarantined=1)


def _mrkdwn_texts(blocks: list[dict[str, Any]]) -> list[str]:
    out = []
    for block in blocks:
        for obj in [block.get("text"), *(block.get("fields") or []),
                    *(block.get("elements") or [])]:
            if isinstance(obj, dict) and obj.get("type") == "mrkdwn":
                assert obj["verbatim"] is True
                out.append(obj["text"])
    return out


def _fences_balanced(text: str) -> bool:
    return text.count("```") % 2 == 0


def test_the_process_tree_excerpt_is_an_escaped_code_block_within_the_section_limit() -> None:
    lines = [f"{n}/{n} root /bin/sh -c {HOSTILE}" for n in range(200)]
    lines[100] = ">> 4242/7 root /tmp/dropper (deleted) [upper]"
    _, blocks = render(_view(process_trees=[_tree("\n".join(lines))]))
    [block] = [b for b in blocks if b.get("block_id") == "evidence:tree"]
    text = block["text"]["text"]
    assert len(text) <= MAX_SECTION
    assert text.startswith("*Process tree* (node agent, high assurance): 7 processes in "
                           "`4b1c9e7f2a3d` on `node-1`")
    assert "Flagged: `pid 4242 (in container 7) /tmp/&lt;!channel&gt;" in text
    assert "<!channel>" not in text
    assert "<https://" not in text
    assert "<@U0BOSS>" not in text
    assert text.endswith("…```")  # cut at a line, and the block still closes
    assert _fences_balanced(text)


def test_a_fence_in_alert_text_cannot_close_the_code_block() -> None:
    block = code_block("echo ```\n*not bold* <!here>")
    inner = block[3:-3]
    assert "```" not in inner
    assert "&lt;!here&gt;" in inner
    assert code("a`b") == "`a\u02cbb`"  # nor can a backtick end inline code


def test_escaping_never_cuts_an_entity_in_half_and_counts_escaped_length() -> None:
    assert escape_fit("<<<<", 8) == "&lt;…"
    assert escape_fit("<<<<", 9) == "&lt;&lt;…"
    assert escape_fit("abc", 3) == "abc"
    assert escape_fit("abcd", 3) == "ab…"
    assert len(code_block("<" * 5000, 500)) <= 500
    assert not re.search(r"&(l|lt|g|gt|a|am|amp)?…", code_block("&" * 5000, 500))


def test_method_and_assurance_read_node_agent_high_or_exec_low() -> None:
    _, blocks = render(_view(process_trees=[_tree("1/1 root init", "exec", "low")],
                             diffs=[_diff([])]))
    texts = "\n".join(_mrkdwn_texts(blocks))
    assert "*Process tree* (exec, low assurance)" in texts
    assert "*Filesystem diff* (exec, low assurance): 3 added, 1 changed, 2 deleted; 2 " \
           "executables added; 1 quarantined" in texts


def test_the_diff_lists_flagged_entries_first_with_kind_path_hash_prefix_and_type() -> None:
    notable = [DiffEntryView(kind="A", path=f"/tmp/{HOSTILE}", type="file", sha256=SHA,
                             executable=True, elf=True, flagged=True, quarantined=True),
               DiffEntryView(kind="C", path="/usr/local/bin/run.sh", type="file",
                             sha256=SHA, executable=True, script=True)]
    _, blocks = render(_view(diffs=[_diff(notable)]))
    [block] = [b for b in blocks if b.get("block_id") == "evidence:diff"]
    lines = block["text"]["text"].split("\n")
    assert lines[1].startswith("• ⚑ flagged added `/tmp/&lt;!channel&gt; &lt;https://evil")
    assert lines[1].endswith("ELF sha256 `ab12cd34ef56` quarantined")
    # Backticks from the path cannot leave the code span.
    assert "\u02cb\u02cb\u02cb*bold*\u02cb\u02cb\u02cb" in lines[1]
    assert lines[2] == "• changed `/usr/local/bin/run.sh` script sha256 `ab12cd34ef56`"


def test_many_notable_entries_stay_within_the_section_limit() -> None:
    notable = [DiffEntryView(kind="A", path="/x/" + "<" * 300 + str(n), sha256=SHA, elf=True)
               for n in range(20)]
    _, blocks = render(_view(diffs=[_diff(notable)]))
    [block] = [b for b in blocks if b.get("block_id") == "evidence:diff"]
    assert len(block["text"]["text"]) <= MAX_SECTION
    assert "more in the thread's artifact" in block["text"]["text"]


def test_the_digest_names_every_incident_escaped_and_within_slacks_limits() -> None:
    entries = [DigestEntry(incident_id=f"01INC{n:04d}", priority="Critical",
                           rules=[f"Drift {HOSTILE}"], namespace="shop<!here>",
                           pod=f"web-{n}`", ) for n in range(23)]
    text, blocks = render_digest("#secops", entries)
    assert text == "23 new drift incidents in #secops"
    assert blocks[0]["block_id"] == DIGEST_BLOCK_ID
    dumped = json.dumps(blocks)
    for raw in ("<!channel>", "<!here>", "<https://", "<@U0BOSS>"):
        assert raw not in dumped
    for n in range(23):
        assert f"`01INC{n:04d}`" in dumped
    body = "\n".join(_mrkdwn_texts(blocks[1:]))
    assert body.split("\n")[0] == (
        "• *Critical* `shop&lt;!here&gt;/web-0\u02cb` `Drift &lt;!channel&gt; &lt;https://evil.exa"
        "mple|click&gt; &amp; &lt;@U0BOSS&gt; \u02cb\u02cb\u02cb*bold*\u02cb\u02cb\u02cb` · "
        "`01INC0000`")
    assert "/drift show ID" in blocks[0]["text"]["text"]


def test_a_huge_digest_is_cut_with_a_pointer_to_drift_list() -> None:
    entries = [DigestEntry(incident_id=f"01INC{n:05d}", priority="Error", rules=["r" * 250],
                           namespace="ns", pod="p" * 250) for n in range(2000)]
    _, blocks = render_digest("#secops", entries)
    assert len(blocks) <= MAX_BLOCKS
    assert all(len(t) <= MAX_SECTION for t in _mrkdwn_texts(blocks))
    assert "more: `/drift list`" in json.dumps(blocks[-1])


def test_an_expired_approval_shows_no_buttons_and_the_on_timeout_it_takes() -> None:
    approval = ApprovalView(id="01APP", status="expired", options=["isolate", "dismiss"],
                            approvers=["slack:*"], two_person=[], prompt="",
                            expires="2026-11-28T12:00:00Z", decided_by=["system:expiry"],
                            decided_at="2026-11-28T12:00:01Z", reason="expired",
                            on_timeout="isolate")
    _, blocks = render(_view(approval=approval))
    assert not [b for b in blocks if b["type"] == "actions"]
    texts = "\n".join(_mrkdwn_texts(blocks))
    assert "*Expired* at 2026-11-28T12:00:00Z with no decision: *isolate* (on timeout) " \
           "applies" in texts
    assert "Reason" not in texts
    approval.on_timeout = None
    _, blocks = render(_view(approval=approval))
    assert "with no decision" in "\n".join(_mrkdwn_texts(blocks))


def test_a_prompt_with_all_its_evidence_stays_within_the_block_limit() -> None:
    trees = [_tree("x" * 5000) for _ in range(3)]
    _, blocks = render(_view(process_trees=trees, diffs=[_diff([])] * 3))
    assert len(blocks) <= MAX_BLOCKS
    assert all(len(t) <= MAX_SECTION for t in _mrkdwn_texts(blocks))
