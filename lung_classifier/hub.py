"""Hugging Face Hub transport: fetch a package snapshot, publish a package directory.

huggingface_hub does the work (revisions, the standard cache, HF_HUB_OFFLINE, tokens
from the usual places); this module only turns its failures into messages that say
what was tried.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubError(RuntimeError):
    """A Hub download or upload failed; the message names the repo and the cause."""


def parse_repo_id(source: str) -> str | None:
    """'owner/name' or 'hf://owner/name' -> 'owner/name'; anything else -> None."""
    repo_id = source[len("hf://"):] if source.startswith("hf://") else source
    return repo_id if REPO_ID.match(repo_id) else None


def download(repo_id: str, revision: str | None = None) -> Path:
    """Snapshot of a model repo in the standard cache (offline: from the cache only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, repo_type="model"))
    except RepositoryNotFoundError:
        raise HubError(
            f"Hub repo {repo_id!r} not found (or private: log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"Hub repo {repo_id!r} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        raise HubError(
            f"cannot fetch {where}: the Hub is unreachable or HF_HUB_OFFLINE is set, and the local "
            "cache has no copy of it; connect once, or pass a local package directory"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise HubError(f"downloading {where} from the Hub failed: {exc}") from None


def upload(directory: Path, repo_id: str, *, token: str | None = None, private: bool | None = None,
           commit_message: str = "Upload lung CT classifier package") -> str:
    """Create the repo if needed and upload the package directory as one commit; returns its sha."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model",
                                   commit_message=commit_message)
    except (HfHubHTTPError, OSError) as exc:
        raise HubError(f"uploading to Hub repo {repo_id!r} failed: {exc}") from None
    return commit.oid
