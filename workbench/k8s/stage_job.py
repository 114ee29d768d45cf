"""What a stage Job runs in the runner image: papermill, reading the notebook from the shared store
and writing the executed one back after every cell.

    python -m workbench.k8s.stage_job --input URL --output URL --parameters BASE64-JSON --cwd DIR

Parameters arrive as base64 JSON, so their types survive (the string ``"007"`` stays a string).
Secrets arrive only as environment variables from a Kubernetes Secret; a parameter holding a
secret's value is refused before the kernel starts. Exit codes: 0 executed, 1 the notebook
failed (the partial notebook is in the store), 2 usage.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from typing import Any
from urllib.parse import urlparse

from workbench.k8s.store import PapermillHandler, local_path


def encode_parameters(parameters: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(parameters, sort_keys=True).encode()).decode("ascii")


def decode_parameters(text: str) -> dict[str, Any]:
    value = json.loads(base64.b64decode(text.encode("ascii"), validate=True))
    if not isinstance(value, dict):
        raise ValueError("parameters must be a JSON object")
    return value


def _register(url: str) -> None:
    """Papermill reads and writes ``url`` through our store (file:// and fsspec schemes)."""
    from papermill.iorw import papermill_io

    if local_path(url) is not None and not url.startswith("/"):
        papermill_io.register("file://", PapermillHandler)
    elif local_path(url) is None:
        try:
            import fsspec  # noqa: F401 - without it, papermill's own handler is used
        except ImportError:
            return
        papermill_io.register(f"{urlparse(url).scheme}://", PapermillHandler)


def _check_secrets(stage: str, parameters: dict[str, Any]) -> None:
    from workbench.audit.redact import Secrets
    from workbench.registry.secret_guard import SECRET_NAMES_VAR

    names = [n for n in os.environ.get(SECRET_NAMES_VAR, "").split(",") if n]
    Secrets.from_environment(names).check_parameters(stage, parameters)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.k8s.stage_job")
    parser.add_argument("--input", required=True, help="notebook URL in the shared store")
    parser.add_argument("--output", required=True, help="executed notebook URL")
    parser.add_argument("--parameters", default=encode_parameters({}), help="base64 JSON")
    parser.add_argument("--cwd", default=".", help="working folder of the kernel")
    parser.add_argument("--stage", default="stage", help="stage name, for messages")
    args = parser.parse_args(argv)
    try:
        parameters = decode_parameters(args.parameters)
        _check_secrets(args.stage, parameters)
    except Exception as exc:  # noqa: BLE001 - one line for the pod log, exit 2
        print(f"stage {args.stage}: {exc}", file=sys.stderr)
        return 2
    import papermill
    from papermill.exceptions import PapermillExecutionError

    for url in (args.input, args.output):
        _register(url)
    try:
        papermill.execute_notebook(args.input, args.output, parameters=parameters,
                                   cwd=args.cwd, progress_bar=False,
                                   request_save_on_cell_execute=True)
    except PapermillExecutionError as exc:
        print(f"stage {args.stage}: cell {exc.exec_count} raised {exc.ename}: {exc.evalue}",
              file=sys.stderr)
        return 1
    print(f"stage {args.stage}: executed {args.input} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
