"""Downloads verified by their hash: `keras.utils.get_file` with one error line per failure.

Used by the fetch stage (datasets, ingest.sources) and by evaluate (InceptionV3 weights).
"""

from __future__ import annotations

import http.client
import urllib.error
from pathlib import Path

from dcgan.core.errors import UserError


def _reason(err: Exception) -> str:
    # get_file re-raises urllib's error as a bare Exception; the original is its context.
    cause = err.__context__ or err
    if isinstance(cause, urllib.error.HTTPError):
        return f"HTTP {cause.code} {cause.reason}"
    return str(getattr(cause, "reason", cause))


def download(url: str, file_hash: str, cache_dir: Path, subdir: str, owner: str = "fetch",
             fix: str = "check your network or set fetch.mirror",
             mismatch_fix: str = "If fetch.mirror is set, make it serve the original file",
             hash_name: str = "sha256", fname: str | None = None) -> Path:
    """Download `url` into cache_dir/subdir once, verified by its hash (sha256 or md5, as
    `keras.utils.get_file` tells them apart); later calls hit the cache.

    Args:
        owner: the param the error messages name (fetch, evaluate.inception).
        fix, mismatch_fix: what the user should do after a failed download or a bad hash.
        hash_name: how messages name the hash.
        fname: the cached file's name; default the URL's last part.

    Raises:
        UserError: the download failed, or the file's hash is wrong (that file is removed).
    """
    import keras  # imports TensorFlow (seconds): pay only when a download is needed

    fname = fname or url.rsplit("/", 1)[-1]
    target = Path(cache_dir) / subdir / fname
    # get_file silently falls back to /tmp/.keras when cache_dir is missing (not writable).
    Path(cache_dir).mkdir(parents=True, exist_ok=True)

    def failed(reason: object) -> UserError:
        return UserError(f"{owner}: could not download {fname} from {url} ({reason}); {fix}")

    try:
        path = keras.utils.get_file(fname, origin=url, file_hash=file_hash,
                                    cache_dir=str(cache_dir), cache_subdir=subdir)
    except ValueError as err:  # hash mismatch, or a URL urllib cannot parse
        target.unlink(missing_ok=True)  # get_file keeps a file that fails its check
        if "hash does not match" not in str(err):
            raise failed(err) from None
        raise UserError(
            f"{owner}: {fname} from {url} does not match {hash_name} {file_hash}; the bad file "
            f"was removed from the cache. {mismatch_fix}"
        ) from None
    except (OSError, http.client.HTTPException) as err:  # connection dropped mid-transfer
        raise failed(_reason(err)) from None
    except Exception as err:
        if type(err) is not Exception:  # only get_file's wrapped HTTPError/URLError
            raise
        raise failed(_reason(err)) from None
    return Path(path)
