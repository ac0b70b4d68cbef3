"""The Azure example's suite: AzureOpenAI requests replayed from committed cassettes, offline, with no key."""

from __future__ import annotations

import openai
import pytest
from meeting_notes import DEPLOYMENT, ActionItem, Notes, azure_client, follow_up_email, summarize

STANDUP = """\
Ana: The export bug is fixed. I'll ship the patch on Thursday, 2026-12-03.
Ben: Then I'll update the release notes by Friday the 4th.
Chloé: We agreed to drop the old CSV importer. I'll email the three customers still using it before 2026-12-11.
"""

PLANNING = """\
Dev: Should we move the offsite to March?
Eli: Yes, March works for everyone. Let's keep the same venue.
"""


@pytest.mark.llm_budget(calls=1)  # guards the application's own AzureOpenAI client, which no fixture built
def test_action_items_have_an_owner_a_task_and_a_due_date() -> None:
    notes = summarize(STANDUP)
    assert [item.owner for item in notes.action_items] == ["Ana", "Ben", "Chloé"]
    assert notes.action_items[0].due == "2026-12-03"
    assert "CSV importer" in notes.action_items[2].task and notes.action_items[2].due == "2026-12-11"
    assert any("CSV importer" in decision for decision in notes.decisions)


def test_the_application_calls_its_deployment(llm_guard) -> None:
    summarize(STANDUP)
    (attempt,) = llm_guard.events
    assert attempt.path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"


def test_a_meeting_without_tasks_has_a_decision_and_no_action_items(llm_guard) -> None:
    # A client the test builds, handed to llm_guard.guard(): the guard's retries instead of the loop's.
    notes = summarize(PLANNING, client=llm_guard.guard(azure_client()))
    assert notes.action_items == []
    assert notes.decisions and "march" in notes.decisions[0].lower()


def test_the_follow_up_email_names_every_owner_and_date(llm_client: openai.OpenAI) -> None:
    # llm_client is routed to the configured Azure regions (kind = "azure" in pyproject.toml).
    notes = Notes(
        summary="The export bug is fixed and the old CSV importer will be dropped.",
        decisions=["Drop the old CSV importer."],
        action_items=[
            ActionItem("Ana", "Ship the export patch", "2026-12-03"),
            ActionItem("Ben", "Update the release notes", "2026-12-04"),
            ActionItem("Chloé", "Email the customers still using the CSV importer", "2026-12-11"),
        ],
    )
    email = follow_up_email(notes, client=llm_client)
    for owner, due in (("Ana", "2026-12-03"), ("Ben", "2026-12-04"), ("Chloé", "2026-12-11")):
        assert owner in email and due in email
