"""Where a model comes from: what `--model` takes, turned into a local model directory.

- An existing path always wins: a directory is used as it is; a `.gguf` file becomes a model
  directory once, under ~/.cache/code-assistant/gguf (engine/gguf.py).
- `NAME:TAG` (or `NAMESPACE/NAME:TAG`) is an Ollama model: its GGUF blob under $OLLAMA_MODELS or
  ~/.ollama/models, read from the manifest Ollama's `pull` wrote.
- `OWNER/NAME` or `OWNER/NAME@REVISION` is a Hugging Face repository, fetched by huggingface_hub:
  the local cache first, then the hub (HF_HUB_OFFLINE, HF_HOME, HF_ENDPOINT and HF_TOKEN are
  huggingface_hub's own settings), only the files the engine reads, with its progress bar. The
  weights resume where a download stopped, in this process or a killed one (`fetch_weights`).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from .model_dir import ModelDirError

log = logging.getLogger("engine")

# What the engine reads of a Hugging Face repository (engine/model_dir.py), nothing else: no
# pickles, no other frameworks' weights.
HUB_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "*.safetensors", "model.safetensors.index.json"]
HUB_NAME = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
OLLAMA_NAME = re.compile(r"^(?:(?P<namespace>[\w.-]+)/)?(?P<name>[\w.-]+):(?P<tag>[\w.-]+)$")
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"


def resolve_model(spec: str | Path) -> Path:
    """A local model directory for a path, a GGUF file, an Ollama name or a hub name (a path that
    does not exist and is no name comes back as it is)."""
    path = Path(spec)
    if path.exists():
        return gguf_model_dir(path) if path.is_file() and path.suffix == ".gguf" else path
    text = str(spec)
    if m := OLLAMA_NAME.match(text):
        return gguf_model_dir(ollama_blob(m["namespace"] or "library", m["name"], m["tag"]))
    if m := HUB_NAME.match(text):
        return hub_snapshot(m["repo"], m["revision"])
    return path  # no name either: the caller says the directory does not exist


def served_name(path: Path) -> str:
    """OWNER/NAME for a snapshot in huggingface_hub's cache (.../models--OWNER--NAME/snapshots/REV),
    whose folder name is only a commit hash; else the folder's name."""
    repo = path.parent.parent.name
    if path.parent.name == "snapshots" and repo.startswith("models--"):
        return repo[len("models--"):].replace("--", "/")
    return path.name


# ---- Hugging Face hub ---------------------------------------------------------------------------
def hub_snapshot(repo: str, revision: str | None = None) -> Path:
    """The local snapshot of `repo` at `revision`, downloaded only if the cache lacks it."""
    import huggingface_hub
    from huggingface_hub import errors

    try:
        cached = Path(huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=HUB_FILES,
                                                        local_files_only=True))
        if _complete(cached):
            return cached
    except (errors.LocalEntryNotFoundError, OSError, ValueError):
        pass
    try:
        if not huggingface_hub.constants.HF_HUB_OFFLINE:
            fetch_weights(repo, revision)
        folder = Path(huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=HUB_FILES))
    except errors.RepositoryNotFoundError:
        raise ModelDirError(f"model {repo}: no such repository on {huggingface_hub.constants.ENDPOINT} "
                            f"(or it is private: set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise ModelDirError(f"model {repo}: no revision {revision!r}") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
        raise ModelDirError(f"model {repo}{'@' + revision if revision else ''} is not in the Hugging Face cache "
                            f"({huggingface_hub.constants.HF_HUB_CACHE}) and the hub is not reachable "
                            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!s})") from None
    except (OSError, ValueError) as e:  # HTTP errors, connection errors, a bad repo id
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelDirError(f"model {repo}: cannot download it: {first_line}") from None
    if not (folder / "config.json").is_file():
        raise ModelDirError(f"model {repo} has no config.json: not a transformers model repository")
    return folder


def fetch_weights(repo: str, revision: str | None) -> None:
    """The repository's safetensors files into huggingface_hub's blob store, each appended to the
    part a stopped download left (blobs/ETAG.part), so that snapshot_download finds them and only
    links them. huggingface_hub 2.4 starts a file over in every process (a temporary file unique to
    it, deleted when it stops: its PR #4228), and weights are the gigabytes. Anything that goes
    wrong here is left to snapshot_download, which reports it."""
    import huggingface_hub
    from filelock import FileLock
    from huggingface_hub.utils import build_hf_headers

    try:
        info = huggingface_hub.HfApi().model_info(repo, revision=revision or "main")
        folder = f"models--{repo.replace('/', '--')}"
        blobs = Path(huggingface_hub.constants.HF_HUB_CACHE) / folder / "blobs"
        locks = Path(huggingface_hub.constants.HF_HUB_CACHE) / ".locks" / folder  # where huggingface_hub keeps its own
        for name in sorted(s.rfilename for s in info.siblings or [] if s.rfilename.endswith(".safetensors")):
            meta = huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(repo, name, revision=info.sha))
            if meta.etag and meta.size and not (blobs / meta.etag).exists():
                blobs.mkdir(parents=True, exist_ok=True)
                locks.mkdir(parents=True, exist_ok=True)
                with FileLock(locks / f"{meta.etag}.part.lock"):  # one process appends to a part at a time
                    if not (blobs / meta.etag).exists():
                        _resume(meta.location, build_hf_headers(), blobs / meta.etag, meta.size, name)
    except Exception as e:  # noqa: BLE001 - snapshot_download tries again and says what is wrong
        log.debug("resumable download of %s stopped: %s", repo, e)


def _resume(url: str, headers: dict, blob: Path, size: int, name: str, attempts: int = 3) -> None:
    """`size` bytes from `url` into `blob`, through blob.part: from where it ends, again on a dropped
    connection (up to `attempts` times), with a progress bar."""
    import httpx
    from tqdm.auto import tqdm

    part = blob.with_name(blob.name + ".part")
    for attempt in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        if have > size:  # not this file's bytes
            part.unlink()
            have = 0
        try:
            if have < size:
                ranged = {**headers, "Range": f"bytes={have}-"} if have else headers
                with httpx.stream("GET", url, headers=ranged, follow_redirects=True, timeout=60) as r:
                    r.raise_for_status()
                    if have and r.status_code != 206:  # the server sent it all: start over
                        have = 0
                    with part.open("ab" if have else "wb") as f, tqdm(total=size, initial=have, unit="B",
                                                                      unit_scale=True, desc=name) as bar:
                        for chunk in r.iter_bytes():  # as they come: what arrived is kept
                            f.write(chunk)
                            bar.update(len(chunk))
            if part.stat().st_size == size:
                part.rename(blob)
                return
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise


def _complete(folder: Path) -> bool:
    has_weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    return (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file() and has_weights


# ---- Ollama -------------------------------------------------------------------------------------
def ollama_models_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


def ollama_blob(namespace: str, name: str, tag: str) -> Path:
    """The GGUF blob of an Ollama model: manifests/registry.ollama.ai/NAMESPACE/NAME/TAG names its
    layers; the one of media type application/vnd.ollama.image.model is the weights."""
    root = ollama_models_dir()
    manifest = root / "manifests" / "registry.ollama.ai" / namespace / name / tag
    label = f"{name}:{tag}" if namespace == "library" else f"{namespace}/{name}:{tag}"
    if not manifest.is_file():
        raise ModelDirError(f"model {label}: no Ollama manifest {manifest} (run `ollama pull {label}`, "
                            f"or set OLLAMA_MODELS)")
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
        digest = next(layer["digest"] for layer in layers if layer.get("mediaType") == OLLAMA_MODEL_LAYER)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, StopIteration):
        raise ModelDirError(f"model {label}: {manifest} is not an Ollama manifest with a model layer") from None
    blob = root / "blobs" / str(digest).replace(":", "-")
    if not blob.is_file():
        raise ModelDirError(f"model {label}: its blob {blob} is missing")
    return blob


def gguf_model_dir(path: Path) -> Path:
    from .gguf import gguf_to_model_dir

    return gguf_to_model_dir(path)
