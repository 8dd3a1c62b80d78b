"""The leaf layer every other part of mollm may import, and which imports nothing of mollm: atomic writes, device
placement, the generic registry, the batch type and token log-probabilities, and the error types."""
