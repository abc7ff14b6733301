"""Scan a folder of images: class subfolders become labels, a flat folder is unlabelled."""

from __future__ import annotations

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


def visible_files(folder: Path) -> list[Path]:
    # Hidden files and folders (.DS_Store, .git/, editor swap files) are never data.
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def scan_image_folder(root: Path) -> ImageFolder:
    """List the image files under `root` and their labels; nothing is opened here.

    Classes are the visible subfolders holding at least one image file, in sorted order; images
    may sit at any depth inside a class folder.
    """
    rejected: list[dict[str, str]] = []
    candidates: dict[str, list[str]] = {}  # class name ("" for the root itself) -> image files
    for path in visible_files(root):
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
