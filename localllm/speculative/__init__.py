"""Speculative decoding without a draft model: drafters propose tokens from the context
(`prompt_lookup`), verification (`verify`) checks them in one forward pass of the model,
and an adaptive controller (`adaptive`) decides per step whether and how far to draft."""
