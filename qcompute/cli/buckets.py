"""``qcompute bucket ls | put | get | sync | rm``, through the SDK's :class:`~qcompute.Bucket`.

A remote place is written ``BUCKET`` or ``BUCKET/KEY``; a ``KEY`` ending in ``/`` is a folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from ._common import (
    CliError,
    ExitCode,
    State,
    complete_bucket,
    emit,
    output_option,
    pass_state,
    print_table,
    progress_option,
    want_progress,
    when,
)


def _split(remote: str) -> tuple[str, str]:
    """``"bucket/a/b"`` → ``("bucket", "a/b")``."""
    name, _, key = remote.partition("/")
    if not name:
        raise CliError(f"no bucket name in {remote!r}", ExitCode.USAGE)
    return name, key


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


@click.group()
def bucket() -> None:
    """List, upload, download, sync and remove files in buckets."""


@bucket.command("ls")
@click.argument("name", required=False, metavar="[BUCKET]", shell_complete=complete_bucket)
@click.argument("prefix", required=False, default="")
@output_option
@pass_state
def ls(state: State, name: Optional[str], prefix: str, output: str) -> None:
    """List buckets, or the objects of BUCKET (under PREFIX).

    JSON: [{"name"}] for buckets; [{"key", "size", "etag", "lastModified"}] for objects."""
    conn = state.connection()
    if name is None:
        names = [{"name": b.name} for b in conn.buckets()]
        emit(output, names, lambda rows: [click.echo(r["name"]) for r in rows])
        return
    name, key = _split(name)
    objects = conn.retrieve_bucket(name).directory(key + prefix)
    docs = [{"key": o.key, "size": o.size, "etag": o.etag,
             "lastModified": o.last_modified.isoformat() if o.last_modified else None}
            for o in objects]
    emit(output, docs, lambda rows: print_table(
        ("SIZE", "MODIFIED", "KEY"),
        ((_size(o.size), when(o.last_modified), o.key) for o in objects)))


@bucket.command("put")
@click.argument("local", type=click.Path(exists=True, path_type=Path))
@click.argument("remote", metavar="BUCKET[/KEY]", shell_complete=complete_bucket)
@progress_option
@pass_state
def put(state: State, local: Path, remote: str, progress: Optional[bool]) -> None:
    """Upload a file or a directory (the bucket is created if needed).

    A file goes to KEY (default: its name; a KEY ending in / gets its name appended); a
    directory's files go under the folder KEY, at their relative paths."""
    name, key = _split(remote)
    target = state.connection().retrieve_or_create_bucket(name)
    shown = want_progress(progress)
    if local.is_dir():
        keys = target.add_directory(local, key or None, progress=shown)
        click.echo(f"uploaded {len(keys)} file(s) to {name}/{key}")
    else:
        written = target.add_file(local, key or None, progress=shown)
        click.echo(f"uploaded {name}/{written}")


@bucket.command("get")
@click.argument("remote", metavar="BUCKET[/KEY]", shell_complete=complete_bucket)
@click.argument("local", type=click.Path(path_type=Path), default=".")
@progress_option
@pass_state
def get(state: State, remote: str, local: Path, progress: Optional[bool]) -> None:
    """Download an object, a folder (KEY ending in /) or a whole bucket (no KEY) to LOCAL.

    Files already there with the same content are not downloaded again."""
    name, key = _split(remote)
    source = state.connection().retrieve_bucket(name)
    shown = want_progress(progress)
    if not key:
        paths = source.get_all_files(local, progress=shown)
    elif key.endswith("/"):
        paths = source.sync_remote_to_local(local, key, progress=shown)
    else:
        paths = [source.get_file(key, local, progress=shown)]
    click.echo(f"{len(paths)} file(s) in {local}")


@bucket.command("sync")
@click.argument("local", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("remote", metavar="BUCKET[/PREFIX]", shell_complete=complete_bucket)
@click.option("--delete", is_flag=True,
              help="Also delete the objects under PREFIX that have no local file (mirror).")
@progress_option
@pass_state
def sync(state: State, local: Path, remote: str, delete: bool, progress: Optional[bool]) -> None:
    """Upload what is missing or different from the directory LOCAL to the bucket (or its
    folder PREFIX); the bucket is created if needed. Unchanged files are not sent again."""
    name, key = _split(remote)
    target = state.connection().retrieve_or_create_bucket(name)
    target.sync_directory(local, remote=key or None, progress=want_progress(progress),
                          delete=delete)
    click.echo(f"{name}/{key} is in sync with {local}" + (" (mirrored)" if delete else ""))


@bucket.command("rm")
@click.argument("remotes", nargs=-1, required=True, metavar="BUCKET[/KEY]...",
                shell_complete=complete_bucket)
@click.option("-r", "--recursive", is_flag=True,
              help="Remove a whole folder (KEY ending in /) or a whole bucket (no KEY).")
@pass_state
def rm(state: State, remotes: tuple[str, ...], recursive: bool) -> None:
    """Remove objects; with -r, folders or whole buckets."""
    conn = state.connection()
    for remote in remotes:
        name, key = _split(remote)
        target: Any = conn.retrieve_bucket(name)
        if key and not key.endswith("/"):
            target.delete_file(key)
        elif not recursive:
            raise CliError(f"{remote} is a {'folder' if key else 'bucket'}: "
                           "add -r to remove it and everything in it", ExitCode.USAGE)
        elif key:
            target.sync_files({}, remote=key)  # a folder holding exactly nothing
        else:
            target.delete()
        click.echo(f"removed {remote}")
