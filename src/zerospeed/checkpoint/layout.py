"""Checkpoint directory layout: file names, the manifest, `latest`, and finding a complete tag.

    <save_dir>/
      latest                       text: the tag of the newest committed checkpoint
      <tag>/
        manifest.json              written last; its presence means the checkpoint is complete
        model.safetensors          module state in the model dtype (at stage 3 only what no master holds)
        engine_state.pt            LR scheduler, loss scaler, param-group hyperparameters, client_state
        rank00000.safetensors ...  per rank: fp32 master pieces, their optimizer states, RNG states
      .tmp-<tag>-<id>/             a save in progress (ignored by loaders, removed by the next save)
      .old-<tag>-<id>/             a tag being overwritten, kept until the new one is complete

See docs/checkpoint-format.md for the manifest's fields.
"""

from __future__ import annotations

import json
import os
import signal

from zerospeed.errors import CheckpointError

FORMAT_NAME = "zerospeed.checkpoint"
FORMAT_VERSION = 1
# 1.1: at stage 3 the module file leaves out what the master pieces hold (module_tensors_in_shards).
# 1.2: pipeline engines: each stage's module tensors in their own file (pipeline, module_files);
#      only pipeline checkpoints are marked 1.2, so 1.1 readers still read every other save.
FORMAT_MINOR_VERSION = 2
PIPELINE_MINOR_VERSION = 2
NON_PIPELINE_MINOR_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
ENGINE_STATE_FILE = "engine_state.pt"
LATEST = "latest"
TEMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
CRASH_ENV = "ZEROSPEED_CKPT_CRASH_AT"


def shard_file(rank: int) -> str:
    return f"rank{rank:05d}.safetensors"


def stage_module_file(stage: int) -> str:
    """Pipeline stage `stage`'s module tensors (stage 0's are in MODEL_FILE)."""
    return MODEL_FILE if stage == 0 else f"model-stage{stage:03d}.safetensors"


def rank_info_file(rank: int) -> str:
    """A rank's note to rank 0 (its shard's size, CRC and pieces); folded into the manifest."""
    return f".rank{rank:05d}.json"


def crash_point(phase: str, rank: int) -> None:
    """Test hook: SIGKILL this process at save phase `phase` when ZEROSPEED_CKPT_CRASH_AT names it.

    The value is `<phase>` (every rank reaching it) or `<phase>@<rank>`. Phases, in save order:
    after_shard, before_manifest, after_manifest, after_old_aside, after_rename, after_latest.
    """
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    name, _, only_rank = wanted.partition("@")
    if name == phase and (not only_rank or int(only_rank) == rank):
        os.kill(os.getpid(), signal.SIGKILL)


def read_manifest(tag_dir: str) -> dict:
    """The parsed manifest of `tag_dir`; CheckpointError naming the file if absent or unreadable."""
    path = os.path.join(tag_dir, MANIFEST)
    if not os.path.isfile(path):
        raise CheckpointError(f"{tag_dir} is not a complete zerospeed checkpoint: {MANIFEST} is missing "
                              "(the save was interrupted, or this is not a zerospeed checkpoint)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint manifest {path} is unreadable or corrupted: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CheckpointError(f"checkpoint manifest {path} is not a {FORMAT_NAME} manifest")
    version = (manifest.get("version", 0), manifest.get("minor_version", 0))
    if version > (FORMAT_VERSION, FORMAT_MINOR_VERSION):
        raise CheckpointError(f"checkpoint manifest {path} has format version {version[0]}.{version[1]}; this "
                              f"zerospeed reads versions up to {FORMAT_VERSION}.{FORMAT_MINOR_VERSION}: upgrade zerospeed")
    return manifest


def is_complete(tag_dir: str) -> bool:
    """A manifest that parses, and every file it lists present at its recorded size (no CRC pass)."""
    try:
        manifest = read_manifest(tag_dir)
    except CheckpointError:
        return False
    for name, info in manifest.get("files", {}).items():
        path = os.path.join(tag_dir, name)
        if not os.path.isfile(path) or os.path.getsize(path) != info["bytes"]:
            return False
    return True


def read_latest(save_dir: str) -> str | None:
    path = os.path.join(save_dir, LATEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def list_tags(save_dir: str) -> list[str]:
    """Tag directories in `save_dir` (complete or not), skipping in-progress and set-aside ones."""
    if not os.path.isdir(save_dir):
        return []
    return sorted(
        name for name in os.listdir(save_dir)
        if not name.startswith(".") and os.path.isdir(os.path.join(save_dir, name))
    )


def _set_aside_copy(save_dir: str, tag: str) -> str | None:
    """A complete `.old-<tag>-*` left by a save that died while overwriting `tag`."""
    prefix = f"{OLD_PREFIX}{tag}-"
    for name in sorted(os.listdir(save_dir)):
        candidate = os.path.join(save_dir, name)
        if name.startswith(prefix) and is_complete(candidate):
            return candidate
    return None


def newest_complete_tag(save_dir: str) -> str | None:
    """The complete tag with the most global steps (then the newest save time), or None."""
    best, best_key = None, None
    for tag in list_tags(save_dir):
        tag_dir = os.path.join(save_dir, tag)
        if not is_complete(tag_dir):
            continue
        manifest = read_manifest(tag_dir)
        key = (manifest.get("counters", {}).get("global_steps", -1), manifest.get("created_unix", 0.0))
        if best_key is None or key > best_key:
            best, best_key = tag, key
    return best


def _available(save_dir: str) -> str:
    tags = [t for t in list_tags(save_dir) if is_complete(os.path.join(save_dir, t))]
    return ", ".join(tags) if tags else "none"


def resolve_tag_dir(save_dir: str, tag: str | None) -> tuple[str, str] | None:
    """(tag, directory) to load; None when `save_dir` holds no complete checkpoint and no tag was asked.

    Without a tag: the one `latest` names, else the newest complete tag directory. A tag
    whose directory vanished while being overwritten is found in its set-aside copy.
    """
    if not os.path.isdir(save_dir):
        raise CheckpointError(f"checkpoint directory {save_dir} does not exist")
    if tag is None:
        tag = read_latest(save_dir)
        if tag is None or not (os.path.isdir(os.path.join(save_dir, tag)) or _set_aside_copy(save_dir, tag)):
            tag = newest_complete_tag(save_dir)
            if tag is None:
                return None
    tag = str(tag)
    tag_dir = os.path.join(save_dir, tag)
    if not os.path.isdir(tag_dir):
        aside = _set_aside_copy(save_dir, tag)
        if aside is None:
            raise CheckpointError(f"checkpoint tag '{tag}' not found in {save_dir}; available tags: {_available(save_dir)}")
        tag_dir = aside
    elif not os.path.isfile(os.path.join(tag_dir, MANIFEST)):
        raise CheckpointError(f"checkpoint {tag_dir} is incomplete ({MANIFEST} missing: the save did not finish); "
                              f"complete tags in {save_dir}: {_available(save_dir)}")
    return tag, tag_dir
