"""Start a real `swarmloop node serve` subprocess on loopback, for any area's tests.

    from tests.node_process import start_node

    with start_node("tiny-random", limits={"max_tokens_cap": 64}) as node:
        client = node.client()                  # openai.OpenAI pointed at the node
        client.chat.completions.create(model=node.model, messages=[...])

The implementation is the package's own (swarmloop/node_process.py), which the loop conductor
uses to start its nodes: the tests exercise the same code.
"""

from pathlib import Path

from swarmloop.node_process import NodeProcess, free_port, start_node, to_toml  # noqa: F401

# The checkout's root: CLI subprocesses in tests run from here.
REPO_ROOT = Path(__file__).resolve().parents[1]
