"""The loop's workload: real prompts with the real replies users edit towards, and task answers
users correct wrong replies into, never drawn from the held-out split."""

from __future__ import annotations

from swarmloop.workload import WorkloadSettings, build_items, corrected_answer, held_out_conversations
from traces.judges import score
from traces.samples import chitchat_conversations
from traces.tasks import generate_tasks


def test_a_users_correction_is_what_the_task_asks_for_and_passes_its_judge():
    for task in generate_tasks(60, seed=3, split="train"):
        edit = corrected_answer(task)
        assert score(edit, task) == 1.0, (task, edit)
        if task["kind"] == "multiple_choice":
            assert edit.startswith(f"{task['answer']}) ")


def test_chat_items_carry_the_real_reply_and_never_a_held_out_conversation():
    settings = WorkloadSettings(chat_per_node=20, tasks_per_node=10)
    items = build_items(settings, node_index=0, iteration=1)
    chats = [item for item in items if item.kind == "chat"]
    assert len(chats) == 20 and sum(item.kind == "task" for item in items) == 10
    real = {(turns[0], turns[1]) for turns in chitchat_conversations()}
    assert all((item.messages[0]["content"], item.human_reply) in real for item in chats)
    held_out = {conversation[0]["content"] for conversation in held_out_conversations(200)}
    assert not held_out & {item.messages[0]["content"] for item in chats}
