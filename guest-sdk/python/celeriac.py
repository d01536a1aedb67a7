"""Celeriac SDK for Python task modules (built with componentize-py 0.25.1).

    from celeriac import task, Retry, log

    @task
    def add(a: int, b: int) -> int:
        return a + b

Tasks are plain functions registered with `@task` / `@task(name=...)`. JSON
args/kwargs are bound Python-style (messages match the Rust SDK); simple
annotations (str, int, float, bool, list, dict, X | None) are checked; the
return value is encoded with `json`. Raise Retry / Fatal / InvalidInput to pick
the failure kind; any other exception is fatal as `ExcType: message`.
componentize-py instantiates the class `WitWorld` found in the app module:
`celeriac build DIR` generates that module around DIR/app.py (or put
`from celeriac import WitWorld` in yours and run componentize-py directly).
Outside a component (plain CPython) host calls fall back to stderr/defaults.
"""
import inspect, json, sys, traceback, types, typing
from datetime import timedelta
from urllib.parse import urlsplit

try:  # the bindings exist only inside componentize-py
    import wit_world
    from wit_world.imports import context as _ctx
    from wit_world.imports.types import Failure as _Failure, FailureKind as _Kind
    from wit_world.imports import kv as _kv, store as _store
    from wit_world.imports import outgoing_handler as _out, poll as _poll, streams as _streams
    from wit_world.imports import http_types as _ht
    from componentize_py_types import Err as _Err
except ImportError:
    wit_world = None

# The app is imported at build time and the heap snapshotted; a component has
# no .py files at run time, so a module first imported while a task runs is
# "not found". These are stdlib modules that stdlib code imports lazily.
_PRELOAD = ("heapq", "bisect", "_strptime", "string", "textwrap", "base64", "datetime",
            *("encodings." + e for e in (
                "ascii", "latin_1", "utf_8_sig", "utf_16", "utf_16_le", "utf_16_be", "utf_32",
                "cp1252", "cp437", "unicode_escape", "raw_unicode_escape", "base64_codec",
                "hex_codec", "idna")))
if wit_world:
    for _m in _PRELOAD:
        try:
            __import__(_m)
        except ImportError:
            pass


def preload_lazy_imports(rounds: int = 10) -> int:
    """Import every stdlib module named by any import statement (at any depth)
    of the stdlib modules already loaded, to a fixpoint; call last, at build time
    (`build.sh --deep`). Costs ~+12 MB of component. Returns modules added."""
    import ast, os
    real = os.path.dirname(os.path.dirname(json.__file__))  # sources at build time
    frozen = getattr(sys, "_stdlib_dir", None) or real      # what frozen modules claim
    deny = {"tkinter", "idlelib", "turtle", "turtledemo", "pydoc", "test", "ensurepip",
            "venv", "antigravity", "this", "webbrowser", "_pyrepl", "pdb", "doctest", "unittest"}
    before, seen, failed = len(sys.modules), set(), set()
    for _ in range(rounds):
        wanted = set()
        for name, mod in list(sys.modules.items()):
            f = getattr(mod, "__file__", None) or ""
            if name in seen or not f.endswith(".py"):
                continue
            seen.add(name)
            f = real + f[len(frozen):] if f.startswith(frozen + "/") else f
            try:
                with open(f, encoding="utf-8") as fh:
                    tree = ast.parse(fh.read())
            except Exception:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    wanted.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    wanted.add(node.module)
        wanted = {n for n in wanted - failed if n not in sys.modules and n.split(".")[0] not in deny}
        if not wanted:
            break
        for n in sorted(wanted):
            try:
                __import__(n)
            except BaseException:
                failed.add(n)
    return len(sys.modules) - before


class TaskError(Exception):
    kind = "fatal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = str(message)


class Retry(TaskError):
    """Transient: retried later; `after` (seconds or timedelta) overrides the backoff."""
    kind = "retry"

    def __init__(self, message: str, after=None):
        super().__init__(message)
        self.after = after.total_seconds() if isinstance(after, timedelta) else after


class Fatal(TaskError):
    """Permanent: not retried."""


class InvalidInput(TaskError):
    """The arguments do not fit the task: not retried."""
    kind = "invalid-input"


_TASKS = {}  # name -> (function, parameters, type hints)


def task(fn=None, *, name=None):
    """`@task` or `@task(name="...")`; returns the function unchanged."""
    def register(f):
        n = name or f.__name__
        if n in _TASKS:
            raise ValueError(f"task `{n}` is registered twice")
        try:
            hints = typing.get_type_hints(f)
        except Exception:
            hints = {}
        _TASKS[n] = (f, list(inspect.signature(f).parameters.values()), hints)
        return f
    return register(fn) if fn is not None else register


class _Log:
    """log.info("x=%s", x): %-style arguments, like `logging`."""
    def _emit(self, level, msg, args):
        text = str(msg) % args if args else str(msg)
        if wit_world:
            _ctx.log(_ctx.Level[level.upper()], text)
        else:
            print(f"[{level}] {text}", file=sys.stderr)

    def trace(self, msg, *a): self._emit("trace", msg, a)
    def debug(self, msg, *a): self._emit("debug", msg, a)
    def info(self, msg, *a): self._emit("info", msg, a)
    def warn(self, msg, *a): self._emit("warn", msg, a)
    def error(self, msg, *a): self._emit("error", msg, a)
    warning = warn


log = _Log()


def task_info():
    """.id .module .name .retries .max_retries .soft_remaining_ms .hard_remaining_ms"""
    return _ctx.info() if wit_world else types.SimpleNamespace(
        id="local", module="local", name="", retries=0, max_retries=0,
        soft_remaining_ms=None, hard_remaining_ms=None)


def should_stop() -> bool:
    """True once the soft time limit has passed: wrap up and return."""
    return _ctx.should_stop() if wit_world else False


def progress(done: int, total: int) -> None:
    if wit_world:
        _ctx.progress(int(done), int(total))


# --- capabilities: what the signed manifest grants -------------------------

def config_get(key: str):
    """The worker's configuration value for `key` (None if it has none).
    Raises Fatal for a key the manifest does not grant (sign with --config)."""
    if not wit_world:
        return None
    try:
        return _store.get(key)
    except _Err as e:
        raise Fatal(getattr(e.value, "value", str(e.value))) from None


def _kv_call(fn, *args):
    try:
        return fn(*args)
    except _Err as e:
        err = e.value
        message = getattr(err, "value", str(err))
        if type(err).__name__.endswith("Unavailable"):
            raise Retry(message) from None
        raise Fatal(message) from None


def _ms(ttl):
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    return max(1, int(seconds * 1000))


def _bytes(value) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


class kv:
    """The module's key-value state (needs `celeriac sign --kv`). TTLs are
    seconds or timedelta. An unreachable store raises Retry; a missing grant
    or an oversized value, Fatal."""

    @staticmethod
    def get(key: str):
        return _kv_call(_kv.get, key)

    @staticmethod
    def get_str(key: str):
        v = _kv_call(_kv.get, key)
        return None if v is None else bytes(v).decode("utf-8")

    @staticmethod
    def set(key: str, value, ttl=None) -> None:
        _kv_call(_kv.set, key, _bytes(value), _ms(ttl))

    @staticmethod
    def set_if_absent(key: str, value, ttl=None) -> bool:
        return _kv_call(_kv.set_if_absent, key, _bytes(value), _ms(ttl))

    @staticmethod
    def delete(key: str) -> bool:
        return _kv_call(_kv.delete, key)

    @staticmethod
    def increment(key: str, delta: int = 1) -> int:
        return _kv_call(_kv.increment, key, int(delta))


class HttpError(Exception):
    """An HTTP request that got no response: the wasi:http error code says
    why (HttpRequestDenied: outside the grant or the worker's policy;
    DestinationIpProhibited: a private address; ...)."""


class HttpResponse:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)


def _code(e) -> str:
    value = getattr(e, "value", e)
    return type(value).__name__.replace("ErrorCode_", "") + (
        f"({value.value})" if getattr(value, "value", None) is not None else "")


def http_request(method: str, url: str, headers=None, body=None) -> HttpResponse:
    """Send one request through the host (wasi:http) and read the whole
    response. Raises HttpError when the host or the network gives none."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise HttpError(f"not an http(s) URL: {url!r}")
    fields = [(k.lower(), _bytes(v)) for k, v in (headers or {}).items()]
    data = _bytes(body) if body is not None else None
    if data is not None:
        fields.append(("content-length", str(len(data)).encode()))
    req = _ht.OutgoingRequest(_ht.Fields.from_list(fields))
    methods = {"GET": _ht.Method_Get(), "POST": _ht.Method_Post(), "PUT": _ht.Method_Put(),
               "DELETE": _ht.Method_Delete(), "HEAD": _ht.Method_Head(), "PATCH": _ht.Method_Patch()}
    req.set_method(methods.get(method.upper()) or _ht.Method_Other(method.upper()))
    req.set_scheme(_ht.Scheme_Https() if u.scheme == "https" else _ht.Scheme_Http())
    req.set_authority(u.netloc)
    req.set_path_with_query((u.path or "/") + (f"?{u.query}" if u.query else ""))
    out_body = req.body()
    try:
        future = _out.handle(req, None)
    except _Err as e:
        raise HttpError(_code(e)) from None
    if data is not None:
        with out_body.write() as stream:
            for i in range(0, len(data), 4096):
                stream.blocking_write_and_flush(data[i:i + 4096])
    _ht.OutgoingBody.finish(out_body, None)
    # Resources are dropped child first: the host refuses to drop a parent
    # that still has children.
    pollable = future.subscribe()
    while (result := future.get()) is None:
        _poll.poll([pollable])
    pollable.__exit__(None, None, None)
    future.__exit__(None, None, None)
    try:
        response = result.value.value
    except _Err as e:
        raise HttpError(_code(e)) from None
    status = response.status()
    resp_headers = {k: bytes(v).decode("latin-1") for k, v in response.headers().entries()}
    incoming = response.consume()
    chunks = []
    with incoming.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(65536))
            except _Err as e:
                if isinstance(e.value, _streams.StreamError_Closed):
                    break
                code = _ht.http_error_code(e.value.value)
                raise HttpError("reading the body failed: " + (_code(code) if code else "I/O error")) from None
    return HttpResponse(status, resp_headers, b"".join(chunks))


def http_get(url: str, headers=None) -> HttpResponse:
    return http_request("GET", url, headers)


_P = inspect.Parameter
_QUOTE_CHARS = 64


def _bounded(text) -> str:
    """At most 64 characters of an argument in a message, then `…`, as every
    SDK does: a 100 KB argument must not make a 100 KB failure message."""
    text = str(text)
    return text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "…"

_EXPECT = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
           list: "a sequence", dict: "a map"}


def _kind_of(v):  # serde's wording, so messages match the Rust SDK
    if v is None or isinstance(v, (list, dict)):
        return {type(None): "null", list: "sequence", dict: "map"}[type(v)]
    if isinstance(v, bool):
        return f"boolean `{str(v).lower()}`"
    if isinstance(v, (int, float)):
        return f"{'integer' if isinstance(v, int) else 'floating point'} `{v}`"
    return "string " + json.dumps(_bounded(v), ensure_ascii=False)


def _check(pname, value, hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return value
        hint = options[0] if len(options) == 1 else None
    base = typing.get_origin(hint) or hint
    if base not in _EXPECT:
        return value
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise InvalidInput(f"argument `{pname}`: invalid type: {_kind_of(value)}, expected {_EXPECT[base]}")
    if base is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"argument `{pname}`: lone surrogate in string") from None
    return value


_JSON_KIND = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
              list: "an array", dict: "an object"}


def _parse(text, what, want, tname):
    try:
        value = json.loads(text) if text.strip() else None
    except ValueError as e:
        raise InvalidInput(f"{what} is not valid JSON: {e}") from None
    if value is None:
        return want()
    if not isinstance(value, want):
        raise InvalidInput(f"{tname}: {what} must be a JSON {'array' if want is list else 'object'}, "
                           f"got {_JSON_KIND[type(value)]}")
    return value


def _bind(n, params, hints, args, kwargs):
    pos = [p for p in params if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
    var_args = any(p.kind is _P.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind is _P.VAR_KEYWORD for p in params)
    named = {p.name: p for p in params if p.kind in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)}
    if len(args) > len(pos) and not var_args:
        raise InvalidInput(f"{n}() takes {len(pos)} positional argument{'' if len(pos) == 1 else 's'}"
                           f" but {len(args)} were given")
    for key in kwargs:
        if key not in named and not var_kw:
            raise InvalidInput(f"{n}() got an unexpected keyword argument `{_bounded(key)}`")
        if key in named and named[key] in pos[:len(args)]:
            raise InvalidInput(f"{n}() got multiple values for argument `{_bounded(key)}`")
    out_args = [_check(p.name, v, hints.get(p.name)) for p, v in zip(pos, args)] + args[len(pos):]
    out_kw = {k: v for k, v in kwargs.items() if k not in named}  # into **kwargs
    for p in pos[len(args):] + [p for p in params if p.kind is _P.KEYWORD_ONLY]:
        if p.name in kwargs and p.name in named:
            out_kw[p.name] = _check(p.name, kwargs[p.name], hints.get(p.name))
        elif p.default is _P.empty:
            raise InvalidInput(f"{n}() missing required argument `{p.name}`")
    return out_args, out_kw


def dispatch(name: str, args: str = "[]", kwargs: str = "{}") -> str:
    """Run a task on JSON text and return JSON text; raises TaskError (native tests)."""
    if name not in _TASKS:
        raise InvalidInput(f"unknown task `{_bounded(name)}`; this module serves: {', '.join(_TASKS)}")
    fn, params, hints = _TASKS[name]
    a, kw = _bind(name, params, hints, _parse(args, "args", list, name), _parse(kwargs, "kwargs", dict, name))
    result = fn(*a, **kw)
    try:
        out = json.dumps(result, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        out.encode("utf-8")  # a lone surrogate cannot cross as a WIT string
    except UnicodeEncodeError:
        out = json.dumps(result, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise Fatal(f"could not encode the result as JSON: {e}") from None
    return out


def _failure(e: Exception):
    if isinstance(e, TaskError):
        kind, msg = e.kind, e.message
    else:
        kind, text = "fatal", str(e)
        if isinstance(e, ModuleNotFoundError):
            text += (" (only modules imported at build time exist at run time:"
                     f" add `import {e.name}` at the top of your task module)")
        msg = f"{type(e).__name__}: {text}" if text else type(e).__name__
        tb = e.__traceback__  # log the traceback without the SDK's own frames
        while tb is not None and tb.tb_frame.f_code.co_filename.endswith("celeriac.py"):
            tb = tb.tb_next
        log.error("%s", "".join(traceback.format_exception(type(e), e, tb)).rstrip())
    after = getattr(e, "after", None)
    after_ms = None if after is None else max(0, min(int(after * 1000), 2**64 - 1))
    return _Failure({"retry": _Kind.RETRY, "fatal": _Kind.FATAL,
                     "invalid-input": _Kind.INVALID_INPUT}[kind], msg, after_ms)


if wit_world:
    class WitWorld(wit_world.WitWorld):
        """The world's exports; componentize-py instantiates it once."""
        def tasks(self) -> list:
            return list(_TASKS)

        def call(self, name: str, args: str, kwargs: str) -> str:
            try:
                return dispatch(name, args, kwargs)
            except Exception as e:  # every failure becomes a typed WIT failure
                raise _Err(_failure(e)) from None
