"""zspa-serve: vLLM's OpenAI-compatible server with per-request visual-token pruning."""
