from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inference.model_refs import ModelRefError, parse_model_ref, resolve_model_ref
from training.manifest import Manifest, hash_folder, weights_sha256, write_manifest
from training.registry import LocalRegistry


@pytest.mark.parametrize(
    "text,kind,name,version",
    [
        ("embedded:smollm2-135m-instruct", "embedded", "smollm2-135m-instruct", None),
        ("tiny-random", "tiny-random", "tiny-random", None),
        ("registry:/srv/reg@v3", "registry", "/srv/reg", "v0003"),
        ("registry:/srv/reg", "registry", "/srv/reg", None),
        ("hf:org/name@rev1", "hf", "org/name", "rev1"),
        ("hf:org/name", "hf", "org/name", None),
        ("/some/folder", "folder", "/some/folder", None),
    ],
)
def test_parse(text, kind, name, version):
    ref = parse_model_ref(text)
    assert (ref.kind, ref.name, ref.version) == (kind, name, version)


@pytest.mark.parametrize("text", ["", "embedded:gpt-5", "hf:not-a-repo", "registry:", "registry:/x@vX", "s3:bucket/x"])
def test_parse_rejects(text):
    with pytest.raises(ModelRefError):
        parse_model_ref(text)


def test_tiny_random_resolves_with_identity(tiny_model_path):
    resolved = resolve_model_ref("tiny-random")
    assert resolved.path == tiny_model_path
    assert resolved.version == "v0000"
    assert resolved.weights_sha256 == weights_sha256(hash_folder(tiny_model_path))


def test_training_template_renders_like_the_original(tiny_model_path):
    from transformers import AutoTokenizer

    from inference.chat_template import ORIGINAL_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}],
    ]
    for messages in conversations:
        for add_prompt in (True, False):
            ours = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_prompt)
            theirs = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_prompt, chat_template=ORIGINAL_CHAT_TEMPLATE
            )
            assert ours == theirs
    marked = tokenizer.apply_chat_template(
        conversations[1], return_dict=True, return_assistant_tokens_mask=True, tokenize=True
    )
    assert 0 < sum(marked["assistant_masks"]) < len(marked["input_ids"])


def test_registry_ref_resolves(tmp_path, tiny_model_path):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_model_path, checkpoint, ignore=shutil.ignore_patterns(".swarmloop*"))
    files = hash_folder(checkpoint)
    write_manifest(checkpoint, Manifest(version="v0001", base_model="tiny-random", files=files,
                                        weights_sha256=weights_sha256(files)))
    registry = LocalRegistry(tmp_path / "reg")
    assert registry.publish(checkpoint) == "v0001"
    resolved = resolve_model_ref(f"registry:{registry.root}@v1")
    assert resolved.version == "v0001" and resolved.path == registry.root / "v0001"
    assert resolve_model_ref(f"registry:{registry.root}").version == "v0001"
    with pytest.raises(ModelRefError, match="no version v0002"):
        resolve_model_ref(f"registry:{registry.root}@v2")


def test_concurrent_materialization_is_atomic(tmp_path):
    """Two processes building the same cached folder at once: one builds, both see it whole."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from inference.home import materialize_folder\n"
        "def build(tmp):\n"
        "    for i in range(20):\n"
        "        (tmp / f'part{i}').write_text('x' * 1000)\n"
        "        time.sleep(0.01)\n"
        "    (tmp / 'builder').write_text(sys.argv[1])\n"
        "print(sorted(p.name for p in materialize_folder(Path(sys.argv[2]), build).iterdir()).__len__())\n"
    )
    target = tmp_path / "cached"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i), str(target)], stdout=subprocess.PIPE, text=True)
             for i in range(3)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outputs == ["21", "21", "21"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cached.") and p.is_dir()]
