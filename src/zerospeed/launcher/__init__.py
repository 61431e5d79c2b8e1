"""The `zerospeed` command line: `zerospeed report` now; launch and consolidate later.

Importing this package is cheap (no torch): subcommands load their modules on use.
"""
