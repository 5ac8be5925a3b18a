"""The manifest: fetch's record of a folder dataset (data/raw/manifest.json).

For `fetch.dataset: folder` the fetch stage copies no image: it writes the listing of
`imagefiles.list_images` (the source, its kind, image names, labels, classes) and the
images' `content_md5`. DVC hashes this small file, so preprocess reruns exactly when an
image, a name or a label changes; preprocess reads the images in place through it.
"""

from __future__ import annotations

import json
from pathlib import Path

from dcgan.core.errors import UserError
from dcgan.core.outputs import atomic_path
from dcgan.ingest.imagefiles import KINDS, Listing

_RERUN = "rerun the fetch stage"


def write_manifest(listing: Listing, md5: str, path: Path) -> None:
    """Write the listing and its md5 as JSON, atomically (read back by `read_manifest`)."""
    obj = {"source": listing.source, "kind": listing.kind, "md5": md5,
           "classes": list(listing.classes), "count": len(listing.names),
           "names": list(listing.names), "labels": list(listing.labels)}
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(obj) + "\n")


def read_manifest(path: Path) -> tuple[Listing, str]:
    """Read a manifest written by `write_manifest`.

    Returns:
        (listing, md5).

    Raises:
        UserError: the file is missing, not JSON, or not a well-formed manifest.
    """
    try:
        obj = json.loads(Path(path).read_text())
        reason = _manifest_problem(obj)
    except FileNotFoundError:
        reason = "file does not exist"
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError included
        reason = f"unreadable: {err}"
    if reason:
        raise UserError(f"{path}: not a fetch manifest ({reason}); {_RERUN}")
    listing = Listing(obj["source"], obj["kind"], tuple(obj["names"]), tuple(obj["labels"]),
                      tuple(obj["classes"]))
    return listing, obj["md5"]


def _manifest_problem(obj: object) -> str | None:
    """What is wrong with a parsed manifest, or None."""
    types = {"source": str, "kind": str, "md5": str, "classes": list, "count": int,
             "names": list, "labels": list}
    if not isinstance(obj, dict) or set(obj) != set(types):
        return f"keys must be {', '.join(types)}"
    if bad := [k for k, t in types.items() if not isinstance(obj[k], t)]:
        return f"wrong type for {', '.join(bad)}"
    names, labels, classes = obj["names"], obj["labels"], obj["classes"]
    if obj["kind"] not in KINDS:
        return f"kind {obj['kind']!r} is not one of {', '.join(KINDS)}"
    if len(obj["md5"]) != 32 or obj["md5"].strip("0123456789abcdef"):
        return "md5 is not 32 hex digits"
    if not obj["count"] == len(names) == len(labels):
        return f"count {obj['count']}, {len(names)} names, {len(labels)} labels"
    if not all(isinstance(n, str) for n in names + classes):
        return "names and classes must be strings"
    low = 0 if classes else -1
    if not all(type(y) is int and low <= y < len(classes) for y in labels):
        return f"labels must be integers in [{low}, {len(classes)})"
    return None
