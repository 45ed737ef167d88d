"""Bounded reading of the files the exporter is given: config, web config, keys, secrets.

Hostile files are refused with one line each, never a traceback or a hang: every file is read by
:func:`read_file` (regular files only, opened non-blocking, at most 4 MiB, 64 KiB for a secret),
YAML is parsed with libyaml when available and refused when nested over 100 deep or over 3 million
values with its aliases expanded. Every failure is a :class:`ConfigError` naming the file.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

import yaml

from exporter.errors import ConfigError

if TYPE_CHECKING:  # cryptography is imported where a key is read: ~7 MiB only webhooks need
    from cryptography.hazmat.primitives.asymmetric import rsa

T = TypeVar("T")

# Size caps of the files the exporter reads, checked with a bounded read.
MAX_CONFIG_BYTES: Final = 4 * 1024 * 1024  # the config, the web config, certificates and keys
MAX_TOKEN_BYTES: Final = 64 * 1024  # a token file
MAX_KEY_BYTES: Final = 64 * 1024  # a PEM public key (the webhook signing key)
#: Deepest nesting of mappings and lists a YAML file may have (a config needs 6).
MAX_YAML_DEPTH: Final = 100
#: Most values (scalars, mappings, lists) a YAML file may hold once its aliases are expanded.
MAX_YAML_NODES: Final = 3_000_000


def yaml_type(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    names |= {list: "a list", dict: "a mapping", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)


_FILE_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_file(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """The content of a regular file of at most ``limit`` bytes, read in one bounded read.

    Never blocks: the file is opened non-blocking and refused unless it is a regular file (a FIFO,
    a device such as ``/dev/zero`` or a directory is an error), so it is safe in a worker thread.
    Any failure is a :class:`ConfigError` ``"<what>: cannot read '<path>': <why>"``.
    """
    name = os.fspath(path)

    def fail(why: str) -> ConfigError:
        return ConfigError([f"{what}: cannot read {name!r}: {why}"])

    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        raise fail(err.strerror or str(err)) from None
    except ValueError:
        raise fail("the name contains a NUL character") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _FILE_KINDS if test(mode)), "a special file")
            raise fail(f"it is {kind}, not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    except OSError as err:
        raise fail(err.strerror or str(err)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise fail(f"larger than the limit of {_size(limit)}")
    return data


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n // 2**10} KiB"


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 text; a bad byte is named by line and offset, never shown (it may be a secret)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            [f"{where}: not UTF-8 text: invalid byte at line {line} (offset {err.start})"]
        ) from None


#: libyaml's loader when PyYAML was built with it (about 5 times faster), else the Python one.
YAML_LOADER: Final[type[yaml.SafeLoader] | type[yaml.CSafeLoader]] = (
    yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
)


def _check_shape(text: str, path: str | os.PathLike[str]) -> None:
    """Refuse YAML that is too deep or expands too much, before anything builds or walks it.

    libyaml's composer recurses in C and crashes the process on input ~100,000 deep; its event
    parser does not, so one pass over the events (~15% of a full load) counts the depth, and the
    size of every node with its aliases expanded: a 24 KB file of aliases of aliases costs
    validation millions of nodes. No file under :data:`MAX_CONFIG_BYTES` without aliases comes
    near :data:`MAX_YAML_NODES`.
    """
    open_nodes: list[list[Any]] = []  # per open mapping or list: [expanded size, anchor]
    sizes: dict[str, int] = {}  # expanded size of the node of each anchor
    for event in yaml.parse(text, Loader=YAML_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append([1, event.anchor])
            if len(open_nodes) > MAX_YAML_DEPTH:
                _shape_error(path, event, f"nested deeper than {MAX_YAML_DEPTH} levels")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            size, anchor = open_nodes.pop()
        elif isinstance(event, yaml.AliasEvent):
            if any(node[1] == event.anchor for node in open_nodes):
                _shape_error(path, event, f"alias *{event.anchor} is inside its own anchor")
            size, anchor = sizes.get(str(event.anchor), 1), None
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        if open_nodes:
            open_nodes[-1][0] += size
            if open_nodes[-1][0] > MAX_YAML_NODES:
                _shape_error(path, event, f"expands to more than {MAX_YAML_NODES} values")


def _shape_error(path: str | os.PathLike[str], event: Any, problem: str) -> None:
    mark = event.start_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    raise ConfigError([f"{path}: invalid YAML{where}: {problem}"])


def read_yaml(path: str | os.PathLike[str], what: str = "config file") -> Any:
    """Parse a YAML file of at most :data:`MAX_CONFIG_BYTES`.

    Every failure (unreadable, too large, not UTF-8, bad syntax, too deep) is one
    :class:`ConfigError` line naming the file and, when known, the place.
    """
    text = decode_text(read_file(path, MAX_CONFIG_BYTES, what), str(path))
    try:
        _check_shape(text, path)
        return yaml.load(text, Loader=YAML_LOADER)  # a safe loader
    except yaml.MarkedYAMLError as err:
        where = ""
        mark = err.problem_mark
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = err.problem or "syntax error"
        if "maximum nesting depth" in problem:  # newer libyaml stops deep input itself
            problem = f"nested deeper than {MAX_YAML_DEPTH} levels"
        raise ConfigError([f"{path}: invalid YAML{where}: {problem}"]) from None
    except yaml.reader.ReaderError as err:
        raise ConfigError(
            [f"{path}: invalid YAML at offset {err.position}: {err.reason}"]
        ) from None
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as err:
        # ValueError: a value the constructor cannot build (2024-13-45, a 5000-digit integer).
        problem = str(err).split("\n")[0] or type(err).__name__
        raise ConfigError([f"{path}: invalid YAML: {problem}"]) from None


def read_secret(
    key: str,
    *,
    path: str | None = None,
    env: str | None = None,
    environ: Mapping[str, str] | None = None,
    what: str = "secret",
) -> str:
    """A secret (token, password) from a file or an environment variable, stripped; ``key``
    names the config key in messages, which never hold the secret."""
    if path is not None:
        data = read_file(path, MAX_TOKEN_BYTES, key)
        secret = decode_text(data, f"{key}: {path!r}").strip()
        if not secret:
            raise ConfigError([f"{key}: {path!r} is empty"])
    else:
        source = os.environ if environ is None else environ
        secret = source.get(env or "", "").strip()
        if not secret:
            raise ConfigError([f"{key}: environment variable {env} is not set or empty"])
    if any(c.isspace() or not c.isprintable() for c in secret):
        raise ConfigError([f"{key}: the {what} contains whitespace or control characters"])
    return secret


def parse_public_key(pem: bytes, *, source: str = "public key") -> rsa.RSAPublicKey:
    """An RSA public key from PEM bytes; a :class:`ConfigError` naming ``source`` otherwise."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ConfigError([f"{source}: not a PEM public key ({err})"]) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError([f"{source}: a {type(key).__name__} key, RSA expected"])
    return key


def read_public_key(path: str, key: str) -> rsa.RSAPublicKey:
    """The RSA public key in the PEM file ``path`` (at most :data:`MAX_KEY_BYTES`, read like
    every file here); ``key`` names the config key in messages."""
    return parse_public_key(read_file(path, MAX_KEY_BYTES, key), source=f"{key}: {path!r}")


def read_ca_bundle(path: str, key: str) -> None:
    """Check that ``path`` holds PEM CA certificates a TLS client can load (at most
    :data:`MAX_CONFIG_BYTES`); ``key`` names the config key in messages."""
    text = decode_text(read_file(path, MAX_CONFIG_BYTES, key), f"{key}: {path!r}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError):
        raise ConfigError([f"{key}: {path!r} holds no usable PEM certificate"]) from None


async def off_loop(work: Callable[[], T]) -> T:
    """Run ``work`` in a daemon thread and wait for it without blocking the loop. A daemon
    thread, not the default executor: a read that hangs (a file that never ends) must never
    keep the process from exiting on SIGTERM."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = work()
        except BaseException as err:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, err)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="reload", daemon=True).start()
    return await future
