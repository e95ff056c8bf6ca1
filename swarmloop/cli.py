"""The `swarmloop` command. Each command group lives in its own `cli_*.py` module.

Heavy imports (torch, transformers, flwr) happen inside commands, so `--help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from swarmloop.errors import UserError

app = typer.Typer(
    name="swarmloop",
    help="Close the data loop between decentralized LLM inference and federated training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (module, group name or None for a top-level command module, help)
_GROUPS = [
    ("swarmloop.cli_node", "node", "Serve a model over an OpenAI-compatible API, run batch jobs."),
    ("swarmloop.cli_traces", "traces", "Inspect, redact, export and push a node's traces."),
    ("swarmloop.cli_train", "train", "Fine-tune with TRL (SFT, DPO, KTO) and LoRA."),
    ("swarmloop.cli_checkpoint", "checkpoint", "Verify and publish checkpoints."),
    ("swarmloop.cli_fed", "fed", "Federated rounds with Flower: simulation or real deployment."),
    ("swarmloop.cli_loop", None, "The whole loop."),
]


def _register() -> None:
    for module_name, group, help_text in _GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that command group is not built yet
            raise
        if group is None:
            module.register(app)
        else:
            app.add_typer(module.app, name=group, help=help_text)


_register()

# Exceptions whose message is a complete, user-facing explanation.
def _user_error_types() -> tuple[type[BaseException], ...]:
    from inference.model_refs import ModelRefError
    from training.manifest import VerificationError
    from training.registry import RegistryError

    return (UserError, ModelRefError, RegistryError, VerificationError)


def main() -> None:
    try:
        app(standalone_mode=True)
    except _user_error_types() as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
