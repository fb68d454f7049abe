"""Store and AsyncStore are twins: the same operations, the same bodies but for await."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

import pytest

from sauce_sql import AsyncStore, Store


class _Unawait(ast.NodeTransformer):
    """Turns an async method into what its sync twin should be."""

    def visit_Await(self, node: ast.Await) -> Any:
        return self.visit(node.value)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> Any:
        self.generic_visit(node)
        return ast.FunctionDef(**{field: getattr(node, field) for field in node._fields})

    def visit_AsyncWith(self, node: ast.AsyncWith) -> Any:
        self.generic_visit(node)
        return ast.With(**{field: getattr(node, field) for field in node._fields})


def _body(cls: type, name: str) -> str:
    """The method's source as a normalised AST dump, awaits removed, docstring kept."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, name))))
    tree = _Unawait().visit(tree)
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef)
    function.returns = None  # the return annotation names the class
    for argument in function.args.args:
        argument.annotation = None
    for argument in function.args.kwonlyargs:
        argument.annotation = None
    # The runner differs by name only: ops.run / ops.arun.
    dump = ast.dump(function)
    return dump.replace("attr='arun'", "attr='run'")


def _operations(cls: type) -> set[str]:
    return {
        name
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


def test_the_stores_offer_the_same_operations() -> None:
    """Every public method of Store is on AsyncStore and the other way round."""
    assert _operations(Store) == _operations(AsyncStore)


TWINS = sorted(_operations(Store) - {"start", "close"})


@pytest.mark.parametrize("name", TWINS)
def test_each_operation_is_its_twin_without_await(name: str) -> None:
    """An AsyncStore operation's body, awaits removed, is the Store operation's body."""
    assert _body(AsyncStore, name) == _body(Store, name)


@pytest.mark.parametrize("name", TWINS)
def test_each_async_operation_is_a_coroutine(name: str) -> None:
    """Each operation of AsyncStore is awaited."""
    assert inspect.iscoroutinefunction(getattr(AsyncStore, name))


def test_get_state_is_a_plain_method_on_both() -> None:
    """get_state answers at once on AsyncStore too: it does no I/O."""
    assert AsyncStore.get_state is Store.get_state
    assert not inspect.iscoroutinefunction(AsyncStore.get_state)


@pytest.mark.parametrize("name", TWINS)
def test_the_twins_take_the_same_arguments(name: str) -> None:
    """Same parameter names, kinds and defaults on both stores."""
    sync = inspect.signature(getattr(Store, name))
    twin = inspect.signature(getattr(AsyncStore, name))
    shape = [(p.name, p.kind, p.default) for p in sync.parameters.values()]
    assert shape == [(p.name, p.kind, p.default) for p in twin.parameters.values()]


def test_the_constructors_take_the_same_options() -> None:
    """AsyncStore takes every option of Store, with the same defaults."""
    sync = inspect.signature(Store.__init__).parameters
    twin = inspect.signature(AsyncStore.__init__).parameters
    assert [(p.name, p.default) for p in sync.values()] == [
        (p.name, p.default) for p in twin.values()
    ]
