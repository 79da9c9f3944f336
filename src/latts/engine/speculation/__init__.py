"""Speculation: the rejection sampler, the drafters and the cost γ policy."""
