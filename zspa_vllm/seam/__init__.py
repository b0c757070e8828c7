"""Every line of zspa-vllm that touches vLLM, and only that.

``compat`` lists and checks the vLLM internals the rest relies on; ``plugin`` is the
``vllm.general_plugins`` entry point; ``processor`` (API-server side) and ``worker``
(model side) are the one family-neutral pipeline, driven by the family specs of
``zspa_vllm.families``; ``llava`` and ``qwen_vl`` hold only what is truly each family's
own (the vLLM classes they extend, unpruned counts, position plumbing). Everything outside
this package (selectors, options, scope, M-RoPE arithmetic, stats) imports no vLLM.
"""
