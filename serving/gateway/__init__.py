"""OpenAI-compatible canary gateway: weighted sticky routing of chat requests to Triton-served versions."""
