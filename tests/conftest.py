"""Shared test plumbing.

Under trio >= 0.25 a failing trio test raises a one-leaf ExceptionGroup (the
test's nursery wraps it); unwrap it so pytest shows the real assertion.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    outcome = yield
    exc = outcome.excinfo[1] if outcome.excinfo else None
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if exc is not None and exc is not outcome.excinfo[1]:
        outcome.force_exception(exc)
