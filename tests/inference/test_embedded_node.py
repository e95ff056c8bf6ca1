"""The embedded SmolLM2 model behind the real server, and a clean shutdown on SIGINT."""

from __future__ import annotations

import signal
import threading

from tests.node_process import start_node


def test_embedded_model_answers_paris_and_shuts_down_cleanly(embedded_model_path):
    node = start_node("embedded:smollm2-135m-instruct")
    try:
        client = node.client()
        reply = client.chat.completions.create(
            model="embedded:smollm2-135m-instruct",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0, max_tokens=24)
        assert "Paris" in reply.choices[0].message.content
        assert reply.model == "embedded:smollm2-135m-instruct"

        # SIGINT while a stream is open: the node finishes or closes it and exits 0
        first_chunk = threading.Event()

        def stream() -> None:
            try:
                for _ in node.client().chat.completions.create(
                        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Tell me a long story."}],
                        max_tokens=400, stream=True):
                    first_chunk.set()
            except Exception:
                pass  # the server may close the stream when it shuts down

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        assert first_chunk.wait(120)
        node.proc.send_signal(signal.SIGINT)
        assert node.proc.wait(60) == 0
        streamer.join(30)
        assert "node stopped" in node.log_text()
    finally:
        node.stop()
