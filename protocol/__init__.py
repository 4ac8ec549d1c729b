"""The tus 1.0.0 rules, sans-I/O: parsers, the upload model, the error table and decisions.

Nothing in this package imports aiohttp, redis or asyncio, or reads a clock; a test enforces it.
"""
