"""``record``: the part of ``dataclasses`` shale uses, at a fraction of its cost.

``dataclasses`` costs ~5 ms to import (it pulls in ``inspect``, ``ast``, ``dis``,
``tokenize``) and ~0.5 ms per class, because every generated method is compiled from source
when the class is made, on every start of the interpreter. ``shale run`` went through ~30
such classes: ~20 ms of its time. ``record`` makes the same methods from closures (a few
microseconds a class), with the same meaning:

- ``__init__`` in field order, positional or by keyword; defaults and
  ``field(default_factory=...)``;
- ``__repr__`` ``Name(a=1, b='x')``; ``__eq__`` between instances of the same class only,
  field by field;
- ``frozen=True``: assigning or deleting a field raises ``FrozenInstanceError`` (an
  ``AttributeError``), and instances hash by their fields; mutable records are unhashable,
  as dataclasses make them;
- ``order=True``: ``<``, ``<=``, ``>``, ``>=`` compare the field tuples.

Methods a class defines itself are kept. ``fields``, ``asdict`` (shallow) and ``replace``
work as their ``dataclasses`` namesakes. Type checkers see a dataclass
(``typing.dataclass_transform``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")

_MISSING: Any = object()
_FIELDS = "__record_fields__"
_DEFAULTS = "__record_defaults__"


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class _Field:
    __slots__ = ("default", "factory")

    def __init__(self, default: Any, factory: Callable[[], Any] | None) -> None:
        self.default, self.factory = default, factory


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None
          ) -> Any:
    """A field's default: a value, or a factory called for each new instance."""
    return _Field(default, default_factory)


def fields(obj: Any) -> tuple[str, ...]:
    """The field names of a record class or instance, in order."""
    names: tuple[str, ...] = getattr(obj, _FIELDS)
    return names


def asdict(obj: Any) -> dict[str, Any]:
    """``{field: value}`` (values as they are: not copied, not converted)."""
    return {name: getattr(obj, name) for name in fields(obj)}


def replace(obj: T, **changes: Any) -> T:
    """A new instance with ``changes`` applied (``__init__`` runs again)."""
    for name in changes:
        if name not in fields(obj):
            raise TypeError(f"{type(obj).__name__} has no field {name!r}")
    values = {name: getattr(obj, name) for name in fields(obj)}
    values.update(changes)
    return type(obj)(**values)


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(*, frozen: bool = False, order: bool = False
           ) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(field,))
def record(cls: type[T] | None = None, /, *, frozen: bool = False, order: bool = False
           ) -> type[T] | Callable[[type[T]], type[T]]:
    def wrap(c: type[T]) -> type[T]:
        return _process(c, frozen, order)

    return wrap if cls is None else wrap(cls)


def _is_classvar(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def _process(cls: type[T], frozen: bool, order: bool) -> type[T]:
    names: list[str] = []
    defaults: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    for base in reversed(cls.__mro__[1:]):  # fields of record bases come first
        for name in getattr(base, _FIELDS, ()) if _FIELDS in base.__dict__ else ():
            if name not in names:
                names.append(name)
        defaults.update(base.__dict__.get(_DEFAULTS, {}).get("values", {}))
        factories.update(base.__dict__.get(_DEFAULTS, {}).get("factories", {}))
    own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 (inspect costs 4 ms)
    for name, annotation in own.items():
        if _is_classvar(annotation):
            continue
        if name not in names:
            names.append(name)
        value = cls.__dict__.get(name, _MISSING)
        if isinstance(value, _Field):
            if value.factory is not None:
                factories[name] = value.factory
                delattr(cls, name)
            elif value.default is not _MISSING:
                defaults[name] = value.default
                setattr(cls, name, value.default)
            else:
                delattr(cls, name)
        elif value is not _MISSING:
            defaults[name] = value
    seen_default = False
    for name in names:
        has = name in defaults or name in factories
        if seen_default and not has:
            raise TypeError(f"non-default argument {name!r} follows default argument")
        seen_default = seen_default or has
    field_names = tuple(names)
    index = frozenset(field_names)
    qualname = cls.__qualname__
    setattr(cls, _FIELDS, field_names)
    setattr(cls, _DEFAULTS, {"values": defaults, "factories": factories})
    setter = object.__setattr__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(field_names):
            raise TypeError(f"{qualname}.__init__() takes {len(field_names) + 1} positional "
                            f"arguments but {len(args) + 1} were given")
        for name, value in zip(field_names, args, strict=False):
            setter(self, name, value)
        given = field_names[:len(args)]
        for name, value in kwargs.items():
            if name not in index:
                raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument "
                                f"{name!r}")
            if name in given:
                raise TypeError(f"{qualname}.__init__() got multiple values for argument "
                                f"{name!r}")
            setter(self, name, value)
        for name in field_names[len(args):]:
            if name in kwargs:
                continue
            if name in factories:
                setter(self, name, factories[name]())
            elif name in defaults:
                setter(self, name, defaults[name])
            else:
                raise TypeError(f"{qualname}.__init__() missing required argument: "
                                f"{name!r}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in field_names)
        return f"{type(self).__qualname__}({inner})"

    def _values(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in field_names)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(_values(self) == _values(other))

    methods: dict[str, Any] = {"__init__": __init__, "__repr__": __repr__, "__eq__": __eq__}
    if frozen:
        def __setattr__(self: Any, name: str, value: Any) -> None:
            if name in index:
                raise FrozenInstanceError(f"cannot assign to field {name!r}")
            setter(self, name, value)

        def __delattr__(self: Any, name: str) -> None:
            if name in index:
                raise FrozenInstanceError(f"cannot delete field {name!r}")
            object.__delattr__(self, name)

        def __hash__(self: Any) -> int:
            return hash(_values(self))

        methods.update(__setattr__=__setattr__, __delattr__=__delattr__, __hash__=__hash__)
    elif "__eq__" not in cls.__dict__ and "__hash__" not in cls.__dict__:
        methods["__hash__"] = None  # eq without frozen: unhashable, as a dataclass
    if order:
        def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, object], Any]:
            def method(self: Any, other: object) -> Any:
                if other.__class__ is not self.__class__:
                    return NotImplemented
                return bool(op(_values(self), _values(other)))
            return method

        methods.update(__lt__=_compare(lambda a, b: a < b), __le__=_compare(lambda a, b: a <= b),
                       __gt__=_compare(lambda a, b: a > b), __ge__=_compare(lambda a, b: a >= b))
    for name, fn in methods.items():
        if name == "__hash__" and frozen and "__hash__" in cls.__dict__ \
                and cls.__dict__["__hash__"] is not None:
            continue  # a class's own __hash__ wins
        if name != "__hash__" and name in cls.__dict__:
            continue
        if callable(fn):
            fn.__qualname__ = f"{qualname}.{name}"
        setattr(cls, name, fn)
    return cls
