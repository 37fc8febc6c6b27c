"""Hugging Face Hub transport: fetch the files a load needs, publish a package directory.

huggingface_hub does the work (revisions, the standard cache, HF_HUB_OFFLINE, tokens
from the usual places); this module asks it for config.json first, then for exactly the
files that config lists and the load needs (never the SavedModel unless it is trusted),
and turns its failures into messages that say what was tried.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .format import CONFIG, PackageError, listed_files, parse_config

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""owner/name (fullmatch); huggingface_hub's validate_repo_id has the last word (no "..", "--", ".git")."""
HUB_FILES = frozenset({".gitattributes"})
"""Files the Hub adds to every repo; present in a snapshot, never part of a package."""


class HubError(RuntimeError):
    """A Hub download or upload failed; the message names the repo and the cause."""


def parse_repo_id(source: str) -> str | None:
    """'owner/name' or 'hf://owner/name' -> 'owner/name' when huggingface_hub accepts it too; anything else -> None."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id = source[len("hf://"):] if source.startswith("hf://") else source
    if REPO_ID.fullmatch(repo_id) is None:
        return None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id


def download(repo_id: str, *, revision: str | None = None, token: bool | str | None = None,
             cache_dir: str | Path | None = None, force_download: bool = False, local_files_only: bool = False,
             saved_model: bool = False) -> Path:
    """A snapshot folder of the repo in the Hub cache holding config.json and the files it lists:
    all but the SavedModel's, and those too with ``saved_model=True``.

    The options are huggingface_hub's own (``snapshot_download``), forwarded as they are.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    where = f"{repo_id}@{revision}" if revision else repo_id
    options = dict(repo_id=repo_id, repo_type="model", token=token, cache_dir=cache_dir,
                   force_download=force_download, local_files_only=local_files_only)
    with _errors(repo_id, revision, where):
        first = Path(snapshot_download(revision=revision, allow_patterns=[CONFIG], **options))
        if not (first / CONFIG).is_file():
            raise PackageError(f"Hub repo {where} is not a model package ({CONFIG} is missing)")
        config = parse_config(first / CONFIG)
        # The first call resolved the revision: fetch the rest from that same commit.
        wanted = listed_files(config, saved_model=saved_model)
        try:
            return Path(snapshot_download(revision=first.name, allow_patterns=wanted, **options))
        except LocalEntryNotFoundError:
            raise _Incomplete([name for name in wanted if not (first / name).is_file()]) from None


class _Incomplete(Exception):
    """The cached snapshot has config.json but not all the files it lists that this load needs."""


_LACKS = ("the Hub is unreachable, HF_HUB_OFFLINE is set or local_files_only=True, and the cached copy lacks "
          "files this load needs (the SavedModel is fetched only by trust_saved_model=True loads); connect once "
          "to complete it")


@contextlib.contextmanager
def _errors(repo_id: str, revision: str | None, where: str) -> Iterator[None]:
    from huggingface_hub.errors import (
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except RepositoryNotFoundError:
        raise HubError(
            f"Hub repo {repo_id!r} not found (or private: log in with `hf auth login`, set HF_TOKEN or pass token=)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"Hub repo {repo_id!r} has no revision {revision!r}") from None
    except IncompleteSnapshotError as exc:
        raise HubError(f"cannot fetch {where}: {_LACKS} ({exc})") from None
    except _Incomplete as exc:
        raise HubError(f"cannot fetch {where}: {_LACKS} ({', '.join(exc.args[0])})") from None
    except LocalEntryNotFoundError:
        raise HubError(
            f"cannot fetch {where}: the Hub is unreachable, HF_HUB_OFFLINE is set or local_files_only=True, and "
            "the local cache has no copy of it; connect once, or pass a local package directory"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise HubError(f"downloading {where} from the Hub failed: {exc}") from None


def upload(directory: Path, repo_id: str, *, token: str | None = None, private: bool | None = None,
           commit_message: str = "Upload lung CT classifier package", branch: str | None = None,
           create_pr: bool = False) -> CommitInfo:
    """Create the repo if needed and upload the package directory as one commit, as ModelHubMixin.push_to_hub does.

    ``branch`` is created from main if it does not exist yet (or names a pull request's ``refs/pr/N``
    to add to it); ``create_pr`` opens a pull request against main instead of committing to it.
    Returns huggingface_hub's CommitInfo: ``.oid`` is the commit sha, ``.pr_url``/``.pr_num`` name the
    pull request.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if create_pr and branch is not None:
        raise ValueError(f"create_pr opens a pull request against main (huggingface_hub's upload_folder cannot "
                         f"target another branch): pass branch={branch!r} or create_pr=True, not both")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if branch is not None and not branch.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=branch, repo_type="model", exist_ok=True)
        return api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message, revision=branch, create_pr=create_pr)
    except (HfHubHTTPError, OSError) as exc:
        where = f"{repo_id}@{branch}" if branch else repo_id
        raise HubError(f"uploading to Hub repo {where!r} failed: {exc}") from None
