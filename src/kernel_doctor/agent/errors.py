"""A cell's exception, as the agent records it in its flight record."""

from __future__ import annotations

from .records import CellError, GuardStop


def describe_error(error: BaseException, filename: str | None) -> CellError:
    line = None
    stack: list[tuple[str, int, str]] = []
    tb = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        stack.append((code.co_filename, tb.tb_lineno, code.co_name))
        if filename and code.co_filename == filename and code.co_name == "<module>":
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is None:
        try:
            lineno = getattr(error, "lineno", None)  # SyntaxError before execution
        except Exception:
            lineno = None
        line = lineno if isinstance(lineno, int) else None
    try:
        message = str(error)[:2000]
    except Exception:  # a user exception whose __str__ raises
        message = f"<{type(error).__name__}: message unavailable>"
    described = CellError(type=type(error).__name__, message=message, line=line, stack=stack[-50:])
    guard = getattr(error, "guard", None)
    if isinstance(error, MemoryError) and isinstance(guard, dict):
        stop: GuardStop = guard  # type: ignore[assignment]  # KernelDoctorMemoryError's
        described["guard"] = stop  # the guard stopped the cell
    return described
