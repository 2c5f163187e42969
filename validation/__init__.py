"""Validation: config.pbtxt checks, load checks and the golden-answer accuracy gate."""
