"""Unpickle files that name DeepSpeed classes without DeepSpeed: each `deepspeed.*` global becomes a stand-in.

DeepSpeed's checkpoints are `torch.save` pickles that reference its classes (loss scalers,
`ZeroStageEnum`, `fragment_address`, ...). Passing this module as `pickle_module` to
`torch.load` maps every such global to a `ForeignObject` subclass that records what the
pickle gave it (constructor arguments, state), so reading never imports DeepSpeed and
never fails because it is missing or a different version:

    state = load("global_step3/mp_rank_00_model_states.pt")   # = torch.load(..., pickle_module=this)

Every other global is resolved as usual: like DeepSpeed's own loader this runs pickle
(`weights_only=False`), so load only checkpoints you trust.
"""

from __future__ import annotations

import pickle
import sys
import zipfile
from typing import Any

import torch

FOREIGN_PACKAGES = ("deepspeed",)
_STAND_INS: dict[tuple[str, str], type] = {}


def is_foreign(module: str) -> bool:
    return any(module == package or module.startswith(package + ".") for package in FOREIGN_PACKAGES)


class ForeignObject:
    """A pickled object (or called global) of a class we do not import.

    `args`/`kwargs`: what the pickle called the class with (an enum member is `Enum(value)`,
    so `value` is its value); `state`: what it restored with BUILD (usually the object's
    `__dict__`, whose keys also read as attributes: `scaler.cur_scale`).
    """

    foreign_module = ""
    foreign_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "ForeignObject":
        instance = object.__new__(cls)
        instance.__dict__.update(args=args, kwargs=dict(kwargs), state=None)
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, dict(kwargs)

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __getattr__(self, name: str) -> Any:  # only for names not found the usual way
        state = self.__dict__.get("state")
        if isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(f"stand-in for {self.foreign_path()} has no attribute {name!r}")

    @classmethod
    def foreign_path(cls) -> str:
        return f"{cls.foreign_module}.{cls.foreign_name}"

    @property
    def value(self) -> Any:
        """The single constructor argument (an enum member's value), else None."""
        return self.args[0] if len(self.args) == 1 else None

    def __int__(self) -> int:
        if isinstance(self.value, int):
            return self.value
        raise TypeError(f"stand-in for {self.foreign_path()} is not an integer enum member")

    def __reduce__(self):
        return _rebuild, (self.foreign_module, self.foreign_name, self.args, self.kwargs, self.state)

    def __repr__(self) -> str:
        shown = self.state if self.state is not None else self.args
        return f"<{self.foreign_path()} (not imported) {shown!r}>"


def stand_in(module: str, name: str) -> type:
    """The ForeignObject subclass standing for global `module.name` (one class per global)."""
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(name.rpartition(".")[2] or name, (ForeignObject,),
                               {"foreign_module": module, "foreign_name": name, "__module__": __name__})
    return _STAND_INS[key]


def _rebuild(module: str, name: str, args: tuple, kwargs: dict, state: Any) -> ForeignObject:
    instance = stand_in(module, name)(*args, **kwargs)
    if state is not None:
        instance.__setstate__(state)
    return instance


class Unpickler(pickle.Unpickler):
    """pickle's Unpickler, with every `deepspeed.*` global replaced by its stand-in class."""

    def find_class(self, module: str, name: str) -> Any:
        if is_foreign(module):
            return stand_in(module, name)
        return super().find_class(module, name)


def load(file, **kwargs: Any) -> Any:
    """pickle.load through `Unpickler` (torch calls this for its legacy, non-zip format)."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    import io

    return Unpickler(io.BytesIO(data), **kwargs).load()


def load_checkpoint_file(path: str) -> Any:
    """`torch.load` of a DeepSpeed file on CPU with stand-ins; zip-format files are memory-mapped,
    so tensors the caller never touches are never read."""
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=sys.modules[__name__],
                      mmap=zipfile.is_zipfile(path))
