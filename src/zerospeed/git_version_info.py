"""DeepSpeed's `deepspeed.git_version_info`: version, git hash and branch of this zerospeed.

The hash and branch are read from the git checkout the package runs from (an editable
install), by reading `.git` files rather than running git, so importing stays cheap; an
installed wheel has no checkout and reports DeepSpeed's placeholder "[none]".
`installed_ops` / `compatible_ops` are empty: zerospeed compiles no ops.
"""

from __future__ import annotations

import os

from zerospeed.version import __version__ as version

UNKNOWN = "[none]"


def _git_dir(root: str) -> str | None:
    dot_git = os.path.join(root, ".git")
    if os.path.isdir(dot_git):
        return dot_git
    if os.path.isfile(dot_git):  # a worktree or submodule: "gitdir: <path>"
        with open(dot_git, encoding="utf-8") as handle:
            text = handle.read().strip()
        if text.startswith("gitdir:"):
            return os.path.normpath(os.path.join(root, text[len("gitdir:"):].strip()))
    return None


def _resolve_ref(git_dir: str, ref: str) -> str | None:
    common = git_dir
    commondir = os.path.join(git_dir, "commondir")
    if os.path.isfile(commondir):
        with open(commondir, encoding="utf-8") as handle:
            common = os.path.normpath(os.path.join(git_dir, handle.read().strip()))
    for base in (git_dir, common):
        loose = os.path.join(base, ref)
        if os.path.isfile(loose):
            with open(loose, encoding="utf-8") as handle:
                return handle.read().strip()
    packed = os.path.join(common, "packed-refs")
    if os.path.isfile(packed):
        with open(packed, encoding="utf-8") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    return None


def read_git_info(package_dir: str) -> tuple[str, str]:
    """(hash, branch) of the checkout holding `package_dir` as `<root>/zerospeed` or
    `<root>/src/zerospeed`, or ("[none]", "[none]"). Looking no higher keeps a wheel inside
    some other project's tree (a venv in a repository) from reporting that project's commit."""
    try:
        parent = os.path.dirname(os.path.abspath(package_dir))
        candidates = (parent, os.path.dirname(parent))
        git_dir = next((found for found in map(_git_dir, candidates) if found is not None), None)
        if git_dir is None:
            return UNKNOWN, UNKNOWN
        with open(os.path.join(git_dir, "HEAD"), encoding="utf-8") as handle:
            head = handle.read().strip()
        if not head.startswith("ref:"):
            return head, UNKNOWN  # a detached HEAD holds the hash itself
        ref = head[len("ref:"):].strip()
        return _resolve_ref(git_dir, ref) or UNKNOWN, ref.rsplit("refs/heads/", 1)[-1]
    except OSError:
        return UNKNOWN, UNKNOWN


git_hash, git_branch = read_git_info(os.path.dirname(os.path.abspath(__file__)))
installed_ops: dict[str, bool] = {}
compatible_ops: dict[str, bool] = {}
accelerator_name = ""


def __getattr__(name: str):
    if name == "torch_info":  # computed on use: it needs torch, this module must not import it
        import torch

        return {"version": torch.__version__, "cuda_version": str(torch.version.cuda or "0.0"),
                "hip_version": str(getattr(torch.version, "hip", None) or "0.0"), "nccl_version": "0.0"}
    raise AttributeError(f"module 'zerospeed.git_version_info' has no attribute {name!r}")


__all__ = ["accelerator_name", "compatible_ops", "git_branch", "git_hash", "installed_ops", "version"]
