"""Configuration values: frozen dataclasses built by ``from_mapping()`` from Lua tables.

Every table rejects unknown keys with a ConfigError naming the key and the allowed ones.
Pure: no IO, no asyncio, no lupa.
"""
