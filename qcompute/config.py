"""Client settings: one table, resolved in a fixed order into a frozen :class:`Config`.

Each setting is looked up, first hit wins, in:

1. the keyword argument given to :class:`~qcompute.Connection` (``None`` means "not given");
2. ``fileconf``: a path to an INI file, or a dict with the official SDK's keys
   (``cluster_url``, ``client_auth``/``client_token``, ``storage_url``, ``cluster_timeout``,
   ``cluster_unsafe`` ...);
3. the environment: ``QCOMPUTE_*`` names, then the ``QARNOT_*`` names;
4. the INI file named by ``$QCOMPUTE_CONFIG``, else the default file
   ``platformdirs.user_config_dir("qcompute")/qcompute.conf`` (read only if it exists);
5. the default of the table.

A named profile (``profile=NAME``, else ``$QCOMPUTE_PROFILE``) is the ``[profile NAME]``
section of the INI file (``fileconf`` when it is a path, else the file of step 4). Its keys are
the setting names (``cluster_url``, ``client_token`` ...). It comes right after ``fileconf``,
before the environment, and replaces the plain sections: a profile is complete on its own, so
a key it lacks never falls back to another cluster's ``[client] token``. A missing profile is a
:class:`ConfigError` naming the profiles that exist.

Unknown sections and keys are errors too, with a did-you-mean (a typo must not silently leave
the default file's token in use).

The INI format is Qarnot's::

    [cluster]
    url = http://127.0.0.1:8801
    timeout = 30
    unsafe = false
    custom_certificate = /path/to/ca.pem
    [client]
    token = ...            ; "auth" is accepted as a deprecated alias
    [storage]
    url = http://127.0.0.1:18333
    unsafe = false
    custom_certificate = /path/to/ca.pem

Reading the configuration reads files and the environment; nothing is read at import time.
"""
from __future__ import annotations

import configparser
import dataclasses
import difflib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from .exceptions import ConfigError

__all__ = ["Config", "load_config", "default_config_path", "DEFAULT_CLUSTER_URL",
           "PROFILE_PREFIX"]

logger = logging.getLogger(__name__)

DEFAULT_CLUSTER_URL = "http://127.0.0.1:8801"  # the embedded `qcompute server`

FileConf = Union[str, "os.PathLike[str]", Mapping[str, Any], None]


def default_config_path() -> Path:
    """The default config file: ``<user config dir>/qcompute/qcompute.conf``."""
    import platformdirs

    return Path(platformdirs.user_config_dir("qcompute")) / "qcompute.conf"


def _parse_bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_url(text: Any) -> str:
    url = str(text).strip().rstrip("/")
    if "://" not in url:
        raise ValueError(f"not a URL (no scheme): {text!r}")
    return url


def _parse_positive(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(text: Any) -> Any:
        value = kind(str(text).strip()) if isinstance(text, str) else kind(text)
        if value <= 0:
            raise ValueError(f"must be > 0, got {text!r}")
        return value

    return parse


def _parse_count(text: Any) -> int:
    value = int(str(text).strip()) if isinstance(text, str) else int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return value


def _parse_str(text: Any) -> str:
    return str(text).strip()


@dataclass(frozen=True)
class _Setting:
    name: str
    section: Optional[str]  # INI section, None = not in the file
    keys: tuple[str, ...]  # INI keys, first is the preferred one, the others deprecated aliases
    env: tuple[str, ...]
    parse: Callable[[Any], Any]
    default: Any
    dict_keys: tuple[str, ...] = ()  # extra keys accepted in a dict fileconf


_SETTINGS: tuple[_Setting, ...] = (
    _Setting("cluster_url", "cluster", ("url",), ("QCOMPUTE_CLUSTER_URL", "QARNOT_CLUSTER_URL"),
             _parse_url, DEFAULT_CLUSTER_URL),
    _Setting("client_token", "client", ("token", "auth"),
             ("QCOMPUTE_CLIENT_TOKEN", "QARNOT_CLIENT_TOKEN"), _parse_str, None,
             dict_keys=("client_auth",)),
    _Setting("cluster_timeout", "cluster", ("timeout",),
             ("QCOMPUTE_CLUSTER_TIMEOUT", "QARNOT_CLUSTER_TIMEOUT"), _parse_positive(float), 30.0),
    _Setting("cluster_connect_timeout", "cluster", ("connect_timeout",),
             ("QCOMPUTE_CLUSTER_CONNECT_TIMEOUT",), _parse_positive(float), 5.0),
    _Setting("cluster_unsafe", "cluster", ("unsafe",),
             ("QCOMPUTE_CLUSTER_UNSAFE", "QARNOT_CLUSTER_UNSAFE"), _parse_bool, False),
    _Setting("cluster_custom_certificate", "cluster", ("custom_certificate",),
             ("QCOMPUTE_CLUSTER_CUSTOM_CERTIFICATE",), _parse_str, None),
    _Setting("storage_url", "storage", ("url",), ("QCOMPUTE_STORAGE_URL", "QARNOT_STORAGE_URL"),
             _parse_url, None),
    _Setting("storage_unsafe", "storage", ("unsafe",),
             ("QCOMPUTE_STORAGE_UNSAFE", "QARNOT_STORAGE_UNSAFE"), _parse_bool, False),
    _Setting("storage_custom_certificate", "storage", ("custom_certificate",),
             ("QCOMPUTE_STORAGE_CUSTOM_CERTIFICATE",), _parse_str, None),
    _Setting("retry_count", "client", ("retry_count",), ("QCOMPUTE_RETRY_COUNT",),
             _parse_count, 5),
    _Setting("retry_wait", "client", ("retry_wait",), ("QCOMPUTE_RETRY_WAIT",),
             _parse_positive(float), 1.0),
)
_BY_NAME = {s.name: s for s in _SETTINGS}
CONFIG_ENV = "QCOMPUTE_CONFIG"
PROFILE_ENV = "QCOMPUTE_PROFILE"
PROFILE_PREFIX = "profile "  # [profile NAME]
# The plain sections and their keys (deprecated aliases included).
_SECTION_KEYS: dict[str, set[str]] = {}
for _s in _SETTINGS:
    if _s.section is not None:
        _SECTION_KEYS.setdefault(_s.section, set()).update(_s.keys)


@dataclass(frozen=True)
class Config:
    """Resolved client settings. ``repr()`` masks the token."""

    cluster_url: str
    client_token: str = dataclasses.field(repr=False)
    cluster_timeout: float = 30.0
    cluster_connect_timeout: float = 5.0
    cluster_unsafe: bool = False
    cluster_custom_certificate: Optional[str] = None
    storage_url: Optional[str] = None
    storage_unsafe: bool = False
    storage_custom_certificate: Optional[str] = None
    retry_count: int = 5
    retry_wait: float = 1.0

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr
        )
        return f"Config({shown}, client_token={_mask(self.client_token)!r})"

    @property
    def cluster_verify(self) -> Union[bool, str]:
        """The ``verify`` value for the API: False, a CA bundle path, or True."""
        return _verify(self.cluster_unsafe, self.cluster_custom_certificate)

    @property
    def storage_verify(self) -> Union[bool, str]:
        """The ``verify`` value for S3: False, a CA bundle path, or True."""
        return _verify(self.storage_unsafe, self.storage_custom_certificate)


def _verify(unsafe: bool, certificate: Optional[str]) -> Union[bool, str]:
    if unsafe:
        return False
    return certificate or True


def _mask(token: str) -> str:
    return "***" if len(token) <= 8 else f"{token[:3]}***"


class _Layer:
    """One place settings come from: raw values by setting name, and where each came from."""

    def __init__(
        self, label: str, values: Mapping[str, Any], sources: Optional[Mapping[str, str]] = None
    ) -> None:
        self.label = label
        self.values = values
        self.sources = sources or {}

    def lookup(self, setting: _Setting) -> tuple[Any, str]:
        return self.values.get(setting.name), self.sources.get(setting.name, self.label)


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_ini(path: Path) -> configparser.ConfigParser:
    """Parse an INI file and refuse unknown sections and keys (``[DEFAULT]`` included)."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, configparser.Error) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    for section in parser.sections():
        if section.startswith(PROFILE_PREFIX):
            known = set(_BY_NAME)
        elif section in _SECTION_KEYS:
            known = _SECTION_KEYS[section]
        else:
            sections = [*_SECTION_KEYS, f"{PROFILE_PREFIX}NAME"]
            raise ConfigError(f"{path}: unknown section [{section}]"
                              f"{_did_you_mean(section, sections)}; known: "
                              + ", ".join(f"[{name}]" for name in sections))
        for key in parser.options(section):
            if key not in known:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]"
                                  f"{_did_you_mean(key, known)}; known: "
                                  + ", ".join(sorted(known)))
    return parser


def profile_names(parser: configparser.ConfigParser) -> list[str]:
    """The names of the ``[profile NAME]`` sections."""
    return [s[len(PROFILE_PREFIX):].strip() for s in parser.sections()
            if s.startswith(PROFILE_PREFIX)]


def _ini_layer(path: Path, label: str) -> _Layer:
    """The plain ``[cluster]``/``[client]``/``[storage]`` sections of a file."""
    parser = _read_ini(path)
    values: dict[str, Any] = {}
    for setting in _SETTINGS:
        if setting.section is None or not parser.has_section(setting.section):
            continue
        for position, key in enumerate(setting.keys):
            if parser.has_option(setting.section, key):
                if position:
                    warnings.warn(
                        f"{path}: [{setting.section}] {key} is deprecated, "
                        f"use {setting.keys[0]}",
                        DeprecationWarning,
                        stacklevel=4,
                    )
                values[setting.name] = parser.get(setting.section, key)
                break
    return _Layer(f"{label} {path}", values)


def _profile_layer(path: Optional[Path], label: str, name: str) -> _Layer:
    """The ``[profile NAME]`` section of a file, which must exist."""
    if path is None or not path.is_file():
        raise ConfigError(f"no profile {name!r}: {label} {path} does not exist "
                          "(qcompute login URL --profile NAME writes one)")
    parser = _read_ini(path)
    section = f"{PROFILE_PREFIX}{name}"
    if not parser.has_section(section):
        names = profile_names(parser)
        listed = ", ".join(names) if names else "none"
        raise ConfigError(f"no profile {name!r} in {label} {path}"
                          f"{_did_you_mean(name, names)}; its profiles: {listed}")
    return _Layer(f"[{section}] of {label} {path}", dict(parser.items(section)))


def _dict_layer(conf: Mapping[str, Any]) -> _Layer:
    aliases = {alias: s.name for s in _SETTINGS for alias in s.dict_keys}
    values: dict[str, Any] = {}
    for key, value in conf.items():
        name = aliases.get(key, key)
        if name not in _BY_NAME:
            raise ConfigError(f"unknown setting {key!r} in the fileconf dict")
        if value is not None:
            values[name] = value
    return _Layer("the fileconf dict", values)


def _env_layer(environ: Mapping[str, str]) -> _Layer:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in _SETTINGS:
        for var in setting.env:
            if environ.get(var, "") != "":
                values[setting.name] = environ[var]
                sources[setting.name] = f"${var}"
                break
    return _Layer("the environment", values, sources)


def _where(setting: _Setting, layers: list[_Layer]) -> str:
    """Every place a setting was looked for, for error messages."""
    places = [f"the {setting.name} argument"]
    for layer in layers[1:]:
        if layer.label == "the environment":
            places.append("environment variables " + ", ".join(f"${v}" for v in setting.env))
        elif layer.label == "the fileconf dict":
            keys = (setting.name,) + setting.dict_keys
            places.append("the fileconf dict keys " + ", ".join(repr(k) for k in keys))
        elif layer.label.startswith(f"[{PROFILE_PREFIX}"):
            places.append(f"{setting.name} in {layer.label}")
        else:
            places.append(f"[{setting.section}] {setting.keys[0]} in {layer.label}")
    return "; ".join(places)


def _file_of(environ: Mapping[str, str]) -> tuple[Path, str]:
    """The INI file of step 4: ``$QCOMPUTE_CONFIG``, else the default file."""
    named = environ.get(CONFIG_ENV, "")
    if named:
        return Path(named), f"${CONFIG_ENV}"
    return default_config_path(), "the default config file"


def load_config(
    fileconf: FileConf = None,
    environ: Optional[Mapping[str, str]] = None,
    profile: Optional[str] = None,
    **arguments: Any,
) -> Config:
    """Resolve every setting (see the module docstring for the order).

    Args:
        fileconf: an INI file path or a dict of settings.
        environ: the environment to read (default: ``os.environ``).
        profile: the ``[profile NAME]`` section to use (default: ``$QCOMPUTE_PROFILE``, else
            the plain sections).
        **arguments: explicit values, named as the :class:`Config` fields; ``None`` = not given.

    Returns:
        The frozen configuration.

    Raises:
        ConfigError: unknown argument, unreadable file, unknown section or key, missing
            profile, invalid value, or no token anywhere.
    """
    environ = os.environ if environ is None else environ
    unknown = set(arguments) - set(_BY_NAME)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    layers = [_Layer("the arguments", {k: v for k, v in arguments.items() if v is not None})]
    if isinstance(fileconf, Mapping):
        layers.append(_dict_layer(fileconf))
    profile = profile or environ.get(PROFILE_ENV) or None
    if profile is not None:
        if fileconf is not None and not isinstance(fileconf, Mapping):
            layers.append(_profile_layer(Path(fileconf), "the config file", profile))
        else:
            path, label = _file_of(environ)
            layers.append(_profile_layer(path, label, profile))
        layers.append(_env_layer(environ))
    else:
        if fileconf is not None and not isinstance(fileconf, Mapping):
            layers.append(_ini_layer(Path(fileconf), "the config file"))
        layers.append(_env_layer(environ))
        path, label = _file_of(environ)
        if path.is_file() or label != "the default config file":
            layers.append(_ini_layer(path, label))
        else:
            layers.append(_Layer(f"{label} {path}", {}))

    resolved: dict[str, Any] = {}
    for setting in _SETTINGS:
        value = setting.default
        for layer in layers:
            raw, label = layer.lookup(setting)
            if raw is None:
                continue
            try:
                value = setting.parse(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"invalid {setting.name} from {label}: {exc}") from exc
            logger.debug("setting %s taken from %s", setting.name, label)
            break
        resolved[setting.name] = value
    if not resolved["client_token"]:
        raise ConfigError(
            "no API token configured; looked in: " + _where(_BY_NAME["client_token"], layers)
        )
    return Config(**resolved)
