"""nyxnb: durable, multi-step LLM workflows for Jupyter."""
