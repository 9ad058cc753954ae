"""Task types: Python callables registered by name, with pydantic-typed args and results.

Code never travels: a request names a type, and only a node whose registry
holds that name is ever chosen to run it (the scheduler asks each executor
for its names, ``task.types``). A type is registered with the decorator::

    registry = TaskRegistry()

    class ResizeArgs(BaseModel):
        model_config = ConfigDict(strict=True, extra="forbid")
        width: int = Field(ge=1, le=8192)

    class ResizeResult(BaseModel):
        size: int

    @registry.task("image.resize", work=5.0)
    def resize(args: ResizeArgs, inputs: Sequence[bytes]) -> ResizeResult: ...

or from configuration, with :func:`load_task_types` over ``"module:attr"``
entries naming :class:`TaskType` objects or registries. The callable may be
``async`` (it runs on the node's loop); a module-level plain one runs in one
of the executor's worker processes, killed at the deadline; any other plain
one in a worker thread (docs/tasks.md, "Writing a task type").
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, get_type_hints

from pydantic import BaseModel, ValidationError

from securemesh.errors import ConfigError, DecodeError

__all__ = ["TaskFunction", "TaskRegistry", "TaskType", "load_task_types"]

_NAME: Final = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
MAX_TASK_TYPES: Final = 256

TaskFunction = Callable[[Any, Sequence[bytes]], "BaseModel | Awaitable[BaseModel]"]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TaskType:
    """One registered type: its name, callable, argument and result models, defaults."""

    name: str
    func: Callable[..., Any]
    args_model: type[BaseModel]
    result_model: type[BaseModel]
    #: default estimated work (units) when a request does not say better
    work: float = 1.0

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"task type name {self.name!r} must match {_NAME.pattern}")
        if not 0 < self.work <= 1e12:
            raise ConfigError(f"task type {self.name}: work must be in (0, 1e12]")

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    def parse_args(self, args: dict[str, Any]) -> BaseModel:
        """Validate the request's args strictly (DecodeError naming the field, not the value)."""
        try:
            return self.args_model.model_validate(args, strict=True)
        except ValidationError as exc:
            err = DecodeError(f"task {self.name}: bad args")
            err.public_detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '-'}: {e['type']}"
                for e in exc.errors()[:4]
            )[:256]
            raise err from None

    def check_result(self, value: object) -> BaseModel:
        if not isinstance(value, self.result_model):
            raise TypeError(
                f"task {self.name} returned {type(value).__name__}, "
                f"not {self.result_model.__name__}"
            )
        return value


class TaskRegistry:
    """Task types by name (at most 256)."""

    def __init__(self, types: Iterable[TaskType] = ()) -> None:
        self._types: dict[str, TaskType] = {}
        for t in types:
            self.add(t)

    def add(self, task_type: TaskType) -> TaskType:
        if task_type.name in self._types:
            raise ConfigError(f"task type {task_type.name!r} is registered twice")
        if len(self._types) >= MAX_TASK_TYPES:
            raise ConfigError(f"more than {MAX_TASK_TYPES} task types")
        self._types[task_type.name] = task_type
        return task_type

    def task(self, name: str, *, work: float = 1.0) -> Callable[[F], F]:
        """Decorator: register ``func(args: ArgsModel, inputs) -> ResultModel`` as ``name``.

        The argument and result models are read from the annotations.
        """

        def register(func: F) -> F:
            hints = get_type_hints(func)
            params = list(inspect.signature(func).parameters)
            args_model = hints.get(params[0]) if params else None
            result_model = hints.get("return")
            if len(params) != 2 or not _is_model(args_model) or not _is_model(result_model):
                raise ConfigError(
                    f"task {name}: write it as f(args: Model, inputs: Sequence[bytes]) -> Model"
                )
            self.add(TaskType(name, func, args_model, result_model, work))  # type: ignore[arg-type]
            return func

        return register

    def get(self, name: str) -> TaskType | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[TaskType]:
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)


def _is_model(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def load_task_types(entries: Iterable[str]) -> TaskRegistry:
    """A registry from ``"module:attr"`` entries, each a TaskType or a TaskRegistry."""
    registry = TaskRegistry()
    for entry in entries:
        module_name, _, attr = entry.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"task types {entry!r} cannot be loaded: {exc}") from exc
        if isinstance(obj, TaskType):
            registry.add(obj)
        elif isinstance(obj, TaskRegistry):
            for t in obj:
                registry.add(t)
        else:
            raise ConfigError(f"{entry!r} is neither a TaskType nor a TaskRegistry")
    return registry
