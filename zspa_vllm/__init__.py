"""zspa-vllm: prompt-aware visual-token pruning (ZSPAPrune) for vLLM.

Importing the package does nothing else: vLLM finds the plugin through its
``vllm.general_plugins`` entry point, and the selectors live in ``zspa_vllm.pruning``.
"""

__version__ = "0.1.0"
