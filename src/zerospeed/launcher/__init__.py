"""The `zerospeed` command line: `zerospeed report` now; launch and consolidate later.

Importing this package is cheap (no torch): subcommands load their modules on use, and
submodules (`zerospeed.launcher.runner`, DeepSpeed's launcher path) load on first access.
"""


def __getattr__(name: str):
    from zerospeed.runtime.unsupported import submodule_attribute

    return submodule_attribute("zerospeed.launcher", name)
