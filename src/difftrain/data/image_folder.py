"""Scan a folder of images: class subfolders become labels, a flat folder is unlabelled."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})


@dataclass(frozen=True)
class ImageFolder:
    """What a scan found; paths are relative to `root`, in POSIX form, sorted."""

    root: Path
    files: list[str]
    labels: list[int] | None  # one per file; None for a flat folder
    class_names: list[str] | None
    rejected: list[dict[str, str]]  # {"path", "reason"} for files that are not images


def is_folder_name(name: str) -> bool:
    """Whether `name` can name a class folder: one visible path component (no separator, not '.' or '..')."""
    return bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0\n")


def visible_files(folder: Path, rejected: list[dict[str, str]], root: Path | None = None) -> list[Path]:
    """The files under `folder`, sorted; hidden files and folders (.DS_Store, .git/, editor swap files) are never
    data. A link is read only when it points to a file inside `root` (default `folder`): a link out of it, to a folder
    or to nothing goes to `rejected` (paths relative to `root`) and is never opened."""
    root = root or folder
    inside = root.resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):  # (followlinks=False: a linked folder is listed, not entered)
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in [d for d in dirnames if (here / d).is_symlink()]:
            dirnames.remove(name)
            rejected.append({"path": (here / name).relative_to(root).as_posix(),
                             "reason": "a link to a folder, not followed: copy the folder in, or link its files"})
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = here / name
            if path.is_symlink():
                target = path.resolve()
                reason = ("a link to nothing (broken)" if not target.exists()
                          else "a link to a file outside the source folder, not followed" if not target.is_relative_to(inside)
                          else None)
                if reason:
                    rejected.append({"path": path.relative_to(root).as_posix(), "reason": reason})
                    continue
            found.append(path)
    return sorted(found)


def scan_image_folder(root: Path) -> ImageFolder:
    """List the image files under `root` and their labels; nothing is opened here.

    Classes are the visible subfolders holding at least one image file, in sorted order; images
    may sit at any depth inside a class folder.
    """
    rejected: list[dict[str, str]] = []
    candidates: dict[str, list[str]] = {}  # class name ("" for the root itself) -> image files
    for path in visible_files(root, rejected):
        rel = path.relative_to(root)
        suffix = path.suffix.lower()
        if suffix not in IMAGE_EXTENSIONS:
            rejected.append(
                {"path": rel.as_posix(), "reason": f"unsupported file type {suffix or '(no extension)'}"}
            )
            continue
        candidates.setdefault(rel.parts[0] if len(rel.parts) > 1 else "", []).append(rel.as_posix())

    loose = candidates.pop("", [])
    if not candidates:
        return ImageFolder(root, loose, None, None, rejected)
    rejected += [
        {"path": f, "reason": "outside the class subfolders (the folder has class subfolders)"} for f in loose
    ]
    class_names = sorted(candidates)
    files = [f for name in class_names for f in candidates[name]]
    labels = [label for label, name in enumerate(class_names) for _ in candidates[name]]
    return ImageFolder(root, files, labels, class_names, sorted(rejected, key=lambda r: r["path"]))
