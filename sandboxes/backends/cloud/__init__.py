"""The hosted providers, Modal and E2B: a box's agent is a provider process spoken to over its
stdin/stdout as text. Shared below both: the text stream (``textstream``), the SDK surface checks
(``sdk_surface``) and the stdio-provider backend template (``stdio_box``).

Nothing is imported here: each provider's SDK loads only when its backend is used.
"""
