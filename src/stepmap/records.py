"""Record classes for the run path: the part of :mod:`dataclasses` stepmap uses, built
without compiling code.

``@dataclass`` (and ``@dataclass(frozen=True)``, ``@dataclass(order=True)``), :func:`field`,
:func:`fields`, :func:`asdict` and :func:`replace` behave as their dataclasses namesakes for
the classes on a run's path (config, job, mapper, results, verify, reducer, task, drivers).
Why not dataclasses itself: a `stepmap run` defines about twenty of them before it computes
anything, and dataclasses compiles each generated method with ``exec`` (0.3-0.7 ms a class
here) after importing ``inspect``, ``ast``, ``dis`` and ``tokenize`` (about 5 ms): together
about a sixth of the whole of `stepmap run s3keys --size 1024` (see the README's fixed-cost
benchmark). Here ``__init__``, ``__eq__``, ``__repr__`` and the order methods are shared
functions that read the class's field list, so defining a class costs microseconds; building
an instance costs a little more than a dataclass's (a loop instead of straight-line code),
which the run path does a few times per task, not per item.

Type checkers see dataclass semantics through ``typing.dataclass_transform`` (PEP 681);
typing itself is not imported at run time.

Not supported (not used here): ``InitVar``, ``ClassVar`` fields, ``kw_only``, ``slots``,
``repr=False`` or ``init=False`` fields, ``unsafe_hash``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # the constant type checkers treat as true; typing costs a run 2 ms
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar, dataclass_transform
    T = TypeVar("T")
else:
    def dataclass_transform(**_):
        return lambda decorator: decorator

_MISSING = object()
_FIELDS = "__record_fields__"


class Field:
    """One field of a record: its name, default or default factory, and whether it takes
    part in ``==``, ordering and hashing."""

    __slots__ = ("name", "default", "default_factory", "compare")

    def __init__(self, default: object = _MISSING, default_factory: object = _MISSING,
                 compare: bool = True):
        if default is not _MISSING and default_factory is not _MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.default, self.default_factory, self.compare = default, default_factory, compare

    def __repr__(self) -> str:
        return f"Field(name={self.name!r})"


def field(*, default: Any = _MISSING, default_factory: Any = _MISSING,
          compare: bool = True) -> Any:
    return Field(default, default_factory, compare)


@dataclass_transform(field_specifiers=(field, Field))
def dataclass(cls: Any = None, /, *, frozen: bool = False, order: bool = False) -> Any:
    """Make ``cls`` a record class: its annotated class attributes are its fields, in order."""
    def wrap(cls: Any) -> Any:
        return _build(cls, frozen, order)
    return wrap if cls is None else wrap(cls)


def _build(cls: Any, frozen: bool, order: bool) -> Any:
    inherited: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in getattr(base, _FIELDS, ()):
            inherited[f.name] = f
    for name in cls.__dict__.get("__annotations__", {}):
        value = cls.__dict__.get(name, _MISSING)
        f = value if isinstance(value, Field) else Field(default=value)
        f.name = name
        if isinstance(value, Field):  # the class keeps a plain default, as dataclasses does
            if f.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        inherited.pop(name, None)
        inherited[name] = f
    all_fields = tuple(inherited.values())
    seen_default = False
    for f in all_fields:
        has_default = f.default is not _MISSING or f.default_factory is not _MISSING
        if seen_default and not has_default:
            raise TypeError(f"non-default argument {f.name!r} follows default argument")
        seen_default = seen_default or has_default
    setattr(cls, _FIELDS, all_fields)
    own = cls.__dict__
    # as dataclasses: a method the class body defines is kept (a body's __eq__ sets __hash__
    # to None implicitly, which is not an explicit hash)
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    methods = {"__init__": _init, "__repr__": _repr, "__eq__": _eq}
    if frozen:
        methods.update(__setattr__=_frozen_setattr, __delattr__=_frozen_delattr)
    if order:
        methods.update(__lt__=_lt, __le__=_le, __gt__=_gt, __ge__=_ge)
    for name, method in methods.items():
        if name not in own:
            setattr(cls, name, method)
    if not explicit_hash:  # mutable and compared by value: unhashable, as a dataclass
        cls.__hash__ = _hash if frozen else None
    return cls


def _init(self, *args, **kwargs) -> None:
    own = getattr(self, _FIELDS)
    if len(args) > len(own):
        raise TypeError(f"{type(self).__name__}() takes {len(own)} positional arguments "
                        f"but {len(args)} were given")
    set_value = object.__setattr__
    for f, value in zip(own, args):
        if f.name in kwargs:
            raise TypeError(f"{type(self).__name__}() got multiple values for argument "
                            f"{f.name!r}")
        set_value(self, f.name, value)
    for f in own[len(args):]:
        if f.name in kwargs:
            value = kwargs.pop(f.name)
        elif f.default is not _MISSING:
            value = f.default
        elif f.default_factory is not _MISSING:
            value = f.default_factory()
        else:
            raise TypeError(f"{type(self).__name__}() missing 1 required argument: "
                            f"{f.name!r}")
        set_value(self, f.name, value)
    if kwargs:
        raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument "
                        f"{next(iter(kwargs))!r}")
    post_init = getattr(self, "__post_init__", None)
    if post_init is not None:
        post_init()


def _key(self) -> tuple:
    return tuple(getattr(self, f.name) for f in getattr(self, _FIELDS) if f.compare)


def _repr(self) -> str:
    shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in getattr(self, _FIELDS))
    return f"{type(self).__qualname__}({shown})"


def _eq(self, other):
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _key(self) == _key(other)


def _hash(self) -> int:
    return hash(_key(self))


def _compare(test):
    def method(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return test(_key(self), _key(other))
    return method


_lt = _compare(lambda a, b: a < b)
_le = _compare(lambda a, b: a <= b)
_gt = _compare(lambda a, b: a > b)
_ge = _compare(lambda a, b: a >= b)


def _frozen_setattr(self, name: str, value: object) -> None:
    raise AttributeError(f"cannot assign to field {name!r}")


def _frozen_delattr(self, name: str) -> None:
    raise AttributeError(f"cannot delete field {name!r}")


def fields(class_or_instance: Any) -> tuple[Field, ...]:
    try:
        return getattr(class_or_instance, _FIELDS)
    except AttributeError:
        raise TypeError("must be called with a record class or instance") from None


def asdict(instance: Any) -> dict[str, Any]:
    """The fields as a dict, records, lists, tuples and dicts within converted too."""
    return {f.name: _plain(getattr(instance, f.name)) for f in fields(instance)}


def _plain(value: Any) -> Any:
    if hasattr(type(value), _FIELDS):
        return asdict(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*[_plain(v) for v in value])
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return type(value)((_plain(k), _plain(v)) for k, v in value.items())
    return value


def replace(instance: T, **changes: Any) -> T:
    """A new instance with ``changes`` (``__post_init__`` runs again, as in dataclasses)."""
    values = {f.name: getattr(instance, f.name) for f in fields(instance)}
    unknown = set(changes) - set(values)
    if unknown:
        raise TypeError(f"{type(instance).__name__} has no field {sorted(unknown)[0]!r}")
    return type(instance)(**{**values, **changes})
