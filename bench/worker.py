"""Run one benchmark case in this fresh process and write its result as JSON.

Usage: ``python bench/worker.py CASE PARAMS_JSON OUT_JSON`` (run.py does this).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
# gitruns comes from PYTHONPATH (run.py may point it at an exported commit);
# the work tree is only the fallback for a worker started by hand.
sys.path.insert(0, str(BENCH))
sys.path.append(str(BENCH.parent))

from common import MissingTool, Result  # noqa: E402

#: Case name -> (module, function). Each takes (params, workdir) -> Result.
CASES: dict[str, tuple[str, str]] = {
    "log.floor-msgpack": ("floors", "log_msgpack"),
    "log.floor-dulwich": ("floors", "log_dulwich"),
    "columns-file": ("floors", "columns_file"),
    "log.gitruns": ("gitruns_cases", "log"),
    "log.gitruns-float32": ("gitruns_cases", "log_float32"),
    "log.wandb": ("peers", "log_wandb"),
    "log.tensorboardx": ("peers", "log_tensorboardx"),
    "log.mlflow": ("peers", "log_mlflow"),
    "build": ("gitruns_cases", "build_run"),
    "fork": ("gitruns_cases", "fork"),
    "read": ("gitruns_cases", "read"),
    "memory": ("gitruns_cases", "memory"),
    "make-runs": ("gitruns_cases", "make_runs"),
    "list.gitruns": ("gitruns_cases", "list_runs"),
    "list.git": ("gitruns_cases", "list_refs"),
}


def run_case(name: str, params: dict[str, Any]) -> Result:
    """Run case ``name`` in a scratch directory; never raise."""
    module, func = CASES[name]
    try:
        case: Callable[[dict[str, Any], Path], Result] = getattr(
            importlib.import_module(module), func
        )
        with tempfile.TemporaryDirectory(prefix="gitruns-bench-") as tmp:
            result = case(params, Path(tmp))
    except MissingTool as exc:
        return {"status": "missing", "reason": str(exc)}
    except Exception as exc:  # a broken case is reported, not fatal
        return {
            "status": "error",
            "reason": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    result["status"] = "ok"
    return result


def main(argv: list[str]) -> int:
    """Entry point: run the case named in ``argv`` and write its result."""
    name, params_json, out = argv
    # Peers warn loudly about deprecations; the harness keeps their output
    # in a log file, but silence what would only bury the real errors.
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING)
    result = run_case(name, json.loads(params_json))
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
