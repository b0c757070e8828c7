"""The vLLM internals zspa-vllm relies on, checked before they are used.

The plugin subclasses vLLM's multimodal processors and models and the server wraps vLLM's
online renderer and CLI: none of that is public API, and minor releases move it. Each fact
below names a module, a name in it (a function, a class, ``Class.method`` or ``Class.attr``)
and, for callables, the parameter names our code passes or overrides. ``check`` reads
vLLM's *source files* (``ast``, nothing imported or run), so the same check runs on the
installed vLLM at ``register()`` / server start, and in CI on the Python sources of a vLLM
release that cannot run here (vLLM 0.33's wheel needs torch 2.14 and CUDA). A miss fails
with the vLLM version and the exact missing piece instead of an AttributeError deep inside
a request.

Where a release moved something we use (``Fact.modules`` lists every home, newest last),
``resolve`` imports it from whichever module the installed vLLM has.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SUPPORTED = (">=0.32.0", "<0.34")  # tested: 0.32.0 (runs in CI), 0.33.0 (sources checked)


@dataclass(frozen=True)
class Fact:
    modules: tuple[str, ...]  # where the name lives; several: it moved between releases
    name: str  # "func", "Class", "Class.method" or "Class.attr"
    params: tuple[str, ...] = ()  # parameter names that must exist (callables)
    scope: str = "model"  # "model": the plugin (every vLLM process); "server": zspa-serve
    used_by: str = ""


def _f(module: str | tuple[str, ...], name: str, *params: str, scope="model", by="") -> Fact:
    modules = (module,) if isinstance(module, str) else module
    return Fact(modules, name, params, scope, by)


_PROC = "vllm.multimodal.processing.processor"
_LLAVA = "vllm.model_executor.models.llava"
_Q2 = "vllm.model_executor.models.qwen2_vl"
_Q25 = "vllm.model_executor.models.qwen2_5_vl"
_Q3 = "vllm.model_executor.models.qwen3_vl"
_G3 = "vllm.model_executor.models.gemma3_mm"
_LN = "vllm.model_executor.models.llava_next"
_ML = "zspa_vllm/seam/llava_next.py"
_LO = "vllm.model_executor.models.llava_onevision"
_MO = "zspa_vllm/seam/llava_onevision.py"
_MP = "zspa_vllm/seam/processor.py"
_MG = "zspa_vllm/seam/gemma3.py"
_IS1 = "vllm.model_executor.models.interns1"
_MI = "zspa_vllm/seam/internvl.py"
_M3 = "vllm.model_executor.models.mistral3"
_MM = "zspa_vllm/seam/mistral3.py"
_MQ = "zspa_vllm/seam/qwen_vl.py"

FACTS: tuple[Fact, ...] = (
    # The processor hooks PruningProcessorMixin overrides (API-server process).
    _f(_PROC, "BaseMultiModalProcessor.apply", "inputs", "timing_ctx", by=_MP),
    _f(_PROC, "BaseMultiModalProcessor.get_dummy_inputs", "seq_len", "mm_counts", "mm_options",
       by=_MP),
    _f(_PROC, "BaseMultiModalProcessor._get_mm_hashes", "inputs", by=_MP),
    _f(_PROC, "BaseMultiModalProcessor._get_cache_missing_processor_kwargs", "inputs",
       "mm_is_cached", by=_MP),
    _f(_PROC, "BaseMultiModalProcessor._apply_hf_processor_main", "mm_items", "hf_kwargs", by=_MP),
    _f(_PROC, "BaseMultiModalProcessor._get_mm_fields_config", "hf_inputs",
       "hf_processor_mm_kwargs", by=_MP),
    _f(_PROC, "BaseMultiModalProcessor._get_prompt_updates", "mm_items",
       "hf_processor_mm_kwargs", "out_mm_kwargs", by=_MP),
    _f("vllm.multimodal.processing", "ProcessorInputs", by=_MP),
    _f("vllm.multimodal.processing", "PromptReplacement", by=_MP),
    _f("vllm.multimodal.inputs", "MultiModalFieldConfig", by=_MP),
    _f("vllm.multimodal.cache.base", "BaseMultiModalProcessorCache.invalidate", "mm_hash",
       scope="server", by="zspa_server/renderer.py"),
    # LLaVA.
    _f(_LLAVA, "LlavaForConditionalGeneration.embed_multimodal", by="zspa_vllm/seam/llava.py"),
    _f(_LLAVA, "LlavaMultiModalProcessor"),
    _f(_LLAVA, "LlavaProcessingInfo"),
    _f(_LLAVA, "BaseLlavaProcessingInfo.get_num_image_tokens", "image_width", "image_height",
       by="zspa_vllm/seam/llava.py"),
    _f(_LLAVA, "LlavaDummyInputsBuilder"),
    _f(_LLAVA, "_build_llava_or_pixtral_hf_info"),
    _f(_LLAVA, "_build_llava_or_pixtral_hf_processor", "info", "dummy_inputs"),
    # LLaVA-NeXT.
    _f(_LN, "LlavaNextForConditionalGeneration.embed_multimodal", by=_ML),
    _f(_LN, "LlavaNextMultiModalProcessor"),
    _f(_LN, "LlavaNextProcessingInfo"),
    _f(_LN, "LlavaNextProcessingInfo._get_num_unpadded_features", "original_height",
       "original_width", "npatches", "num_patch_height", "num_patch_width", by=_ML),
    # LLaVA-OneVision (images as LLaVA-NeXT; videos).
    _f(_LO, "LlavaOnevisionForConditionalGeneration.embed_multimodal", by=_MO),
    _f(_LO, "LlavaOnevisionForConditionalGeneration.image_newline", by=_MO),
    _f(_LO, "LlavaOnevisionMultiModalProcessor"),
    _f(_LO, "LlavaOnevisionProcessingInfo.get_num_video_tokens", "image_width", "image_height",
       "num_frames", by=_MO),
    _f(_LO, "LlavaOnevisionProcessingInfo._get_num_unpadded_features", "original_height",
       "original_width", "npatches", "num_patch_height", "num_patch_width", by=_MO),
    _f(_LO, "LlavaOnevisionDummyInputsBuilder"),
    # Qwen2-VL, Qwen2.5-VL, Qwen3-VL (M-RoPE).
    _f(_Q2, "Qwen2VLForConditionalGeneration.embed_multimodal", by=_MQ),
    _f(_Q2, "Qwen2VLForConditionalGeneration.get_mrope_input_positions", "input_tokens",
       "mm_features", by=_MQ),
    _f(_Q2, "Qwen2VLForConditionalGeneration.iter_mm_grid_thw", by=_MQ),
    _f(_Q2, "Qwen2VLForConditionalGeneration.forward", "input_ids", "positions",
       "intermediate_tensors", "inputs_embeds", by=_MQ),
    _f(_Q2, "Qwen2VLMultiModalProcessor"),
    _f(_Q2, "Qwen2VLProcessingInfo"),
    _f(_Q2, "Qwen2VLDummyInputsBuilder"),
    _f(_Q25, "Qwen2_5_VLForConditionalGeneration.embed_multimodal", by=_MQ),
    _f(_Q25, "Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions", "input_tokens",
       "mm_features", by=_MQ),
    _f(_Q25, "Qwen2_5_VLForConditionalGeneration.forward", "input_ids", "positions",
       "intermediate_tensors", "inputs_embeds", by=_MQ),
    _f(_Q25, "Qwen2_5_VLMultiModalProcessor"),
    _f(_Q25, "Qwen2_5_VLProcessingInfo"),
    _f(_Q25, "Qwen2_5_VLDummyInputsBuilder"),
    _f(_Q3, "Qwen3VLForConditionalGeneration.embed_multimodal", by=_MQ),
    _f(_Q3, "Qwen3VLForConditionalGeneration.get_mrope_input_positions", "input_tokens",
       "mm_features", by=_MQ),
    _f(_Q3, "Qwen3VLForConditionalGeneration.embed_input_ids", "input_ids",
       "multimodal_embeddings", "is_multimodal", by=_MQ),
    _f(_Q3, "Qwen3VLForConditionalGeneration.forward", "input_ids", "positions",
       "intermediate_tensors", "inputs_embeds", by=_MQ),
    _f(_Q3, "Qwen3VLForConditionalGeneration._iter_mm_grid_hw", "input_tokens", "mm_features",
       "video_token_id", "vision_start_token_id", "vision_end_token_id", "spatial_merge_size",
       by=_MQ),
    _f(_Q3, "Qwen3VLMultiModalProcessor"),
    _f(_Q3, "Qwen3VLProcessingInfo"),
    _f(_Q3, "Qwen3VLDummyInputsBuilder"),
    _f("vllm.model_executor.models.qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration",
       by="zspa_vllm/seam/qwen3_vl_moe.py"),
    _f("vllm.model_executor.models.qwen3_vl_moe", "Qwen3VLMoeProcessingInfo",
       by="zspa_vllm/seam/qwen3_vl_moe.py"),
    _f("vllm.multimodal.utils", "copy_mm_embedding_modality", by=_MQ),
    # Qwen3.5 (dense, MoE): Qwen3-VL subclasses with a hybrid language model.
    _f("vllm.model_executor.models.qwen3_5", "Qwen3_5ForConditionalGeneration",
       by="zspa_vllm/seam/qwen3_5.py"),
    _f("vllm.model_executor.models.qwen3_5", "Qwen3_5MoeForConditionalGeneration",
       by="zspa_vllm/seam/qwen3_5.py"),
    _f("vllm.model_executor.models.qwen3_5", "Qwen3_5ProcessingInfo",
       by="zspa_vllm/seam/qwen3_5.py"),
    _f("vllm.model_executor.models.qwen3_5", "Qwen3_5MoeProcessingInfo",
       by="zspa_vllm/seam/qwen3_5.py"),
    # Gemma 3.
    _f(_G3, "Gemma3ForConditionalGeneration.embed_multimodal", by=_MG),
    _f(_G3, "Gemma3MultiModalProcessor"),
    _f(_G3, "Gemma3ProcessingInfo.get_num_image_tokens", "image_width", "image_height",
       "processor", "mm_kwargs", by=_MG),
    _f(_G3, "Gemma3DummyInputsBuilder"),
    _f("vllm.multimodal.processing", "PromptUpdateDetails", by=_MP),
    # InternVL (HF format; vLLM's InternS1 code).
    _f(_IS1, "InternS1ForConditionalGeneration.embed_multimodal", by=_MI),
    _f(_IS1, "InternS1MultiModalProcessor"),
    _f(_IS1, "InternS1ProcessingInfo.get_num_image_tokens", "image_width", "image_height",
       "processor", "mm_kwargs", by=_MI),
    _f(_IS1, "InternS1DummyInputsBuilder"),
    # Mistral 3 (Pixtral tower).
    _f(_M3, "Mistral3ForConditionalGeneration.embed_multimodal", by=_MM),
    _f(_M3, "Mistral3MultiModalProcessor"),
    _f(_M3, "Mistral3ProcessingInfo.get_vision_encoder_info", "mm_processor_kwargs", by=_MM),
    _f(_M3, "Mistral3HFEncoderInfo.get_patch_grid_size", "image_width", "image_height", by=_MM),
    _f(_M3, "Mistral3DummyInputsBuilder"),
    # Worker and config helpers.
    _f("vllm.utils.torch_utils", "get_kv_cache_torch_dtype", "cache_dtype", "model_dtype",
       by="zspa_vllm/seam/kv_size.py"),
    _f("vllm.config.model", "ModelConfig.get_num_kv_heads", "parallel_config",
       by="zspa_vllm/seam/kv_size.py"),
    _f("vllm.config.model", "ModelConfig.get_total_num_hidden_layers",
       by="zspa_vllm/seam/kv_size.py"),
    _f("vllm.config.model", "ModelConfig.get_head_size", by="zspa_vllm/seam/kv_size.py"),
    _f("vllm.config.model", "ModelConfig.get_sliding_window", by="zspa_vllm/seam/kv_size.py"),
    _f("vllm.config.scheduler", "SchedulerConfig.max_num_encoder_input_tokens",
       by="zspa_vllm/seam/worker.py"),
    _f("vllm.distributed.parallel_state", "get_tensor_model_parallel_rank",
       by="zspa_vllm/seam/selection_metrics.py"),
    # The server: online renderer, request checks, media fetching, CLI.
    _f("vllm.renderers.online_renderer", "OnlineRenderer.preprocess_chat", "request",
       scope="server", by="zspa_server/renderer.py"),
    _f("vllm.renderers.online_renderer", "OnlineRenderer.preprocess_cmpl", "request",
       scope="server", by="zspa_server/renderer.py"),
    _f("vllm.renderers.online_renderer", "OnlineRenderer.trust_request_mm_kwargs",
       scope="server", by="zspa_server/renderer.py"),
    _f("vllm.entrypoints.generate.base.protocol", "validate_request_mm_kwargs",
       "mm_processor_kwargs", "media_io_kwargs", "trust_request_mm_kwargs", scope="server",
       by="zspa_server/renderer.py"),
    _f("vllm.exceptions", "VLLMValidationError", scope="server", by="zspa_server/renderer.py"),
    _f("vllm.connections", "global_http_connection", scope="server",
       by="zspa_server/media_policy.py"),
    _f(("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.common.cli_args"),
       "make_arg_parser", "parser", scope="server", by="zspa_server/cli.py"),
    _f(("vllm.entrypoints.serve.utils.api_utils", "vllm.entrypoints.common.startup"),
       "cli_env_setup", scope="server", by="zspa_server/cli.py"),
    _f("vllm.utils.argparse_utils", "FlexibleArgumentParser", scope="server",
       by="zspa_server/cli.py"),
    _f("vllm.entrypoints.cli.serve", "ServeSubcommand.cmd", "args", scope="server",
       by="zspa_server/cli.py"),
    _f("vllm.entrypoints.cli.serve", "ServeSubcommand.validate", "args", scope="server",
       by="zspa_server/cli.py"),
)  # fmt: skip


class CompatError(RuntimeError):
    """The installed vLLM lacks something zspa-vllm relies on."""


def vllm_root() -> Path:
    """The folder that holds the installed ``vllm`` package (nothing is imported)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise CompatError("vLLM is not installed")
    return Path(next(iter(spec.submodule_search_locations))).parent


def source_version(root: Path) -> str:
    text = (root / "vllm" / "_version.py").read_text()
    m = re.search(r"__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)['\"]", text)
    return m[1] if m else "unknown"


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _top_level_names(tree: ast.Module) -> dict[str, ast.AST]:
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    names[t.id] = node
    return names


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    a = fn.args
    return {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}


def _member(cls: ast.ClassDef, name: str) -> ast.AST | None:
    """A method, a class-level assignment, or ``self.<name> = ...`` in any method."""
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name:
            return node
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(getattr(t, "id", None) == name for t in targets):
            return node
    for node in ast.walk(cls):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == name
            and isinstance(node.ctx, ast.Store)
            and getattr(node.value, "id", None) == "self"
        ):
            return node
    return None


def _problem(root: Path, fact: Fact) -> str | None:
    """What is missing for ``fact`` in the vLLM sources under ``root``; None: all there."""
    first, _, member = fact.name.partition(".")
    misses = []
    for module in fact.modules:
        path = _module_file(root, module)
        if path is None:
            misses.append(f"no module {module}")
            continue
        node = _top_level_names(_parse(path)).get(first)
        if node is None:
            misses.append(f"{module} has no {first}")
            continue
        if member:
            if not isinstance(node, ast.ClassDef):
                misses.append(f"{module}.{first} is not a class")
                continue
            node = _member(node, member)
            if node is None:
                misses.append(f"{module}.{first} has no {member}")
                continue
        if fact.params and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            missing = [p for p in fact.params if p not in _params(node)]
            if missing and not node.args.kwarg:
                misses.append(f"{module}.{fact.name} has no parameter {', '.join(missing)}")
                continue
        return None
    return "; ".join(misses)


def check(root: Path | None = None, scope: str | None = None) -> list[str]:
    """Every unmet fact (of ``scope``, or all) in the vLLM sources under ``root``
    (default: the installed vLLM), each as a line naming what is missing and who uses it."""
    root = root or vllm_root()
    out = []
    for fact in FACTS:
        if scope is not None and fact.scope != scope:
            continue
        if (problem := _problem(root, fact)) is not None:
            out.append(f"{problem} (used by {fact.used_by or 'zspa-vllm'})")
    return out


@cache
def require(scope: str) -> None:
    """Raise ``CompatError`` naming the vLLM version and every missing piece of ``scope``."""
    root = vllm_root()
    problems = check(root, scope)
    if problems:
        lines = "\n  ".join(problems)
        raise CompatError(
            f"zspa-vllm supports vLLM {','.join(SUPPORTED)}; the installed vLLM "
            f"{source_version(root)} lacks what it relies on:\n  {lines}\n"
            "Install a supported vLLM, or set ZSPA_DISABLE=1 to run stock vLLM."
        )


def resolve(name: str):
    """The object named by a moved fact, from whichever of its modules vLLM has."""
    fact = next(f for f in FACTS if f.name == name)
    for module in reversed(fact.modules):
        if importlib.util.find_spec(module) is not None:
            return getattr(importlib.import_module(module), name)
    raise CompatError(f"vLLM has none of {', '.join(fact.modules)} (for {name})")


__all__ = ["FACTS", "SUPPORTED", "CompatError", "Fact", "check", "require", "resolve"]
