"""One module per model family: a processor subclass (API process) and a model subclass
(worker). Only these modules import vLLM."""
