"""README's example selector, installed as a real distribution with an entry point.

``install(root)`` writes the example module exactly as README shows it, a second module
that wraps it and records every call the worker makes (for engine tests), and a
``.dist-info`` declaring both under the ``zspa_vllm.selectors`` entry-point group. Putting
``root`` on ``PYTHONPATH`` installs them for ``importlib.metadata`` as pip would.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
LOG_ENV = "ZSPA_TEST_SELECTOR_LOG"

RECORDER = f'''
"""Test-only: README's window selector, recording (N, keep, offset, result) per item."""
import json
import os

from my_selector import OFFSET, window_select
from zspa_vllm.selectors import SelectorSpec, per_item


def recorded(visual, prompt, keep, window_offset):
    kept = window_select(visual, prompt, keep, window_offset)
    with open(os.environ["{LOG_ENV}"], "a") as log:
        record = [visual.shape[0], keep, window_offset, prompt.shape[0], kept.tolist()]
        log.write(json.dumps(record) + "\\n")
    return kept


SPEC = SelectorSpec("window_recorded", per_item(recorded), (OFFSET,))
'''


def readme_example() -> tuple[str, dict[str, str]]:
    """README's example module source and its entry points (name -> "module:attr")."""
    section = README.read_text().split("### Adding a selector", 1)[1].split("\n## ", 1)[0]
    blocks = dict((lang, body) for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S))
    points = dict(re.findall(r'^(\w+) = "([\w.]+:\w+)"$', blocks["toml"], re.M))
    assert points, "README's example declares no entry point"
    return blocks["python"], points


def install(root: Path) -> Path:
    source, points = readme_example()
    root.mkdir(parents=True, exist_ok=True)
    (root / "my_selector.py").write_text(source)
    (root / "recorded_window.py").write_text(RECORDER)
    dist = root / "my_selector-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-selector\nVersion: 0.1\n")
    points = points | {"window_recorded": "recorded_window:SPEC"}
    lines = "".join(f"{name} = {target}\n" for name, target in points.items())
    (dist / "entry_points.txt").write_text(f"[zspa_vllm.selectors]\n{lines}")
    return root


def env(site: Path) -> dict[str, str]:
    """This process's environment with ``site`` first on ``PYTHONPATH``."""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return os.environ | {"PYTHONPATH": path}


def generate_prompts(payload: dict) -> list:
    """For ``run_fresh``: LLaVA requests ``[image seed, options]``; their prompt token ids."""
    from vllm import LLM

    from tests.support.engine import engine_kwargs, greedy, image, request

    llm = LLM(**engine_kwargs(payload["model"]))
    reqs = [request("what is on the left?", image(s), **kw) for s, kw in payload["requests"]]
    return [list(o.prompt_token_ids) for o in llm.generate(reqs, greedy(), use_tqdm=False)]


def everywhere(_: object) -> dict:
    """For ``run_fresh``: what the example selector became in every generated place."""
    import torch

    from zspa_server import cli, openapi, options
    from zspa_vllm import config, pruning, selectors

    v, p = torch.randn(10, 4), torch.randn(2, 4)
    res: dict = {"names": selectors.names()}
    res["last"] = pruning.select("window", v, p, 4, window_offset=1.0).tolist()
    res["first"] = pruning.select_batch("window", [v, v], [p, p], [3, 20])[0].tolist()
    res["params"] = config.resolve({"prune_method": "window", "prune_window_offset": 0.5}).params
    res["parsed"] = options.parse({"prune_method": "window", "prune_window_offset": 0.25})
    try:
        options.parse({"prune_window_offset": 1.5})
    except options.PruneFieldError as exc:
        res["refused"] = [exc.field, str(exc)]
    res["schema"] = openapi.prune_properties()["prune_window_offset"]
    parser = cli.make_parser()
    args = cli.prepare(parser.parse_args(["m", "--prune-window-offset", "0.75"]), parser)
    res["cli"] = args.mm_processor_kwargs
    return res


def names(_: object) -> list:
    """For ``fresh_process``: the registry's method names (loads every entry point)."""
    from zspa_vllm import selectors

    return list(selectors.names())
